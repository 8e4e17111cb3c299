"""The CUDA runtime on the tiny demo model converted the GPU way (needs a GPU and onnxruntime-gpu)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pipelines.gpu.runtime import Bucket, GpuSettings, cuda_available, gpu_model
from pipelines.models.convert import convert_diffusers_folder
from pipelines.models.demo import write_demo_checkpoint

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not cuda_available(), reason="needs a CUDA GPU and onnxruntime-gpu"),
]


@pytest.fixture(scope="module")
def gpu_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("gpu")
    write_demo_checkpoint(root / "src")
    return convert_diffusers_folder(root / "src", root / "demo-gpu", optimize="gpu")


def test_a_captured_bucket_replays_what_the_dynamic_session_computes(gpu_folder: Path) -> None:
    import torch

    model = gpu_model(gpu_folder, GpuSettings())
    model.warm_up([Bucket(64, 64, 1)])
    generator = torch.Generator().manual_seed(0)
    sample = torch.randn((2, 4, 8, 8), generator=generator).cuda()
    hidden = torch.randn((2, 77, 32), generator=generator).cuda()
    timestep = torch.tensor([981.0, 981.0]).cuda()
    with torch.cuda.stream(model.stream):
        replayed = model.predict_noise(sample, timestep, hidden).float().clone()
        dynamic = model.unet._run_dynamic(
            {"sample": sample, "timestep": timestep, "encoder_hidden_states": hidden},
            {"out_sample": (2, 4, 8, 8)},
        )["out_sample"].float()
    torch.cuda.synchronize()
    assert torch.isfinite(replayed).all()
    assert np.allclose(replayed.cpu().numpy(), dynamic.cpu().numpy(), atol=2e-3)
