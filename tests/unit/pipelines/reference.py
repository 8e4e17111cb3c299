"""What the tests against diffusers share: demo generations, diffusers' pipelines, the tolerance.

diffusers' pipelines run on the very weights the demo models were exported from
(``pipelines.models.demo.torch_parts``), with our scheduler and seed and, where a test gives it,
our starting noise: what differs beyond rounding is ours.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from pipelines.diffusion.model import DiffusionModel, Generation, initial_latents
from pipelines.diffusion.schedulers import load_scheduler_config, make_scheduler
from pipelines.models.demo import DEMO_MODELS

#: Two of 255 levels: ONNX Runtime and PyTorch differ by ~1e-6, which rounding can turn into one.
MAX_LEVEL_DIFF = 2
#: What an SD 1.x pipeline is built with besides its modules and scheduler.
NO_SAFETY_CHECKER: Mapping[str, Any] = {
    "safety_checker": None,
    "feature_extractor": None,
    "requires_safety_checker": False,
}
#: What a test generates unless it says otherwise.
DEMO_GENERATION: Mapping[str, Any] = {
    "model": DEMO_MODELS[0].name,
    "scheduler": "ddim",
    "prompt": "a photo of a cat sitting on a red chair",
    "negative_prompt": "blurry, lowres",
    "seed": 1234,
    "steps": 5,
    "cfg": 6.0,
    "eta": 0.0,
    "batch": 1,
    "width": 64,
    "height": 48,
}


def demo_generation(**values: Any) -> Generation:
    """``DEMO_GENERATION`` with ``values`` changed."""
    return Generation(**{**DEMO_GENERATION, **values})


def starting_noise(gen: Generation) -> torch.Tensor:
    """Our starting latents for ``gen``, for diffusers' ``latents`` (it scales them as we do)."""
    return torch.from_numpy(initial_latents(gen.seed, gen.batch, gen.width, gen.height))


def from_our_noise(gen: Generation) -> dict[str, Any]:
    """The inputs that start a pipeline at ``gen``'s size from our noise (diffusers scales it as we do)."""
    return {"width": gen.width, "height": gen.height, "latents": starting_noise(gen)}


def run_diffusers(
    pipeline_class: Any,
    parts: Mapping[str, Any],
    model: DiffusionModel,
    gen: Generation,
    components: Mapping[str, Any] = NO_SAFETY_CHECKER,
    **inputs: Any,
) -> np.ndarray:
    """diffusers' ``pipeline_class`` on ``parts`` and ``components`` with our scheduler, run on ``gen``.

    The scheduler is built and seeded as ours; the call gets ``gen``'s prompts, steps, guidance,
    eta and batch, a generator seeded with ``gen.seed``, and ``inputs``. Returns 0-255 levels,
    signed, as ``images.pixels``.
    """
    scheduler = make_scheduler(gen.scheduler, load_scheduler_config(model.folder), seed=gen.seed)
    pipe = pipeline_class(**parts, **components, scheduler=scheduler)
    pipe.set_progress_bar_config(disable=True)
    # Embeddings given in ``inputs`` stand for the prompts (diffusers takes one or the other).
    prompts = (
        {} if "prompt_embeds" in inputs else {"prompt": gen.prompt, "negative_prompt": gen.negative_prompt}
    )
    images = pipe(
        **prompts,
        num_inference_steps=gen.steps,
        guidance_scale=gen.cfg,
        eta=gen.eta,
        num_images_per_prompt=gen.batch,
        generator=torch.Generator().manual_seed(gen.seed),
        output_type="np",
        **inputs,
    ).images
    return (images * 255).round().astype(np.int16)


def assert_matches(ours: np.ndarray, reference: np.ndarray, shape: tuple[int, ...] | None = None) -> None:
    """Our images are diffusers' to within ``MAX_LEVEL_DIFF`` levels, both of ``shape`` when given."""
    assert ours.shape == reference.shape
    assert shape is None or ours.shape == shape
    assert np.abs(ours - reference).max() <= MAX_LEVEL_DIFF


def img2img_reference(
    pipeline_class: Any,
    module: Any,
    parts: Mapping[str, Any],
    model: DiffusionModel,
    gen: Generation,
    strength: float,
    monkeypatch: Any,
    components: Mapping[str, Any] = NO_SAFETY_CHECKER,
) -> np.ndarray:
    """diffusers' img2img ``pipeline_class`` (defined in ``module``) on the test gradient, started as ours.

    Like with like: our VAE encoder returns the latent mode (diffusers samples it) and our noise is
    onnx-web's numpy draw (diffusers draws from the generator); ``monkeypatch`` swaps both in.
    """
    from tests.unit.pipelines.images import gradient

    noise = starting_noise(gen)
    monkeypatch.setattr(module, "retrieve_latents", lambda output, generator=None: output.latent_dist.mode())
    monkeypatch.setattr(module, "randn_tensor", lambda shape, **kwargs: noise.clone())
    source = gradient(gen.width, gen.height)
    return run_diffusers(pipeline_class, parts, model, gen, components, image=source, strength=strength)


def inpaint_reference(
    pipeline_class: Any,
    module: Any,
    parts: Mapping[str, Any],
    model: DiffusionModel,
    gen: Generation,
    monkeypatch: Any,
    components: Mapping[str, Any] = NO_SAFETY_CHECKER,
    **inputs: Any,
) -> np.ndarray:
    """diffusers' inpaint ``pipeline_class`` (defined in ``module``) on the test gradient and mask.

    It starts from our noise, and ``monkeypatch`` makes its VAE encoder return the latent mode, as
    ours does (diffusers samples it).
    """
    from tests.unit.pipelines.images import gradient, mask_image

    monkeypatch.setattr(module, "retrieve_latents", lambda output, generator=None: output.latent_dist.mode())
    source, mask = gradient(gen.width, gen.height), mask_image(gen.width, gen.height)
    return run_diffusers(
        pipeline_class,
        parts,
        model,
        gen,
        components,
        image=source,
        mask_image=mask,
        **from_our_noise(gen),
        **inputs,
    )
