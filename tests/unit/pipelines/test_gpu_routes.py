"""Which runs take the CUDA-graph path on a GPU worker, and that the loop around it makes the
sessions' images: img2img, both kinds of inpainting, SDXL's txt2img, img2img and inpainting.

On a GPU worker ``Run.denoise`` calls the model's UNet graphs (``pipelines.gpu.runtime.graph_calls``)
with the latents on the GPU, and ``Run.decode`` its VAE decoder graphs; here ``graph_model`` answers
with a CPU stand-in that runs the same calls on the model's sessions (``graph_stand_in``), so each
run must make exactly the sessions' pixels, through the stand-in, with the rows the job needs.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

import pipelines.gpu.runtime as runtime
from pipelines.diffusion.img2img import img2img
from pipelines.diffusion.inpaint import inpaint
from pipelines.diffusion.model import DiffusionModel, Run, input_type, load_model
from pipelines.diffusion.sdxl import SdxlRun, txt2img_sdxl
from pipelines.diffusion.vae_tiling import VaeTiling
from pipelines.models.demo import DEMO_SDXL
from pipelines.models.sessions import SessionCache
from tests.unit.pipelines.graph_stand_in import pixel_levels, route_to_cpu_stand_in
from tests.unit.pipelines.images import gradient, mask_image
from tests.unit.pipelines.reference import demo_generation

#: Steps of every run here; img2img at strength 0.5 runs the last half of them.
STEPS = 6
BASE = demo_generation(
    prompt="a painting of a house", negative_prompt="blurry", seed=5, steps=STEPS, cfg=5.0, scheduler="ddim"
)


@pytest.fixture(scope="module")
def sdxl_model(models_path: Path, sessions: SessionCache) -> DiffusionModel:
    return load_model(models_path, DEMO_SDXL, sessions)


Task = Callable[[Run], list[Image.Image]]


def inpaint_task(run: Run) -> list[Image.Image]:
    return inpaint(run, gradient(), mask_image())


def img2img_task(run: Run) -> list[Image.Image]:
    return img2img(run, gradient(), 0.5)


TASKS: dict[str, tuple[str, type[Run], Task, int]] = {
    # name: (model fixture, run class, task, UNet calls of a 6-step run)
    "img2img": ("demo_model", Run, img2img_task, STEPS // 2),
    "inpaint, 4-channel UNet": ("demo_model", Run, inpaint_task, STEPS),
    "inpaint, 9-channel UNet": ("inpaint_model", Run, inpaint_task, STEPS),
    "sdxl txt2img": ("sdxl_model", SdxlRun, txt2img_sdxl, STEPS),
    "sdxl img2img": ("sdxl_model", SdxlRun, img2img_task, STEPS // 2),
    "sdxl inpaint": ("sdxl_model", SdxlRun, inpaint_task, STEPS),
}


@pytest.mark.parametrize("name", list(TASKS))
@pytest.mark.parametrize(("cfg", "batch"), [(5.0, 1), (1.0, 2)])
def test_a_run_on_a_gpu_worker_calls_the_graphs_and_makes_the_sessions_pixels(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch, name: str, cfg: float, batch: int
) -> None:
    fixture, run_class, task, calls = TASKS[name]
    model: DiffusionModel = request.getfixturevalue(fixture)
    gen = dataclasses.replace(BASE, model=model.folder.name, cfg=cfg, batch=batch)
    on_sessions = pixel_levels(task(run_class(model, gen)))
    graphs = route_to_cpu_stand_in(monkeypatch)
    on_graphs = pixel_levels(task(run_class(model, gen)))
    rows = batch * (2 if gen.guidance else 1)
    assert graphs.rows == [rows] * calls
    assert graphs.decoded == batch
    assert on_graphs.shape == on_sessions.shape == (batch, 48, 64, 3)
    assert np.abs(on_graphs - on_sessions).max() <= 1


def test_the_loop_hands_its_callbacks_host_latents_and_reports_every_step(
    demo_model: DiffusionModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Previews and progress see the loop's latents as on the sessions; the mask's callback gets
    CPU tensors (the kept region is blended on the host) and its result goes back to the loop."""
    seen: dict[str, list[Any]] = {"steps": [], "latents": []}

    class Hooks:
        def on_step(self, count: int) -> None:
            seen["steps"].append(count)

        def check_cancelled(self) -> None:
            return None

        def on_latents(self, step: int, family: str, latents: Callable[[], np.ndarray]) -> None:
            seen["latents"].append((step, family, latents()))

    on_sessions = pixel_levels(inpaint(Run(demo_model, BASE, Hooks()), gradient(), mask_image()))
    session_latents = seen["latents"]
    seen["steps"], seen["latents"] = [], []
    route_to_cpu_stand_in(monkeypatch)
    on_graphs = pixel_levels(inpaint(Run(demo_model, BASE, Hooks()), gradient(), mask_image()))
    assert seen["steps"] == [1] * STEPS
    assert [(step, family) for step, family, _ in seen["latents"]] == [(n, "sd") for n in range(1, STEPS + 1)]
    for (_, _, ours), (_, _, theirs) in zip(seen["latents"], session_latents, strict=True):
        np.testing.assert_allclose(ours, theirs, atol=1e-5)
    assert np.abs(on_graphs - on_sessions).max() <= 1


def test_tiled_decoding_stays_on_the_sessions(
    demo_model: DiffusionModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The graphs decode whole images; a job that asks for VAE tiles (to bound memory) gets them."""
    graphs = route_to_cpu_stand_in(monkeypatch)
    tiled = dataclasses.replace(BASE, vae_tiling=VaeTiling(tile=128, overlap=0.25))
    images = img2img(Run(demo_model, tiled), gradient(), 0.5)
    assert len(images) == 1
    assert graphs.rows == [2] * (STEPS // 2)
    assert graphs.decoded == 0


def test_only_a_cuda_worker_without_a_lora_in_the_run_gets_the_gpu_model(
    demo_model: DiffusionModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    loaded: list[Path] = []

    def gpu_model(folder: Path, settings: runtime.GpuSettings) -> Any:
        loaded.append(folder)
        return "the GPU model"

    monkeypatch.setattr(runtime, "gpu_model", gpu_model)
    monkeypatch.setattr(runtime, "gpu_settings", lambda sessions: None)
    assert runtime.graph_model(demo_model) is None
    monkeypatch.setattr(runtime, "gpu_settings", lambda sessions: runtime.GpuSettings())
    assert runtime.graph_model(demo_model) == "the GPU model"
    assert loaded == [demo_model.folder]


def test_inputs_the_graphs_do_not_feed_keep_the_run_on_the_sessions(
    demo_model: DiffusionModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The x4 upscaler's ``class_labels`` and a ControlNet's stand-in UNet run on sessions."""
    graphs = route_to_cpu_stand_in(monkeypatch)
    embeddings = np.zeros((2, 77, 32), dtype=np.float32)
    labels = {"class_labels": np.zeros(1, dtype=np.int64)}
    assert runtime.graph_calls(demo_model, {"encoder_hidden_states": embeddings, **labels}) is None
    assert Run(demo_model, BASE).unet_calls(embeddings, labels, None).device.type == "cpu"
    session = demo_model.session("unet")
    calls = Run(demo_model, BASE).unet_calls(embeddings, {}, session)
    assert calls.device.type == "cpu"
    assert not graphs.made
    assert Run(demo_model, BASE).unet_calls(embeddings, {}, None).device.type == "cpu"
    assert len(graphs.made) == 1


# --- warm-up: a tensor for every input each kind of UNet takes ---------------------------------------


@pytest.mark.parametrize("fixture", ["demo_model", "inpaint_model", "sdxl_model"])
@pytest.mark.parametrize("bucket", [runtime.Bucket(64, 48), runtime.Bucket(64, 64, 3, guidance=False)])
def test_warm_up_feeds_every_input_of_the_unet_at_the_buckets_shape(
    request: pytest.FixtureRequest, fixture: str, bucket: runtime.Bucket
) -> None:
    """What ``GpuDiffusionModel.warm_up`` captures: an SDXL UNet's pooled text and size
    conditioning and an inpainting UNet's 9 channels included, or the capture fails."""
    import torch

    model: DiffusionModel = request.getfixturevalue(fixture)
    unet = model.session("unet")
    inputs = {item.name: item for item in unet.get_inputs()}
    feeds = runtime.warm_feeds(inputs, bucket, torch.device("cpu"))
    assert set(feeds) == set(inputs)
    arrays = {name: tensor.numpy() for name, tensor in feeds.items()}
    typed = {name: value.astype(input_type(unet, name, value.dtype)) for name, value in arrays.items()}
    [noise] = unet.run(None, typed)
    assert noise.shape == (bucket.unet_batch, 4, *bucket.latent_size)
    if "time_ids" in feeds:
        assert feeds["time_ids"][0].tolist() == [
            bucket.height,
            bucket.width,
            0,
            0,
            bucket.height,
            bucket.width,
        ]


def test_warm_up_names_an_input_it_cannot_feed() -> None:
    from types import SimpleNamespace

    inputs = {
        "sample": SimpleNamespace(shape=["batch", 4, "height", "width"]),
        "timestep": SimpleNamespace(shape=["batch"]),
        "encoder_hidden_states": SimpleNamespace(shape=["batch", "sequence", 768]),
        "class_labels": SimpleNamespace(shape=["batch"]),
    }
    with pytest.raises(ValueError, match="class_labels"):
        runtime.unet_feed_shapes(inputs, runtime.Bucket(512, 512))
    inputs["text_embeds"] = SimpleNamespace(shape=["batch", "width"])
    del inputs["class_labels"]
    with pytest.raises(ValueError, match="text_embeds has no fixed size"):
        runtime.unet_feed_shapes(inputs, runtime.Bucket(512, 512))


# --- which GPU models stay loaded ---------------------------------------------------------------------


class Loaded:
    """What ``gpu_model`` keeps of a ``GpuDiffusionModel`` here: its folder and whether it was warmed."""

    def __init__(self, folder: Path, settings: runtime.GpuSettings) -> None:
        self.folder = folder
        self.warmed = False


@pytest.fixture
def gpu_models(monkeypatch: pytest.MonkeyPatch) -> dict[Any, Any]:
    """An empty GPU model cache whose models are ``Loaded`` (constructing a real one needs CUDA)."""
    from collections import OrderedDict

    models: dict[Any, Any] = OrderedDict()
    monkeypatch.setattr(runtime, "_models", models)
    monkeypatch.setattr(runtime, "GpuDiffusionModel", Loaded)
    return models


def test_warmed_models_stay_on_the_gpu_and_the_others_go_least_recently_used_first(
    gpu_models: dict[Any, Any], tmp_path: Path
) -> None:
    """A warmed model's CUDA graphs are captured only at start: other models never push it out."""
    settings = runtime.GpuSettings()
    warm = runtime.gpu_model(tmp_path / "warm", settings)
    warm.warmed = True  # as GpuDiffusionModel.warm_up sets it
    for name in ("a", "b", "a", "c", "d"):
        runtime.gpu_model(tmp_path / name, settings)
    assert [key[0].name for key in gpu_models] == ["warm", "c", "d"]
    assert runtime.gpu_model(tmp_path / "warm", settings) is warm
    assert runtime.MAX_GPU_MODELS == 2


def test_decoding_alone_does_not_load_a_model_onto_the_gpu(
    demo_model: DiffusionModel, gpu_models: dict[Any, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run whose UNet loop stayed on the sessions (pix2pix, a ControlNet) decodes on the graphs
    only if its model is on the GPU already."""
    monkeypatch.setattr(runtime, "gpu_settings", lambda sessions: runtime.GpuSettings())
    latents = np.zeros((1, 4, 6, 8), dtype=np.float32)
    assert runtime.graph_decode(demo_model, latents) is None
    assert not gpu_models
