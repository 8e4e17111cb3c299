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


def skipped_embeddings(parts: dict[str, Any], text: str, skip: int) -> Any:
    """What diffusers' ``clip_skip=skip-1`` conditions on: the state ``skip`` layers from the end,
    through the final LayerNorm (computed here: diffusers 0.42.1 reaches for ``text_model``, which
    transformers 5 no longer has)."""
    import torch

    tokenizer, encoder = parts["tokenizer"], parts["text_encoder"]
    ids = tokenizer(
        text,
        padding="max_length",
        max_length=tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    ).input_ids
    with torch.no_grad():
        states = encoder(ids, output_hidden_states=True).hidden_states
        return getattr(encoder, "text_model", encoder).final_layer_norm(states[-skip])


def test_clip_skip_matches_diffusers_on_the_skipped_layer(
    demo_model: DiffusionModel, torch_parts: Callable[[str], dict[str, Any]]
) -> None:
    """``<clip:skip:k>`` conditions on the state k layers from the end (A1111's count); the demo
    encoder has two layers, so 2 (the penultimate, as anime models want) is its one real skip."""
    skip = 2
    from diffusers import StableDiffusionPipeline

    plain = demo_generation()
    parts = torch_parts(DEMO_MODELS[0].name)
    reference = run_diffusers(
        StableDiffusionPipeline,
        parts,
        demo_model,
        plain,
        prompt_embeds=skipped_embeddings(parts, plain.prompt, skip),
        negative_prompt_embeds=skipped_embeddings(parts, plain.negative_prompt or "", skip),
        **from_our_noise(plain),
    )
    ours = pixels(txt2img(Run(demo_model, demo_generation(prompt=f"{plain.prompt} <clip:skip:{skip}>"))))
    assert_matches(ours, reference, (1, 48, 64, 3))
    assert np.abs(ours - pixels(txt2img(Run(demo_model, plain)))).max() > 0, "the skip changes the image"


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


def test_a_clip_skip_deeper_than_the_encoder_uses_its_deepest(demo_model: DiffusionModel) -> None:
    deepest = pixels(txt2img(Run(demo_model, demo_generation(prompt="a cat <clip:skip:2>"))))
    assert np.array_equal(
        deepest, pixels(txt2img(Run(demo_model, demo_generation(prompt="a cat <clip:skip:9>"))))
    )
