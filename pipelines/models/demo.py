"""Small random-weight Stable Diffusion models, built locally and exported like real ones.

No weights can be downloaded on the build machines, so tests and the embedded default run on
models that have the real SD 1.x architecture (UNet with cross-attention, KL VAE with a scale
factor of 8, CLIP text encoder and byte-level BPE tokenizer) but are narrow enough that a 64x64
image with a few steps takes well under a second on a CPU. The torch weights are written as a
diffusers folder first and then exported by ``convert.convert_diffusers_folder``, the same code
a real checkpoint takes; the diffusers folder is kept (``torch_source_path``) so reference tests
can run diffusers' own PyTorch pipelines on the very same weights.

The SD x4 upscaler (``upscaling-stable-diffusion-x4``) is built the same way, with the
architecture of ``stabilityai/stable-diffusion-x4-upscaler``: a UNet taking the 4 latent channels
plus the 3 channels of the low-resolution image, the noise level as its class label, and a VAE
with three blocks (4 pixels per latent cell).

The SD 2.1 demo (``stable-diffusion-onnx-v2-1``) has the traits of
``stabilityai/stable-diffusion-2-1`` (768-v): a UNet with linear projections, per-block head counts
and attention upcast to fp32, conditioned on an OpenCLIP-H-style text encoder (``gelu``, padding
with "!", converted without its last layer as diffusers does) and stepped by DDIM predicting v.

The SDXL demo (``diffusion-sdxl-demo``) has SDXL base's architecture, narrowed: two CLIP text
encoders (the second with projection, its tokenizer padding with "!"), a UNet with size and
pooled-text conditioning (``addition_embed_type="text_time"``) attending to both encoders' hidden
states, and a VAE with SDXL's scaling factor.

Beside them go random-weight live-preview decoders (``preview/taesd``, ``preview/taesdxl``) with
TAESD's architecture (``pipelines.models.preview``).
"""

from __future__ import annotations

import itertools
import json
import logging
import os
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from pipelines.models.controlnets import has_cnet
from pipelines.models.convert import convert_diffusers_folder
from pipelines.models.demo_controlnets import build_demo_controlnets
from pipelines.models.demo_networks import build_demo_networks
from pipelines.models.layout import EXTRAS_FILE, read_model_hash
from pipelines.models.preview import build_demo_previews

logger = logging.getLogger(__name__)

#: Folder, under the models path, that holds the diffusers (torch) source of each demo model.
TORCH_SOURCES = ".torch"

BOS_TOKEN = "<|startoftext|>"
EOS_TOKEN = "<|endoftext|>"
#: Token context of SD 1.x's CLIP text encoder: 75 prompt tokens plus bos and eos.
MODEL_MAX_LENGTH = 77

#: SD 1.5's own scheduler config (the ``PNDMScheduler`` it ships with), so every scheduler we
#: build from it sees the same betas and offsets as with a real model.
SD15_SCHEDULER_CONFIG: dict[str, Any] = {
    "_class_name": "PNDMScheduler",
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "clip_sample": False,
    "num_train_timesteps": 1000,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "trained_betas": None,
}

#: SD 2.1 (768-v)'s own scheduler config: SD 1.5's noise schedule and offsets, stepped by DDIM, with
#: a UNet that predicts the velocity v rather than the noise.
SD21_SCHEDULER_CONFIG: dict[str, Any] = {
    **SD15_SCHEDULER_CONFIG,
    "_class_name": "DDIMScheduler",
    "prediction_type": "v_prediction",
}
#: SD 2.1's ``feature_extractor/preprocessor_config.json``: CLIP's image preprocessing.
SD21_FEATURE_EXTRACTOR: dict[str, Any] = {
    "crop_size": 224,
    "do_center_crop": True,
    "do_convert_rgb": True,
    "do_normalize": True,
    "do_resize": True,
    "feature_extractor_type": "CLIPFeatureExtractor",
    "image_mean": [0.48145466, 0.4578275, 0.40821073],
    "image_std": [0.26862954, 0.26130258, 0.27577711],
    "resample": 3,
    "size": 224,
}
#: OpenCLIP's tokenizer (SD 2.x's, and SDXL's second) pads with "!" rather than the end token.
OPEN_CLIP_PAD_TOKEN = "!"
#: The layers of the demo's OpenCLIP-H-style text encoder. SD 2.x conditions on its penultimate
#: layer: diffusers' SD 2 text encoders are converted without the last one (23 of OpenCLIP-H's
#: 24), so their ``last_hidden_state``, through the final LayerNorm, is that layer.
OPEN_CLIP_DEMO_LAYERS = 3
#: Width of the demo SD 2.1 text encoder's hidden states: wider than the SD 1.x demo's 32, as
#: OpenCLIP-H's 1024 is wider than CLIP ViT-L's 768.
SD2_DEMO_TEXT_WIDTH = 48
#: What an OpenCLIP-H-style demo text encoder changes in ``demo_text_encoder``'s config: exact GELU
#: (CLIP ViT-L has the quick approximation), a 4x MLP, heads of 16 channels.
OPEN_CLIP_TEXT_CONFIG: dict[str, Any] = {
    "hidden_size": SD2_DEMO_TEXT_WIDTH,
    "intermediate_size": 4 * SD2_DEMO_TEXT_WIDTH,
    "num_attention_heads": SD2_DEMO_TEXT_WIDTH // 16,
    "num_hidden_layers": OPEN_CLIP_DEMO_LAYERS - 1,
    "hidden_act": "gelu",
}
#: The SD 2.1 demo: SD 1.x's naming, since it runs through the same pipeline (family ``sd``).
DEMO_SD21 = "stable-diffusion-onnx-v2-1"
DEMO_SD21_LABEL = "Demo SD v2.1 768-v (tiny, random weights)"

#: Words that become single tokens of the demo tokenizer (everything else still tokenizes, down to
#: single bytes): common English and the vocabulary of image prompts.
_TOKENIZER_WORDS = """
a an the of and or but with without in on at by for from to into over under above below near
behind between through across around before after during while is are was were be been being
has have had do does did will would can could should may might must not no yes very more most
less least much many few some any all each every other another such same than then there here
this that these those it its they them their he she his her we our you your i my me who what
which where when why how one two three four five six seven eight nine ten first second last
new old young big small large tiny huge tall short long wide thin thick high low deep dark light
bright dim soft hard warm cold hot cool wet dry clean dirty quiet loud fast slow beautiful pretty
ugly cute lovely elegant simple complex detailed intricate sharp blurry smooth rough shiny matte
red orange yellow green blue purple pink brown black white gray grey gold silver golden colorful
cat cats dog dogs bird birds fish horse horses cow lion tiger bear wolf fox rabbit mouse deer
owl eagle dragon unicorn robot robots monster creature animal animals man men woman women boy
girl child children person people king queen knight wizard witch warrior princess prince soldier
astronaut pirate portrait face faces eyes eye hair hand hands body smile head
house houses castle tower city town village street road bridge building buildings room kitchen
garden forest tree trees flower flowers grass field mountain mountains hill river lake sea ocean
beach island desert snow rain cloud clouds sky sun moon star stars space planet earth fire water
ice stone rock wood metal glass sand storm night day morning evening sunset sunrise winter summer
spring autumn fall light shadow shadows fog mist
photo photograph photography picture image painting drawing sketch illustration render art
artwork style oil watercolor acrylic digital pencil ink charcoal anime cartoon comic cinematic
realistic photorealistic hyperrealistic surreal abstract fantasy scifi futuristic ancient medieval
modern vintage retro minimalist studio lighting volumetric dramatic epic masterpiece quality best
highly resolution focus depth bokeh lens camera canon nikon wide angle closeup close up view scene
landscape background foreground trending artstation unreal engine octane concept character
design fine sharp hd uhd k by greg rutkowski
sitting standing walking running flying swimming holding wearing looking eating playing reading
dress shirt hat coat armor crown sword shield book table chair window door car train ship boat
plane bicycle lamp candle cup tea coffee apple bread cake
bad worst lowres blurry jpeg artifacts deformed disfigured extra missing fingers limbs watermark
text signature cropped out frame duplicate mutated poorly drawn
"""

#: The x4 upscaler's noise schedule, which both of its schedulers share.
X4_NOISE_SCHEDULE: dict[str, Any] = {
    "beta_end": 0.02,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.0001,
    "clip_sample": False,
    "num_train_timesteps": 1000,
    "trained_betas": None,
}
#: The x4 upscaler's schedulers as its release ships them: DDIM predicting v for the denoising loop,
#: DDPM (``low_res_scheduler``) to noise the low-resolution image to the requested noise level.
X4_SCHEDULER_CONFIG: dict[str, Any] = {
    "_class_name": "DDIMScheduler",
    **X4_NOISE_SCHEDULE,
    "prediction_type": "v_prediction",
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
}
X4_LOW_RES_SCHEDULER_CONFIG: dict[str, Any] = {
    "_class_name": "DDPMScheduler",
    **X4_NOISE_SCHEDULE,
    "variance_type": "fixed_small",
}
#: The highest noise level the x4 upscaler was trained with (its pipeline's ``max_noise_level``).
X4_MAX_NOISE_LEVEL = 350
#: Noise levels the x4 upscaler's UNet embeds (as class labels); only up to the maximum are used.
X4_NOISE_CLASSES = 1000
#: The x4 upscaler's latent scaling factor (diffusers insists on exactly this value).
X4_SCALING_FACTOR = 0.08333
DEMO_UPSCALER = "upscaling-stable-diffusion-x4"
DEMO_UPSCALER_LABEL = "Demo SD x4 upscaler (tiny, random weights)"
#: The SDXL demo: the ``diffusion-`` prefix makes the registry list it as a diffusion model.
DEMO_SDXL = "diffusion-sdxl-demo"
DEMO_SDXL_LABEL = "Demo SDXL (tiny, random weights)"
#: SDXL's latent scaling factor (``stabilityai/stable-diffusion-xl-base-1.0``'s VAE config).
SDXL_SCALING_FACTOR = 0.13025
#: Width of the demo SDXL text encoders' hidden states; the UNet attends to both, concatenated.
SDXL_DEMO_TEXT_WIDTH = 32
#: Channels of each of SDXL's six size-conditioning embeddings in the demo UNet.
SDXL_DEMO_TIME_EMBED_DIM = 8
#: SDXL base 1.0's own scheduler config: SD 1.5's noise schedule and offsets, stepped by
#: ``EulerDiscreteScheduler`` with "leading" spacing.
SDXL_SCHEDULER_CONFIG: dict[str, Any] = {
    **SD15_SCHEDULER_CONFIG,
    "_class_name": "EulerDiscreteScheduler",
    "interpolation_type": "linear",
    "prediction_type": "epsilon",
    "sample_max_value": 1.0,
    "timestep_spacing": "leading",
    "use_karras_sigmas": False,
}
#: ``model_index.json`` of a diffusers SDXL base folder.
SDXL_MODEL_INDEX: dict[str, Any] = {
    "_class_name": "StableDiffusionXLPipeline",
    "force_zeros_for_empty_prompt": True,
    "scheduler": ["diffusers", "EulerDiscreteScheduler"],
    "text_encoder": ["transformers", "CLIPTextModel"],
    "text_encoder_2": ["transformers", "CLIPTextModelWithProjection"],
    "tokenizer": ["transformers", "CLIPTokenizer"],
    "tokenizer_2": ["transformers", "CLIPTokenizer"],
    "unet": ["diffusers", "UNet2DConditionModel"],
    "vae": ["diffusers", "AutoencoderKL"],
}
#: SDXL's second tokenizer is OpenCLIP's.
SDXL_PAD_TOKEN_2 = OPEN_CLIP_PAD_TOKEN


def torch_source_path(models_path: Path, name: str) -> Path:
    """Where the diffusers (torch) source folder of demo model ``name`` is kept."""
    return models_path / TORCH_SOURCES / name


#: What an SD 1.x pipeline folder's index says besides its components (no safety checker).
SD15_INDEX_EXTRAS: dict[str, Any] = {
    "feature_extractor": [None, None],
    "requires_safety_checker": False,
    "safety_checker": [None, None],
}


def sd_model_index(class_name: str, scheduler: str, **extra: Any) -> dict[str, Any]:
    """The ``model_index.json`` of a Stable Diffusion folder with one CLIP text encoder."""
    return {
        "_class_name": class_name,
        **extra,
        "scheduler": ["diffusers", scheduler],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
    }


#: diffusers' pipeline class of an SD 1.x folder by its UNet's input channels: 9 for inpainting
#: (latents, mask, masked-image latents), 8 for InstructPix2Pix (latents, source-image latents).
DEMO_PIPELINE_CLASSES: dict[int, str] = {
    9: "StableDiffusionInpaintPipeline",
    8: "StableDiffusionInstructPix2PixPipeline",
}
#: The InstructPix2Pix demo: SD 1.x's parts, a UNet that also sees the source image's latents.
DEMO_PIX2PIX = "stable-diffusion-onnx-instruct-pix2pix"
DEMO_PIX2PIX_LABEL = "Demo InstructPix2Pix (tiny, random weights)"


def write_demo_checkpoint(dest: Path, *, unet_in_channels: int = 4) -> None:
    """Write a diffusers Stable Diffusion folder of seeded random weights to ``dest``."""
    write_demo_text_parts(dest)
    demo_unet(unet_in_channels).save_pretrained(dest / "unet")
    demo_vae().save_pretrained(dest / "vae")
    write_json(dest / "scheduler" / "scheduler_config.json", SD15_SCHEDULER_CONFIG)
    pipeline_class = DEMO_PIPELINE_CLASSES.get(unet_in_channels, "StableDiffusionPipeline")
    write_json(
        dest / "model_index.json", sd_model_index(pipeline_class, "PNDMScheduler", **SD15_INDEX_EXTRAS)
    )


def write_demo_sd21_checkpoint(dest: Path) -> None:
    """Write a diffusers SD 2.1 (768-v) ``StableDiffusionPipeline`` folder of seeded random weights."""
    vocab = write_demo_tokenizer(dest / "tokenizer", pad_token=OPEN_CLIP_PAD_TOKEN)
    demo_text_encoder(vocab, open_clip=True).save_pretrained(dest / "text_encoder")
    demo_sd21_unet().save_pretrained(dest / "unet")
    demo_vae().save_pretrained(dest / "vae")
    # The release ships the (unused) safety checker's image processor, and its index names it.
    write_json(dest / "feature_extractor" / "preprocessor_config.json", SD21_FEATURE_EXTRACTOR)
    write_json(dest / "scheduler" / "scheduler_config.json", SD21_SCHEDULER_CONFIG)
    index = sd_model_index(
        "StableDiffusionPipeline",
        "DDIMScheduler",
        feature_extractor=["transformers", "CLIPImageProcessor"],
        requires_safety_checker=False,
        safety_checker=[None, None],
    )
    write_json(dest / "model_index.json", index)


def write_demo_upscaler_checkpoint(dest: Path) -> None:
    """Write a diffusers ``StableDiffusionUpscalePipeline`` folder of seeded random weights to ``dest``."""
    write_demo_text_parts(dest)
    demo_upscaler_unet().save_pretrained(dest / "unet")
    demo_vae((16, 32, 32), X4_SCALING_FACTOR).save_pretrained(dest / "vae")
    write_json(dest / "scheduler" / "scheduler_config.json", X4_SCHEDULER_CONFIG)
    write_json(dest / "low_res_scheduler" / "scheduler_config.json", X4_LOW_RES_SCHEDULER_CONFIG)
    index = sd_model_index(
        "StableDiffusionUpscalePipeline",
        "DDIMScheduler",
        max_noise_level=X4_MAX_NOISE_LEVEL,
        low_res_scheduler=["diffusers", "DDPMScheduler"],
    )
    write_json(dest / "model_index.json", index)


def write_demo_sdxl_checkpoint(dest: Path) -> None:
    """Write a diffusers ``StableDiffusionXLPipeline`` folder of seeded random weights to ``dest``."""
    write_demo_text_parts(dest)
    vocab = write_demo_tokenizer(dest / "tokenizer_2", pad_token=SDXL_PAD_TOKEN_2)
    demo_text_encoder(vocab, projection=True).save_pretrained(dest / "text_encoder_2")
    demo_sdxl_unet().save_pretrained(dest / "unet")
    demo_vae(scaling_factor=SDXL_SCALING_FACTOR).save_pretrained(dest / "vae")
    write_json(dest / "scheduler" / "scheduler_config.json", SDXL_SCHEDULER_CONFIG)
    write_json(dest / "model_index.json", SDXL_MODEL_INDEX)


@dataclass(frozen=True)
class DemoModel:
    """One demo model folder: its name and label, how its torch source is written, how extras list it."""

    name: str
    label: str
    #: Writes the diffusers (torch) folder that ``convert_diffusers_folder`` exports.
    write_checkpoint: Callable[[Path], object]
    #: The extras-file section that lists it (§11.2): ``diffusion`` or ``upscaling``.
    section: str = "diffusion"
    #: What its extras entry says besides name, label, source and hash: the ``pipeline`` that tells
    #: the GUI what a diffusion model is for, or an upscaler's ``scale``.
    listing: Mapping[str, Any] = field(default_factory=dict)
    #: Also converted with the ``cnet`` UNet that ControlNets feed (``pipelines.models.controlnets``).
    cnet: bool = False

    def entry(self, folder: Path) -> dict[str, Any]:
        """Its extras-file entry, with the hash of the model converted into ``folder``."""
        return {
            "name": self.name,
            "label": self.label,
            "source": "demo",
            **self.listing,
            "hash": read_model_hash(folder),
        }


#: The SD 1.x demo models: txt2img (4 UNet input channels) and inpainting (9: latents, mask and
#: masked-image latents).
DEMO_MODELS: tuple[DemoModel, ...] = (
    DemoModel(
        "stable-diffusion-onnx-v1-5",
        "Demo SD v1.5 (tiny, random weights)",
        write_demo_checkpoint,
        listing={"pipeline": "txt2img"},
        cnet=True,
    ),
    DemoModel(
        "stable-diffusion-onnx-v1-inpainting",
        "Demo SD v1 inpainting (tiny, random weights)",
        partial(write_demo_checkpoint, unet_in_channels=9),
        listing={"pipeline": "inpaint"},
    ),
)
#: Every folder ``build_demo_models`` writes, in the order it writes them.
DEMO_FOLDERS: tuple[DemoModel, ...] = (
    *DEMO_MODELS,
    DemoModel(DEMO_SD21, DEMO_SD21_LABEL, write_demo_sd21_checkpoint, listing={"pipeline": "txt2img"}),
    DemoModel(DEMO_UPSCALER, DEMO_UPSCALER_LABEL, write_demo_upscaler_checkpoint, "upscaling", {"scale": 4}),
    DemoModel(
        DEMO_SDXL,
        DEMO_SDXL_LABEL,
        write_demo_sdxl_checkpoint,
        listing={"pipeline": "txt2img-sdxl"},
        cnet=True,
    ),
    DemoModel(
        DEMO_PIX2PIX,
        DEMO_PIX2PIX_LABEL,
        partial(write_demo_checkpoint, unet_in_channels=8),
        listing={"pipeline": "pix2pix"},
    ),
)


def build_demo_models(
    models_path: Path, *, force: bool = False, progress: Callable[[str], None] | None = None
) -> list[Path]:
    """Build every demo model folder (``DEMO_FOLDERS``) under ``models_path`` and list them in extras.

    Models that already exist are kept unless ``force``; returns the model folders.
    """
    report = progress or (lambda line: None)
    models_path.mkdir(parents=True, exist_ok=True)
    folders = []
    for model in DEMO_FOLDERS:
        dest = models_path / model.name
        missing_cnet = model.cnet and not has_cnet(dest)
        if force or missing_cnet or not (dest / "model_index.json").is_file():
            source = torch_source_path(models_path, model.name)
            report(f"{model.name}: building random-weight torch models")
            model.write_checkpoint(source)
            convert_diffusers_folder(source, dest, progress=progress, cnet=model.cnet)
        else:
            report(f"{model.name}: already built")
        folders.append(dest)
    for section in dict.fromkeys(model.section for model in DEMO_FOLDERS):
        entries = [
            model.entry(models_path / model.name) for model in DEMO_FOLDERS if model.section == section
        ]
        merge_extras(models_path / EXTRAS_FILE, section, entries)
    build_demo_networks(models_path, DEMO_MODELS[0].name, progress=report)
    build_demo_controlnets(models_path, progress=report)
    build_demo_previews(models_path, progress=report)
    # Imported here, as torch is: importing this module stays light.
    from pipelines.models.demo_annotators import build_demo_annotators

    build_demo_annotators(models_path, force=force, progress=report)
    # Imported here: the text demo builds its tokenizer with this module's helpers.
    from pipelines.text.demo import build_demo_text_models

    build_demo_text_models(models_path, force=force, progress=report)
    return folders


def torch_parts(models_path: Path, name: str) -> dict[str, Any]:
    """The diffusers (PyTorch) modules demo model ``name`` was exported from, as its pipeline takes them.

    For diffusers' own pipelines on the very same weights (the reference tests, ``bench.modes``);
    an SDXL folder adds its second text encoder and tokenizer.
    """
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    source = torch_source_path(models_path, name)
    parts = {
        "vae": AutoencoderKL.from_pretrained(source / "vae").eval(),
        "text_encoder": CLIPTextModel.from_pretrained(source / "text_encoder").eval(),
        "tokenizer": CLIPTokenizer.from_pretrained(str(source / "tokenizer")),
        "unet": UNet2DConditionModel.from_pretrained(source / "unet").eval(),
    }
    second_encoder = source / "text_encoder_2"
    if second_encoder.is_dir():
        parts["text_encoder_2"] = CLIPTextModelWithProjection.from_pretrained(second_encoder).eval()
        parts["tokenizer_2"] = CLIPTokenizer.from_pretrained(str(source / "tokenizer_2"))
    return parts


def demo_sdxl_unet() -> Any:
    """A narrow SDXL UNet: size and pooled-text conditioning (``text_time``), linear projections.

    Like SDXL base it has no attention in its first block and more transformer layers deeper down;
    it attends to both text encoders' hidden states side by side.
    """
    return seeded_unet(
        4,
        sample_size=8,
        in_channels=4,
        **ATTENTION_BELOW_TOP,
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        transformer_layers_per_block=(1, 2),
        cross_attention_dim=2 * SDXL_DEMO_TEXT_WIDTH,
        addition_embed_type="text_time",
        addition_time_embed_dim=SDXL_DEMO_TIME_EMBED_DIM,
        # Six size values (original, crop, target) embedded, then the pooled text embedding.
        projection_class_embeddings_input_dim=6 * SDXL_DEMO_TIME_EMBED_DIM + SDXL_DEMO_TEXT_WIDTH,
    )


def write_demo_text_parts(dest: Path) -> None:
    """Write the demo tokenizer and the CLIP text encoder sized for it under ``dest``."""
    vocab = write_demo_tokenizer(dest / "tokenizer")
    demo_text_encoder(vocab).save_pretrained(dest / "text_encoder")


#: What every demo UNet shares: two blocks of 32 and 64 channels, one layer each, 4 latent channels out.
DEMO_UNET_SHAPE: dict[str, Any] = {
    "out_channels": 4,
    "layers_per_block": 1,
    "block_out_channels": (32, 64),
    "norm_num_groups": 32,
}
#: Cross-attention in the lower-resolution block only, as the x4 upscaler and SDXL have it.
ATTENTION_BELOW_TOP: dict[str, Any] = {
    "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D"),
    "up_block_types": ("CrossAttnUpBlock2D", "UpBlock2D"),
}


def seeded_unet(seed: int, **config: Any) -> Any:
    """A ``UNet2DConditionModel`` of ``DEMO_UNET_SHAPE`` and ``config`` (which may override the shape,
    e.g. ``norm_num_groups``), random weights seeded by ``seed``."""
    import torch
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    return UNet2DConditionModel(**{**DEMO_UNET_SHAPE, **config})


def demo_unet(in_channels: int = 4, **config: Any) -> Any:
    """A narrow SD 1.x UNet (cross-attention, 4 latent channels out) with seeded random weights.

    ``config`` adds to its diffusers config (an LCM-distilled UNet's ``time_cond_proj_dim``) or
    overrides it. (diffusers' SD 1.x ``attention_head_dim`` counts heads: 8 heads of 4 channels.)
    """
    defaults = {
        "sample_size": 8,
        "in_channels": in_channels,
        "down_block_types": ("CrossAttnDownBlock2D", "DownBlock2D"),
        "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D"),
        "cross_attention_dim": 32,
        "attention_head_dim": 8,
    }
    return seeded_unet(0, **{**defaults, **config})


def demo_sd21_unet() -> Any:
    """A narrow SD 2.1 (768-v) UNet: linear projections, a head count per block, fp32 attention.

    SD 2's ``attention_head_dim`` of ``[5, 10, 20, 20]`` is really heads per block, 64 channels
    each; here every head has 16 channels. ``upcast_attention`` is what keeps 2.1's attention
    scores from overflowing in fp16.
    """
    return seeded_unet(
        6,
        # 768 pixels where SD 1.5 has 512: 12 latent cells where the SD 1.5 demo has 8.
        sample_size=12,
        in_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=SD2_DEMO_TEXT_WIDTH,
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        upcast_attention=True,
    )


def demo_upscaler_unet() -> Any:
    """A narrow x4 upscaler UNet: 7 input channels, the noise level embedded as one of 1000 classes."""
    return seeded_unet(
        3,
        sample_size=32,
        in_channels=7,
        **ATTENTION_BELOW_TOP,
        cross_attention_dim=32,
        attention_head_dim=8,
        num_class_embeds=X4_NOISE_CLASSES,
        use_linear_projection=True,
    )


def demo_vae(block_out_channels: tuple[int, ...] = (16, 16, 32, 32), scaling_factor: float = 0.18215) -> Any:
    """A narrow KL autoencoder with 4 latent channels: SD's (8 pixels per latent cell) by default.

    Each block after the first halves the resolution, so three blocks give the x4 upscaler's VAE.
    """
    import torch
    from diffusers import AutoencoderKL

    torch.manual_seed(1)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * len(block_out_channels),
        up_block_types=("UpDecoderBlock2D",) * len(block_out_channels),
        block_out_channels=block_out_channels,
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=64,
        scaling_factor=scaling_factor,
    )


def demo_text_encoder(vocab: dict[str, int], *, projection: bool = False, open_clip: bool = False) -> Any:
    """A two-layer CLIP text encoder (hidden size 32) sized for ``vocab``.

    ``projection`` gives SDXL's second encoder: a ``CLIPTextModelWithProjection`` (other weights),
    whose projected pooled output conditions the UNet. ``open_clip`` gives SD 2.x's: an
    OpenCLIP-H-style encoder (``OPEN_CLIP_TEXT_CONFIG``, other weights) without its last layer.
    """
    import torch
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(5 if projection else 7 if open_clip else 2)
    shape: dict[str, Any] = {
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "hidden_act": "quick_gelu",
        **(OPEN_CLIP_TEXT_CONFIG if open_clip else {}),
    }
    config = CLIPTextConfig(
        vocab_size=len(vocab),
        max_position_embeddings=MODEL_MAX_LENGTH,
        projection_dim=32,
        bos_token_id=vocab[BOS_TOKEN],
        eos_token_id=vocab[EOS_TOKEN],
        pad_token_id=vocab[EOS_TOKEN],
        **shape,
    )
    return CLIPTextModelWithProjection(config) if projection else CLIPTextModel(config)


def write_demo_tokenizer(dest: Path, *, pad_token: str = EOS_TOKEN) -> dict[str, int]:
    """Write a CLIP byte-level BPE tokenizer (vocab.json, merges.txt, configs) and return its vocab."""
    merges = train_bpe_merges(_TOKENIZER_WORDS.split())
    vocab = clip_vocab(merges)
    dest.mkdir(parents=True, exist_ok=True)
    write_json(dest / "vocab.json", vocab)
    (dest / "merges.txt").write_text(
        "#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges), encoding="utf-8"
    )
    specials = {
        "bos_token": BOS_TOKEN,
        "eos_token": EOS_TOKEN,
        "pad_token": pad_token,
        "unk_token": EOS_TOKEN,
    }
    write_json(dest / "special_tokens_map.json", specials)
    write_json(
        dest / "tokenizer_config.json",
        {
            **specials,
            "tokenizer_class": "CLIPTokenizer",
            "model_max_length": MODEL_MAX_LENGTH,
            "do_lower_case": True,
            "errors": "replace",
            "add_prefix_space": False,
        },
    )
    return vocab


def byte_symbols() -> list[str]:
    """The 256 characters byte-level BPE uses for bytes, in GPT-2/CLIP vocabulary order.

    Printable bytes stand for themselves; the others are shifted past 255 so no symbol is
    whitespace or a control character.
    """
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    shifted = [byte for byte in range(256) if byte not in printable]
    return [chr(byte) for byte in printable] + [chr(256 + i) for i in range(len(shifted))]


def train_bpe_merges(words: Iterable[str]) -> list[tuple[str, str]]:
    """Learn byte-pair merges until every word is one symbol, CLIP style (``</w>`` ends a word).

    Each distinct word counts once, and ties go to the lexicographically largest pair, so the
    merges depend only on the word list.
    """
    # Every corpus word is ASCII, so its characters already are its byte symbols.
    return learn_merges([(*word[:-1], word[-1] + "</w>") for word in sorted(set(words))])


def learn_merges(corpus: list[tuple[str, ...]]) -> list[tuple[str, str]]:
    """Byte-pair merges of ``corpus`` (words as symbol tuples), most frequent pair first, until every
    word is one symbol; ties go to the lexicographically largest pair (CLIP's and GPT-2's demo
    tokenizers differ only in how they spell a word's boundary)."""
    merges: list[tuple[str, str]] = []
    while True:
        pairs = Counter(pair for symbols in corpus for pair in itertools.pairwise(symbols))
        if not pairs:
            return merges
        best = max(pairs.items(), key=lambda item: (item[1], item[0]))[0]
        merges.append(best)
        corpus = [_merge_pair(symbols, best) for symbols in corpus]


def _merge_pair(symbols: tuple[str, ...], pair: tuple[str, str]) -> tuple[str, ...]:
    merged: list[str] = []
    i = 0
    while i < len(symbols):
        if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == pair:
            merged.append(symbols[i] + symbols[i + 1])
            i += 2
        else:
            merged.append(symbols[i])
            i += 1
    return tuple(merged)


def clip_vocab(merges: list[tuple[str, str]]) -> dict[str, int]:
    """CLIP's vocabulary layout: bytes, bytes ending a word, merged symbols, then bos and eos."""
    tokens = byte_symbols()
    tokens += [symbol + "</w>" for symbol in tokens]
    tokens += ["".join(pair) for pair in merges]
    tokens += [BOS_TOKEN, EOS_TOKEN]
    vocab: dict[str, int] = {}
    for token in tokens:
        vocab.setdefault(token, len(vocab))
    return vocab


def merge_extras(path: Path, section: str, entries: list[dict[str, Any]]) -> None:
    """Add or replace ``entries`` (by name) in one section of an extras file, keeping the rest."""
    extras: dict[str, Any] = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    names = {entry["name"] for entry in entries}
    kept = [
        entry
        for entry in extras.get(section, [])
        if not isinstance(entry, dict) or entry.get("name") not in names
    ]
    extras[section] = kept + entries
    write_json(path, extras)


def write_json(path: Path, data: Any) -> None:
    """Write ``data`` as indented JSON, replacing ``path`` atomically so readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(partial, path)
