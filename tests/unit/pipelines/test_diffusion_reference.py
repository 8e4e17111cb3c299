"""Our ONNX txt2img against diffusers' own pipelines on the very same weights and noise.

The demo model is random, so its images mean nothing; what matters is that every scheduler call,
the guidance arithmetic and the image post-processing match diffusers to within rounding.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from pipelines.diffusion.model import DiffusionModel, Generation, Run, initial_latents
from pipelines.diffusion.txt2img import txt2img
from pipelines.models.demo import DEMO_MODELS
from tests.unit.pipelines.images import pixels
from tests.unit.pipelines.reference import assert_matches, demo_generation, from_our_noise, run_diffusers

REFERENCE_SCHEDULERS = [
    "ddim",
    "euler",
    "euler-a",
    "dpm-multi",
    "pndm",
    "lms-discrete",
    "unipc-multi",
    "heun",
    "lcm",
]


def torch_reference(parts: dict[str, Any], model: DiffusionModel, gen: Generation) -> np.ndarray:
    """diffusers' PyTorch StableDiffusionPipeline, given our starting noise and step generator."""
    from diffusers import StableDiffusionPipeline

    return run_diffusers(StableDiffusionPipeline, parts, model, gen, **from_our_noise(gen))


@pytest.mark.parametrize("scheduler", REFERENCE_SCHEDULERS)
def test_txt2img_matches_diffusers_torch_pipeline(
    demo_model: DiffusionModel, torch_parts: Callable[[str], dict[str, Any]], scheduler: str
) -> None:
    gen = demo_generation(scheduler=scheduler)
    reference = torch_reference(torch_parts(DEMO_MODELS[0].name), demo_model, gen)
    assert_matches(pixels(txt2img(Run(demo_model, gen))), reference, (1, 48, 64, 3))


@pytest.mark.parametrize(
    "changes",
    [
        pytest.param({"batch": 2, "scheduler": "euler-a"}, id="batch2-euler-a"),
        pytest.param({"cfg": 1.0}, id="no-guidance"),
        pytest.param({"negative_prompt": None, "eta": 0.7}, id="no-negative-ddim-eta"),
    ],
)
def test_txt2img_variants_match_diffusers_torch_pipeline(
    demo_model: DiffusionModel, torch_parts: Callable[[str], dict[str, Any]], changes: dict[str, Any]
) -> None:
    gen = demo_generation(**changes)
    reference = torch_reference(torch_parts(DEMO_MODELS[0].name), demo_model, gen)
    assert_matches(pixels(txt2img(Run(demo_model, gen))), reference)


def onnx_reference(model: DiffusionModel, gen: Generation) -> np.ndarray:
    """diffusers' OnnxStableDiffusionPipeline on our exported files."""
    from diffusers import OnnxRuntimeModel, OnnxStableDiffusionPipeline

    def component(name: str) -> Any:
        # OnnxRuntimeModel.from_pretrained raises KeyError('provider_options') in diffusers 0.42.1.
        return OnnxRuntimeModel(model=model.session(name))

    parts = {name: component(name) for name in ("vae_encoder", "vae_decoder", "text_encoder", "unet")}
    # The ONNX pipeline takes numpy latents; it would use the generator only to draw them.
    return run_diffusers(
        OnnxStableDiffusionPipeline,
        {**parts, "tokenizer": model.tokenizer},
        model,
        gen,
        width=gen.width,
        height=gen.height,
        latents=initial_latents(gen.seed, gen.batch, gen.width, gen.height),
    )


# The ONNX pipeline computes ``ndarray * init_noise_sigma``, which raises for the schedulers whose
# sigma is a tensor (euler, euler-a, heun, lms-discrete, k-dpm-2, k-dpm-2-a, dpm-sde), and it never
# passes a generator to ``step``, so the stochastic ones (ddpm, lcm) draw other noise than ours.
@pytest.mark.parametrize(
    "scheduler", ["ddim", "pndm", "dpm-multi", "dpm-single", "deis-multi", "unipc-multi", "ipndm"]
)
def test_txt2img_matches_diffusers_onnx_pipeline(demo_model: DiffusionModel, scheduler: str) -> None:
    gen = demo_generation(scheduler=scheduler)
    assert_matches(pixels(txt2img(Run(demo_model, gen))), onnx_reference(demo_model, gen))
