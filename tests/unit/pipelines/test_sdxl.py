"""SDXL txt2img on ONNX Runtime against diffusers' PyTorch ``StableDiffusionXLPipeline``, same weights.

The demo SDXL model is random and tiny, so its images mean nothing; what matters is that both text
encoders, the pooled and size conditioning, every scheduler call, the guidance and the decoding
match diffusers to within rounding, and that ``source-txt2img`` takes this path for SDXL.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from pipelines.context import StageContext
from pipelines.diffusion.model import (
    DiffusionModel,
    Generation,
    Run,
    initial_latents,
    load_model,
    reseed_latents,
)
from pipelines.diffusion.prompt import Reseed
from pipelines.diffusion.sdxl import is_sdxl_folder, txt2img_sdxl, wants_sdxl
from pipelines.models.demo import DEMO_SDXL, SDXL_SCALING_FACTOR
from pipelines.models.layout import EXTRAS_FILE
from pipelines.models.sessions import SessionCache
from pipelines.stages import source_txt2img
from tests.unit.pipelines.images import pixels
from tests.unit.pipelines.reference import (
    DEMO_GENERATION,
    assert_matches,
    demo_generation,
    from_our_noise,
    run_diffusers,
)
from tests.unit.pipelines.resolved import IMAGE, run_stage


@pytest.fixture(scope="module")
def sdxl_model(models_path: Path, sessions: SessionCache) -> DiffusionModel:
    """The demo SDXL model on ONNX Runtime (built with the other demo models)."""
    return load_model(models_path, DEMO_SDXL, sessions)


def generation(scheduler: str, **changes: Any) -> Generation:
    return demo_generation(model=DEMO_SDXL, scheduler=scheduler, **changes)


def torch_reference(parts: dict[str, Any], model: DiffusionModel, gen: Generation) -> np.ndarray:
    """diffusers' PyTorch StableDiffusionXLPipeline, given our starting noise and step generator."""
    from diffusers import StableDiffusionXLPipeline

    return run_diffusers(
        StableDiffusionXLPipeline, parts, model, gen, {"add_watermarker": False}, **from_our_noise(gen)
    )


@pytest.mark.parametrize("scheduler", ["ddim", "euler", "euler-a", "dpm-multi"])
def test_sdxl_matches_diffusers_torch_pipeline(
    sdxl_model: DiffusionModel, torch_parts: Callable[[str], dict[str, Any]], scheduler: str
) -> None:
    gen = generation(scheduler)
    reference = torch_reference(torch_parts(DEMO_SDXL), sdxl_model, gen)
    assert_matches(pixels(txt2img_sdxl(Run(sdxl_model, gen))), reference, (1, 48, 64, 3))


@pytest.mark.parametrize(
    "changes",
    [
        # No negative prompt: SDXL conditions on zeros (force_zeros_for_empty_prompt), not on "".
        pytest.param({"batch": 2, "negative_prompt": None}, id="batch2-zero-negative"),
        pytest.param({"cfg": 1.0}, id="no-guidance"),
    ],
)
def test_sdxl_variants_match_diffusers_torch_pipeline(
    sdxl_model: DiffusionModel, torch_parts: Callable[[str], dict[str, Any]], changes: dict[str, Any]
) -> None:
    gen = generation("euler-a", **changes)
    reference = torch_reference(torch_parts(DEMO_SDXL), sdxl_model, gen)
    assert_matches(pixels(txt2img_sdxl(Run(sdxl_model, gen))), reference, (gen.batch, 48, 64, 3))


def test_sdxl_starts_from_the_reseeded_noise_a_reseed_token_asks_for(
    sdxl_model: DiffusionModel, torch_parts: Callable[[str], dict[str, Any]]
) -> None:
    """As onnx-web's txt2img stage, SDXL's reseeds its starting latents: diffusers given our noise with
    seed 9's in the top-left 32 x 24 pixels makes the image the token makes."""
    import torch
    from diffusers import StableDiffusionXLPipeline

    gen = generation("euler", prompt=f"{DEMO_GENERATION['prompt']} <reseed:0:0:24:32:9>")
    noise = reseed_latents(
        initial_latents(gen.seed, 1, gen.width, gen.height), [Reseed(0, 0, 24, 32, 9)], gen.seed
    )
    reference = run_diffusers(
        StableDiffusionXLPipeline,
        torch_parts(DEMO_SDXL),
        sdxl_model,
        generation("euler"),
        {"add_watermarker": False},
        width=gen.width,
        height=gen.height,
        latents=torch.from_numpy(noise),
    )
    assert_matches(pixels(txt2img_sdxl(Run(sdxl_model, gen))), reference, (1, 48, 64, 3))


def test_sdxl_export_has_optimums_layout(sdxl_model: DiffusionModel, models_path: Path) -> None:
    unet = sdxl_model.session("unet")
    assert [item.name for item in unet.get_inputs()] == [
        "sample",
        "timestep",
        "encoder_hidden_states",
        "text_embeds",
        "time_ids",
    ]
    # Two layers each: the embeddings and both layers' outputs follow the first two outputs.
    first = [item.name for item in sdxl_model.session("text_encoder").get_outputs()]
    second = [item.name for item in sdxl_model.session("text_encoder_2").get_outputs()]
    hidden = ["hidden_states.0", "hidden_states.1", "hidden_states.2"]
    assert first == ["last_hidden_state", "pooler_output", *hidden]
    assert second == ["text_embeds", "last_hidden_state", *hidden]
    assert (sdxl_model.folder / "tokenizer_2" / "vocab.json").is_file()
    assert sdxl_model.scaling_factor == SDXL_SCALING_FACTOR
    extras = json.loads((models_path / EXTRAS_FILE).read_text())
    entry = next(item for item in extras["diffusion"] if item["name"] == DEMO_SDXL)
    assert entry["pipeline"] == "txt2img-sdxl"


def test_sdxl_is_chosen_by_pipeline_name_or_model_folder(
    sdxl_model: DiffusionModel, demo_model: DiffusionModel
) -> None:
    assert is_sdxl_folder(sdxl_model.folder)
    assert not is_sdxl_folder(demo_model.folder)
    assert wants_sdxl({"pipeline": "txt2img"}, sdxl_model.folder)
    assert wants_sdxl({"pipeline": "txt2img-sdxl"}, demo_model.folder)
    assert not wants_sdxl({"pipeline": "txt2img"}, demo_model.folder)


def test_source_txt2img_stage_runs_sdxl(
    sdxl_model: DiffusionModel, models_path: Path, sessions: SessionCache
) -> None:
    steps: list[int] = []
    ctx = StageContext(models_path=models_path, sessions=sessions, inputs={}, on_step=steps.append)
    params = {
        **IMAGE,
        "model": DEMO_SDXL,
        "pipeline": "txt2img-sdxl",
        "scheduler": "euler",
        "prompt": "a red chair",
        "negative_prompt": "",
        "seed": 7,
        "steps": 3,
        "cfg": 5.0,
        "batch": 1,
        "width": 64,
        "height": 40,
    }
    images = run_stage(source_txt2img.STAGE, ctx, params, [])
    assert len(images) == 1 and images[0].image.size == (64, 40)
    assert sum(steps) == 3
    # The stage generates a whole 64-px cell and crops; the crop is the SDXL pipeline's own image.
    gen = generation("euler", prompt="a red chair", negative_prompt=None, seed=7, steps=3, cfg=5.0, height=64)
    direct = txt2img_sdxl(Run(sdxl_model, gen))[0]
    assert np.array_equal(np.asarray(direct.crop((0, 0, 64, 40))), np.asarray(images[0].image))
    assert images[0].metadata["params"]["pipeline"] == "txt2img-sdxl"
