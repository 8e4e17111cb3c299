"""The CUDA runtime on the tiny demo model converted the GPU way (needs a GPU and onnxruntime-gpu)."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from pipelines.gpu.runtime import Bucket, GpuSettings, cuda_available, gpu_model
from pipelines.models.convert import convert_diffusers_folder
from pipelines.models.demo import demo_unet, write_demo_checkpoint

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not cuda_available(), reason="needs a CUDA GPU and onnxruntime-gpu"),
]


#: The demo UNet's shape is below what ONNX Runtime's fused CUDA kernels take: its GroupNorm needs an
#: even number of channels per group (the demo has 32 groups of 32 channels), and packed q/k/v
#: attention a head size that is a multiple of 8 (the demo's 8 heads have 4 channels). The GPU
#: tests' UNet has 16 groups and 2 heads of 16 (diffusers' SD 1.x ``attention_head_dim`` counts heads).
CUDA_SHAPE: dict[str, Any] = {"norm_num_groups": 16, "attention_head_dim": 2}


def write_gpu_checkpoint(dest: Path, **unet: Any) -> None:
    """The demo checkpoint with a UNet of ``CUDA_SHAPE`` (and ``unet`` config)."""
    write_demo_checkpoint(dest)
    shutil.rmtree(dest / "unet")
    demo_unet(**CUDA_SHAPE, **unet).save_pretrained(dest / "unet")


#: Two fp16 UNet calls on the same inputs that should agree (a replay against the dynamic session, a
#: replay against itself): they are not bitwise reproducible, since cuDNN's timed algorithm search
#: can pick other kernels for each session. They differed by up to 2.8e-3 on an H100 (tenth round,
#: ``docs/gpu.md``); a wrong binding or a stale buffer differs by more than 0.1.
SAME_PREDICTION = 1e-2


def assert_same_prediction(first: Any, second: Any) -> None:
    difference = float((first.float() - second.float()).abs().max())
    print(f"max |difference| {difference:.2e}")  # shown with -rP: docs/gpu.md records the figures
    assert difference <= SAME_PREDICTION, f"predictions differ by {difference:.2e} > {SAME_PREDICTION}"


def feeds_without(feeds: dict[str, Any], *names: str) -> dict[str, Any]:
    return {name: value for name, value in feeds.items() if name not in names}


@pytest.fixture(scope="module")
def gpu_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("gpu")
    write_gpu_checkpoint(root / "src")
    return convert_diffusers_folder(root / "src", root / "demo-gpu", optimize="gpu")


@pytest.mark.parametrize(
    "fuse_conv_bias", [True, False, None], ids=["fused-bias", "separate-bias", "timed-bias"]
)
def test_a_captured_bucket_replays_what_the_dynamic_session_computes(
    gpu_folder: Path, fuse_conv_bias: bool | None
) -> None:
    """Every setting of ``ONNX_WEB_CUDA_FUSE_CONV_BIAS`` captures a graph that computes the model;
    ``auto`` (None) times both variants at the first capture and keeps the faster."""
    import torch

    model = gpu_model(gpu_folder, GpuSettings(fuse_conv_bias=fuse_conv_bias))
    model.warm_up([Bucket(64, 64, 1), Bucket(64, 64, 2)])
    for session in (model.unet, model.vae_decoder):
        if fuse_conv_bias is None:
            timings = session.fuse_conv_bias_timings
            assert set(timings) == {True, False} and all(value > 0 for value in timings.values())
            assert session.fuse_conv_bias is min(timings, key=timings.__getitem__)
        else:
            assert session.fuse_conv_bias is fuse_conv_bias and not session.fuse_conv_bias_timings
    generator = torch.Generator().manual_seed(0)
    sample = torch.randn((2, 4, 8, 8), generator=generator).cuda()
    hidden = torch.randn((2, 77, 32), generator=generator).cuda()
    timestep = torch.tensor([981.0, 981.0]).cuda()
    with torch.cuda.stream(model.stream):
        replayed = model.predict_noise(sample, timestep, {"encoder_hidden_states": hidden})
        dynamic = model.unet.run_dynamic(
            {"sample": sample, "timestep": timestep, "encoder_hidden_states": hidden},
            {"out_sample": (2, 4, 8, 8)},
        )["out_sample"].float()
    torch.cuda.synchronize()
    assert torch.isfinite(replayed).all()
    assert_same_prediction(replayed, dynamic)


@pytest.fixture(scope="module")
def lcm_gpu_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo with an LCM-distilled UNet (a ``timestep_cond`` input), converted the GPU way."""
    root = tmp_path_factory.mktemp("lcm-gpu")
    write_gpu_checkpoint(root / "src", time_cond_proj_dim=16)
    return convert_diffusers_folder(root / "src", root / "lcm-gpu", optimize="gpu")


def test_an_lcm_unet_is_captured_without_guidance_rows_and_fed_its_embedding(lcm_gpu_folder: Path) -> None:
    import torch

    from pipelines.diffusion.lcm import guidance_embedding

    model = gpu_model(lcm_gpu_folder, GpuSettings())
    assert model.cond_size == 16
    model.warm_up([Bucket(64, 64, 1)])  # guided by default: captured at one row instead
    generator = torch.Generator().manual_seed(0)
    sample = torch.randn((1, 4, 8, 8), generator=generator).cuda()
    hidden = torch.randn((1, 77, 32), generator=generator).cuda()
    timestep = torch.tensor([759.0]).cuda()
    outputs = []
    for cfg in (8.0, 2.0):
        cond = torch.from_numpy(guidance_embedding(cfg, 16, 1)).cuda()
        feeds = {
            "sample": sample,
            "timestep": timestep,
            "encoder_hidden_states": hidden,
            "timestep_cond": cond,
        }
        with torch.cuda.stream(model.stream):
            replayed = model.predict_noise(sample, timestep, feeds_without(feeds, "sample", "timestep"))
            dynamic = model.unet.run_dynamic(feeds, {"out_sample": (1, 4, 8, 8)})["out_sample"].float()
        torch.cuda.synchronize()
        assert_same_prediction(replayed, dynamic)
        outputs.append(replayed.cpu().numpy())
    assert len(model.unet._graphs) == 1  # the one-row shape was captured, the replays used it
    assert np.abs(outputs[0] - outputs[1]).max() > 1e-3  # the embedding reaches the UNet


def test_a_warmed_shape_returns_a_prediction_of_its_own(gpu_folder: Path) -> None:
    """The next replay overwrites the graph's output buffer; schedulers keep past predictions."""
    import torch

    model = gpu_model(gpu_folder, GpuSettings())
    model.warm_up([Bucket(64, 64, 1)])
    hidden = torch.zeros((2, 77, 32)).cuda()
    timestep = torch.tensor([981.0, 981.0]).cuda()
    with torch.cuda.stream(model.stream):
        text = {"encoder_hidden_states": hidden}
        first = model.predict_noise(torch.ones((2, 4, 8, 8)).cuda(), timestep, text)
        kept = first.clone()
        model.predict_noise(-torch.ones((2, 4, 8, 8)).cuda(), timestep, text)
    torch.cuda.synchronize()
    assert first.dtype == torch.float32
    assert torch.equal(first, kept)


@pytest.mark.parametrize("task", ["img2img", "inpaint"])
def test_img2img_and_inpainting_on_the_graphs_make_the_cuda_sessions_images(
    gpu_folder: Path, task: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The loop's latents live on the GPU; inpainting's kept region is blended on the host."""
    import pipelines.gpu.runtime as runtime
    from pipelines.diffusion.img2img import img2img
    from pipelines.diffusion.inpaint import inpaint
    from pipelines.diffusion.model import Run, load_model
    from pipelines.models.sessions import SessionCache
    from tests.unit.pipelines.graph_stand_in import pixel_levels
    from tests.unit.pipelines.images import gradient, mask_image
    from tests.unit.pipelines.reference import demo_generation

    model = load_model(gpu_folder.parent, gpu_folder.name, SessionCache(max_models=2))
    gen = demo_generation(model=gpu_folder.name, steps=6, seed=3, width=64, height=64)
    source = gradient(64, 64)

    def run() -> np.ndarray:
        job = Run(model, gen)
        if task == "img2img":
            return pixel_levels(img2img(job, source, 0.6))
        return pixel_levels(inpaint(job, source, mask_image(64, 64)))

    on_graphs = run()
    assert len(runtime._models) > 0
    monkeypatch.setattr(runtime, "graph_model", lambda model, load=True: None)
    on_sessions = run()
    assert np.abs(on_graphs.astype(int) - on_sessions).max() <= 2


def test_every_session_of_a_model_uses_one_copy_of_its_weights(
    gpu_folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two warmed shapes and the dynamic session all read the shared weights in place: zeroing them
    changes all three predictions, restoring them brings each back. Without sharing, each session
    loads its own copy and computes the same."""
    import torch

    from pipelines.gpu import weights
    from pipelines.gpu.runtime import GpuDiffusionModel

    monkeypatch.setattr(weights, "SHARED_WEIGHT_BYTES", 1024)  # the test UNet's weights are small
    model = GpuDiffusionModel(gpu_folder, GpuSettings())
    assert model.unet.shared is not None and model.unet.shared.nbytes > 0
    model.warm_up([Bucket(64, 64, 1), Bucket(64, 64, 2)])
    generator = torch.Generator().manual_seed(1)
    hidden = torch.randn((4, 77, 32), generator=generator).cuda()
    samples = torch.randn((4, 4, 16, 16), generator=generator).cuda()

    def predict(on: GpuDiffusionModel) -> list[torch.Tensor]:
        predictions = []
        with torch.cuda.stream(on.stream):
            for rows, side in ((2, 8), (4, 8), (2, 16)):  # the two buckets' shapes, then a dynamic one
                timestep = torch.full((rows,), 981.0).cuda()
                text = {"encoder_hidden_states": hidden[:rows]}
                predictions.append(on.predict_noise(samples[:rows, :, :side, :side], timestep, text))
        torch.cuda.synchronize()
        return predictions

    assert len(model.unet._graphs) == 2
    before = predict(model)
    kept = {name: tensor.clone() for name, tensor in model.unet.shared.tensors.items()}
    for tensor in model.unet.shared.tensors.values():
        tensor.zero_()
    zeroed = predict(model)
    for name, tensor in model.unet.shared.tensors.items():
        tensor.copy_(kept[name])
    restored = predict(model)
    for first, changed, again in zip(before, zeroed, restored, strict=True):
        assert (first - changed).abs().max() > 0.1
        assert_same_prediction(first, again)

    separate = GpuDiffusionModel(gpu_folder, GpuSettings(share_weights=False))
    assert separate.unet.shared is None
    separate.warm_up([Bucket(64, 64, 1), Bucket(64, 64, 2)])
    for shared, own in zip(before, predict(separate), strict=True):
        assert_same_prediction(shared, own)
