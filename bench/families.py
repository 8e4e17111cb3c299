"""The model families and pipelines of ``bench.modes``: ours through the api's chain, diffusers beside it.

Each family mode sends the request a user would (model, pipeline and the fields it needs) through
``bench.modes.Ours`` — the api's chain builder, then ``run_chain`` on the warm session cache — and
runs the matching diffusers pipeline on the very torch weights that model was exported from
(``pipelines.models.demo.torch_parts``), with our scheduler (built from that model's own scheduler
config and seeded as ours), our guidance, our starting noise and, for img2img, the VAE latent's
mode and our noise instead of diffusers' draws:

- ``sd21-txt2img``: the SD 2.1 768-v demo (v-prediction), ``StableDiffusionPipeline``;
- ``sdxl-txt2img`` / ``sdxl-img2img``: the SDXL demo, ``StableDiffusionXL(Img2Img)Pipeline``;
- ``lora-txt2img``: ``<lora:demo-detail:0.8>`` in the prompt, against diffusers with that LoRA
  loaded through peft and fused at 0.8 (the token itself is not in diffusers' prompt);
- ``panorama``: a 2:1 image, against ``StableDiffusionPanoramaPipeline`` with our views (the
  window is the request's ``unet_tile``, the stride diffusers' 8 latent cells, which the request's
  ``unet_overlap`` makes), its image denoised as our route (and onnx-web's) does;
- ``controlnet``: img2img's ``pipeline=controlnet`` with ``sourceFilter=canny``, against
  ``StableDiffusionControlNetPipeline`` given the same Canny image (our filter, timed on both sides);
- ``pix2pix``: img2img's ``pipeline=pix2pix`` (``strength`` is the image guidance scale), against
  ``StableDiffusionInstructPix2PixPipeline``.

LCM is left out: no LCM-distilled demo model is built by ``build_demo_models`` (its tests build
their own), so there is no model a user could send.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from bench.modes import (
    NEGATIVE_PROMPT,
    PROMPT,
    SEED,
    STRENGTH,
    Images,
    Mode,
    Ours,
    base_query,
    gradient,
    seeded_noise,
)

#: The demo LoRA (``pipelines.models.demo_networks``) and the weight the prompt gives it.
LORA = "demo-detail"
LORA_WEIGHT = 0.8
#: The demo ControlNet for the SD 1.5 demo, and its conditioning scale (img2img's ``strength``).
CONTROL = "demo-control"
CONTROL_SCALE = 1.0
#: InstructPix2Pix's image guidance scale (img2img's ``strength``): the api's largest, which guides.
IMAGE_GUIDANCE = 1.0
#: The panorama's view window in pixels, sent as ``unet_tile`` (its smallest value), and diffusers'
#: stride of 8 latent cells, sent as the ``unet_overlap`` that makes it (half a 16-cell window). A
#: 2:1 image of ``size`` rows then has three overlapping views at 128.
PANORAMA_TILE = 128
PANORAMA_STRIDE = 8
PANORAMA_OVERLAP = 1 - PANORAMA_STRIDE * 8 / PANORAMA_TILE
LATENT_FACTOR = 8

#: Every family mode, in the order of the table.
FAMILY_MODES = (
    "sd21-txt2img",
    "sdxl-txt2img",
    "sdxl-img2img",
    "lora-txt2img",
    "panorama",
    "controlnet",
    "pix2pix",
)


def shapes(width: int, height: int) -> Image.Image:
    """Flat coloured shapes: an image whose Canny edges a ControlNet can follow."""
    image = Image.new("RGB", (width, height), (30, 80, 150))
    draw = ImageDraw.Draw(image)
    draw.rectangle((width // 10, height // 8, width // 2, 7 * height // 8), fill=(220, 190, 50))
    draw.ellipse((2 * width // 5, height // 5, 9 * width // 10, 4 * height // 5), fill=(190, 50, 70))
    return image


@contextlib.contextmanager
def like_our_img2img(module: Any) -> Iterator[None]:
    """Make the img2img pipeline of ``module`` encode to the VAE latent's mode and noise with ours."""
    from unittest import mock

    def mode(output: Any, generator: Any = None) -> Any:
        return output.latent_dist.mode()

    with (
        mock.patch.object(module, "retrieve_latents", mode),
        mock.patch.object(module, "randn_tensor", seeded_noise),
    ):
        yield


def our_latents(width: int, height: int) -> Any:
    """Our starting latents, for diffusers' ``latents`` (it scales them by the scheduler as we do)."""
    import torch

    from pipelines.diffusion.model import initial_latents

    return torch.from_numpy(initial_latents(SEED, 1, width, height))


#: What diffusers' SD 1.x/2.x pipelines are built with besides modules and scheduler.
NO_SAFETY_CHECKER: Mapping[str, Any] = {
    "safety_checker": None,
    "feature_extractor": None,
    "requires_safety_checker": False,
}
#: What diffusers' SDXL pipelines are built with besides modules and scheduler.
NO_WATERMARK: Mapping[str, Any] = {"add_watermarker": False}


@dataclass
class Diffusers:
    """One diffusers pipeline on a demo model's torch weights, run as ours runs: scheduler, seed, cfg."""

    models: Path
    model: str
    scheduler: str
    cfg: float
    pipe: Any

    @classmethod
    def build(
        cls,
        models: Path,
        model: str,
        scheduler: str,
        cfg: float,
        pipeline_class: Any,
        components: Mapping[str, Any] = NO_SAFETY_CHECKER,
        parts: Mapping[str, Any] | None = None,
    ) -> Diffusers:
        from pipelines.models.demo import torch_parts

        modules = dict(parts) if parts is not None else torch_parts(models, model)
        reference = cls(models, model, scheduler, cfg, None)
        reference.pipe = pipeline_class(**modules, **components, scheduler=reference.fresh_scheduler())
        reference.pipe.set_progress_bar_config(disable=True)
        return reference

    def fresh_scheduler(self) -> Any:
        """A new scheduler from the model's own config, seeded as ours (our pipeline makes one per run)."""
        from pipelines.diffusion.schedulers import load_scheduler_config, make_scheduler

        return make_scheduler(self.scheduler, load_scheduler_config(self.models / self.model), seed=SEED)

    def __call__(
        self, noise: contextlib.AbstractContextManager[Any] | None = None, **kwargs: Any
    ) -> Image.Image:
        """One run with the shared prompts, guidance and generator, and ``kwargs``."""
        import torch

        self.pipe.scheduler = self.fresh_scheduler()
        with torch.inference_mode(), noise or contextlib.nullcontext():
            image: Image.Image = self.pipe(
                PROMPT,
                negative_prompt=NEGATIVE_PROMPT,
                guidance_scale=self.cfg,
                generator=torch.Generator().manual_seed(SEED),
                **kwargs,
            ).images[0]
        return image


@dataclass
class Families:
    """Builds the family modes on one ``Ours`` (one warm session cache), each only when asked for."""

    ours: Ours
    size: int
    steps: int
    scheduler: str
    cfg: float

    @property
    def base(self) -> dict[str, Any]:
        """The request fields every mode sends (as ``bench.modes`` sends them)."""
        return base_query(self.size, self.steps)

    @property
    def models(self) -> Path:
        return self.ours.models

    def diffusers(self, model: str, pipeline_class: Any, **options: Any) -> Diffusers:
        return Diffusers.build(self.models, model, self.scheduler, self.cfg, pipeline_class, **options)

    def txt2img(self, model: str, pipeline_class: Any, **options: Any) -> Images:
        """diffusers' txt2img ``pipeline_class`` on ``model`` from our starting latents."""
        pipe = self.diffusers(model, pipeline_class, **options)
        size = self.size
        return lambda: pipe(
            width=size, height=size, num_inference_steps=self.steps, latents=our_latents(size, size)
        )

    def build(self, name: str) -> Mode:
        builder: Callable[[], Mode] = getattr(self, name.replace("-", "_"))
        return builder()

    @property
    def setting(self) -> str:
        return f"{self.size}², {self.steps} steps"

    def sd21_txt2img(self) -> Mode:
        from diffusers import StableDiffusionPipeline

        from pipelines.models.demo import DEMO_SD21

        return Mode(
            "sd21-txt2img",
            f"{self.setting}, v-prediction",
            self.ours.runner("txt2img", {**self.base, "model": DEMO_SD21}),
            self.txt2img(DEMO_SD21, StableDiffusionPipeline),
            "StableDiffusionPipeline (SD 2.1 768-v demo)",
        )

    def sdxl_txt2img(self) -> Mode:
        from diffusers import StableDiffusionXLPipeline

        from pipelines.models.demo import DEMO_SDXL

        return Mode(
            "sdxl-txt2img",
            self.setting,
            self.ours.runner("txt2img", {**self.base, "model": DEMO_SDXL, "pipeline": "txt2img-sdxl"}),
            self.txt2img(DEMO_SDXL, StableDiffusionXLPipeline, components=NO_WATERMARK),
            "StableDiffusionXLPipeline",
        )

    def sdxl_img2img(self) -> Mode:
        from diffusers import StableDiffusionXLImg2ImgPipeline
        from diffusers.pipelines.stable_diffusion_xl import pipeline_stable_diffusion_xl_img2img as module

        from pipelines.models.demo import DEMO_SDXL

        source = gradient(self.size, self.size)
        pipe = self.diffusers(DEMO_SDXL, StableDiffusionXLImg2ImgPipeline, components=NO_WATERMARK)
        query = {**self.base, "model": DEMO_SDXL, "pipeline": "img2img-sdxl", "strength": STRENGTH}
        return Mode(
            "sdxl-img2img",
            f"{self.setting}, strength {STRENGTH}",
            self.ours.runner("img2img", query, {"source": source}),
            lambda: pipe(
                like_our_img2img(module), image=source, strength=STRENGTH, num_inference_steps=self.steps
            ),
            "StableDiffusionXLImg2ImgPipeline",
        )

    def lora_txt2img(self) -> Mode:
        from diffusers import StableDiffusionPipeline

        from pipelines.models.demo import DEMO_MODELS, torch_parts

        model = DEMO_MODELS[0].name
        lora = self.models / "lora" / f"{LORA}.safetensors"
        # Modules of its own: fusing the LoRA changes their weights.
        pipe = self.diffusers(model, StableDiffusionPipeline, parts=torch_parts(self.models, model))
        pipe.pipe.load_lora_weights(str(lora.parent), weight_name=lora.name, adapter_name=LORA)
        pipe.pipe.fuse_lora(lora_scale=LORA_WEIGHT)
        size = self.size
        query = {**self.base, "prompt": f"{PROMPT} <lora:{LORA}:{LORA_WEIGHT}>"}
        return Mode(
            "lora-txt2img",
            f"{self.setting}, <lora:{LORA}:{LORA_WEIGHT}>",
            self.ours.runner("txt2img", query),
            lambda: pipe(
                width=size, height=size, num_inference_steps=self.steps, latents=our_latents(size, size)
            ),
            "StableDiffusionPipeline + load_lora_weights, fuse_lora (peft)",
        )

    def panorama(self) -> Mode:
        from diffusers import StableDiffusionPanoramaPipeline

        from pipelines.imageops.blend import denoise_nl_means
        from pipelines.models.demo import DEMO_MODELS
        from service.chains import PANORAMA_DENOISE

        window = PANORAMA_TILE // LATENT_FACTOR
        base_views: Any = StableDiffusionPanoramaPipeline.get_views

        class OurViews(StableDiffusionPanoramaPipeline):
            """diffusers' panorama with the views of our request: the window is its ``unet_tile``."""

            def get_views(self, *args: Any, **kwargs: Any) -> Any:
                return base_views(self, *args, **{**kwargs, "window_size": window, "stride": PANORAMA_STRIDE})

        pipe = self.diffusers(DEMO_MODELS[0].name, OurViews)
        width, height = 2 * self.size, self.size
        query = {
            **self.base,
            "pipeline": "panorama",
            "width": width,
            "height": height,
            "unet_tile": PANORAMA_TILE,
            "unet_overlap": PANORAMA_OVERLAP,
        }
        return Mode(
            "panorama",
            f"{width}x{height}, {self.steps} steps, {PANORAMA_TILE}-px views",
            self.ours.runner("txt2img", query),
            lambda: pipe(
                width=width, height=height, num_inference_steps=self.steps, latents=our_latents(width, height)
            ),
            "StableDiffusionPanoramaPipeline, then the route's denoising (as onnx-web's)",
            # The txt2img route denoises a panorama after it is made, as onnx-web's does.
            finish=lambda image: denoise_nl_means(image, PANORAMA_DENOISE),
        )

    def controlnet(self) -> Mode:
        from diffusers import ControlNetModel, StableDiffusionControlNetPipeline

        from pipelines.imageops.filters import apply_source_filter
        from pipelines.models.demo import DEMO_MODELS
        from pipelines.models.demo_controlnets import controlnet_source_path

        controlnet = ControlNetModel.from_pretrained(controlnet_source_path(self.models, CONTROL)).eval()
        pipe = self.diffusers(
            DEMO_MODELS[0].name,
            StableDiffusionControlNetPipeline,
            components={**NO_SAFETY_CHECKER, "controlnet": controlnet},
        )
        size = self.size
        source = shapes(size, size)

        def reference() -> Image.Image:
            # The edit-filter stage's work, as a diffusers user would do it before the pipeline.
            control = apply_source_filter("canny", source, np.random.default_rng(SEED))
            return pipe(
                image=control,
                controlnet_conditioning_scale=CONTROL_SCALE,
                width=size,
                height=size,
                num_inference_steps=self.steps,
                latents=our_latents(size, size),
            )

        query = {
            **self.base,
            "pipeline": "controlnet",
            "control": CONTROL,
            "sourceFilter": "canny",
            "strength": CONTROL_SCALE,
        }
        return Mode(
            "controlnet",
            f"{self.setting}, canny, scale {CONTROL_SCALE}",
            self.ours.runner("img2img", query, {"source": source}),
            reference,
            "StableDiffusionControlNetPipeline (+ our canny filter)",
        )

    def pix2pix(self) -> Mode:
        from diffusers import StableDiffusionInstructPix2PixPipeline

        from pipelines.models.demo import DEMO_PIX2PIX

        size = self.size
        source = gradient(size, size)
        pipe = self.diffusers(DEMO_PIX2PIX, StableDiffusionInstructPix2PixPipeline)
        query = {**self.base, "model": DEMO_PIX2PIX, "pipeline": "pix2pix", "strength": IMAGE_GUIDANCE}
        return Mode(
            "pix2pix",
            f"{self.setting}, image guidance {IMAGE_GUIDANCE}",
            self.ours.runner("img2img", query, {"source": source}),
            lambda: pipe(
                image=source,
                image_guidance_scale=IMAGE_GUIDANCE,
                num_inference_steps=self.steps,
                latents=our_latents(size, size),
            ),
            "StableDiffusionInstructPix2PixPipeline",
        )


def build_family_modes(
    ours: Ours, size: int, steps: int, scheduler: str, cfg: float, names: tuple[str, ...] = FAMILY_MODES
) -> list[Mode]:
    """The family modes named in ``names`` (in ``FAMILY_MODES`` order), on ``ours``' session cache."""
    families = Families(ours, size, steps, scheduler, cfg)
    return [families.build(name) for name in FAMILY_MODES if name in names]
