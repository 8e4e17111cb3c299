"""Convert a diffusers Stable Diffusion folder to the ONNX layout onnx-web runs.

The layout is diffusers' ``OnnxStableDiffusionPipeline`` folder, with its input and output names::

    <dest>/model_index.json
    <dest>/hash.txt                      first line: short upper-case SHA-256 of the UNet
    <dest>/text_encoder/model.onnx       input_ids -> last_hidden_state, pooler_output,
                                         clip_skip.2 ... clip_skip.N (for ``<clip:skip:k>``)
    <dest>/tokenizer/                    vocab.json, merges.txt, tokenizer_config.json, ...
    <dest>/unet/model.onnx               sample, timestep, encoder_hidden_states -> out_sample
                                         (+ class_labels for UNets with class embeddings,
                                         + timestep_cond for LCM-distilled UNets)
    <dest>/unet/config.json              the diffusers UNet config (input channels, ...)
    <dest>/cnet/model.onnx               (``cnet=True``) the UNet plus ControlNet residual inputs
                                         (``pipelines.models.controlnets``)
    <dest>/vae_encoder/model.onnx        sample -> latent_sample
    <dest>/vae_decoder/model.onnx        latent_sample -> sample
    <dest>/scheduler/scheduler_config.json
    <dest>/low_res_scheduler/scheduler_config.json   (the SD x4 upscaler only)

An SDXL folder (one with ``text_encoder_2``) gets optimum's ``ORTStableDiffusionXLPipeline`` layout
instead: both text encoders return every hidden state (``hidden_states.0`` ... ``hidden_states.N``,
SDXL conditions on the penultimate one), ``text_encoder`` as ``last_hidden_state, pooler_output,
hidden_states.*`` and ``text_encoder_2`` (with projection) as ``text_embeds, last_hidden_state,
hidden_states.*``; ``tokenizer_2/`` is copied; the UNet also takes ``text_embeds`` (the pooled,
projected prompt) and ``time_ids`` (original size, crop origin and target size), one row per batch
item.

Every export goes through ``torch.onnx.export(..., dynamo=False)`` in fp32; the demo models take
this same path, so what the tests exercise is what a real checkpoint gets.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from pipelines.models.layout import EXTERNAL_DATA_FILE, HASH_FILE, ONNX_FILE, hash_component

logger = logging.getLogger(__name__)

DEFAULT_OPSET = 17
TOKENIZER_FILES = ("vocab.json", "merges.txt", "tokenizer_config.json", "special_tokens_map.json")
#: The trace sizes: any latent side divisible by the UNet's down-sampling factor works; small is fast.
TRACE_LATENT_SIDE = 8
TRACE_BATCH = 2
#: ``addition_embed_type`` of an SDXL UNet (and ControlNet): pooled text and size embeddings.
SDXL_EMBED_TYPE = "text_time"
#: Scheduler configs a folder may carry: the denoising one, and the x4 upscaler's image-noising one.
SCHEDULER_FOLDERS = ("scheduler", "low_res_scheduler")
#: diffusers' PyTorch pipeline classes whose ONNX counterpart is not ``OnnxStableDiffusionPipeline``.
ONNX_PIPELINES = {"StableDiffusionUpscalePipeline": "OnnxStableDiffusionUpscalePipeline"}
#: ``none``: the plain fp32 export every provider runs; ``gpu``: fused fp16 for CUDA (``pipelines.gpu``).
OPTIMIZE_CHOICES = ("none", "gpu")
#: The dynamic axes of an image or latent tensor: batch, height and width.
IMAGE_AXES = {0: "batch", 2: "height", 3: "width"}


def convert_diffusers_folder(
    src: Path,
    dest: Path,
    *,
    opset: int = DEFAULT_OPSET,
    progress: Callable[[str], None] | None = None,
    optimize: str = "none",
    workers: int = 1,
    cnet: bool = False,
) -> Path:
    """Export the diffusers folder ``src`` (unet, vae, text_encoder, tokenizer, scheduler) to ``dest``.

    The model is written to a sibling ``.partial`` folder and renamed at the end, so a worker or
    the model list never sees a half-converted model. An existing ``dest`` is replaced.
    ``optimize="gpu"`` exports for ``pipelines.gpu.optimize`` and then fuses and converts each
    component to fp16 (``workers`` components at a time): a folder for CUDA workers only.
    ``cnet`` also exports the UNet that takes ControlNet residuals (``pipelines.models.controlnets``).
    """
    if optimize not in OPTIMIZE_CHOICES:
        raise ValueError(f"optimize must be one of {OPTIMIZE_CHOICES}, not {optimize!r}")
    from pipelines.gpu.optimize import classic_attention, optimize_folder

    prepare = classic_attention if optimize == "gpu" else (lambda module: module)
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel

    report = progress or (lambda line: None)
    partial = dest.with_name(dest.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)

    report(f"{dest.name}: exporting text_encoder (1/4)")
    # SDXL conditions on a hidden state before the last: its encoders return all of them.
    sdxl = (src / "text_encoder_2").is_dir()
    text_encoder = prepare(CLIPTextModel.from_pretrained(src / "text_encoder").eval())
    export_text_encoder(
        text_encoder, partial / "text_encoder" / ONNX_FILE, opset, hidden_states=sdxl, clip_skip=not sdxl
    )
    del text_encoder
    if sdxl:
        from transformers import CLIPTextModelWithProjection

        report(f"{dest.name}: exporting text_encoder_2")
        text_encoder_2 = prepare(CLIPTextModelWithProjection.from_pretrained(src / "text_encoder_2").eval())
        export_text_encoder(text_encoder_2, partial / "text_encoder_2" / ONNX_FILE, opset, hidden_states=True)
        del text_encoder_2
        copy_tokenizer(src / "tokenizer_2", partial / "tokenizer_2")

    report(f"{dest.name}: exporting unet (2/4)")
    unet = prepare(UNet2DConditionModel.from_pretrained(src / "unet").eval())
    export_unet(unet, partial / "unet" / ONNX_FILE, opset)
    # The api reads what kind of UNet a model has (its input channels) here, without ONNX.
    shutil.copyfile(src / "unet" / "config.json", partial / "unet" / "config.json")
    if cnet:
        from pipelines.models.controlnets import cnet_path, export_cnet_unet

        report(f"{dest.name}: exporting the ControlNet UNet (cnet)")
        export_cnet_unet(unet, cnet_path(partial), opset)
    del unet

    vae = prepare(AutoencoderKL.from_pretrained(src / "vae").eval())
    report(f"{dest.name}: exporting vae_encoder (3/4)")
    export_vae_encoder(vae, partial / "vae_encoder" / ONNX_FILE, opset)
    report(f"{dest.name}: exporting vae_decoder (4/4)")
    export_vae_decoder(vae, partial / "vae_decoder" / ONNX_FILE, opset)
    # The runtime reads the latent scaling factor from here; the ONNX graphs do not carry it.
    for component in ("vae_encoder", "vae_decoder"):
        shutil.copyfile(src / "vae" / "config.json", partial / component / "config.json")
    del vae

    copy_tokenizer(src / "tokenizer", partial / "tokenizer")
    for scheduler in SCHEDULER_FOLDERS:
        if (src / scheduler).is_dir():
            (partial / scheduler).mkdir()
            shutil.copyfile(
                src / scheduler / "scheduler_config.json", partial / scheduler / "scheduler_config.json"
            )
    write_model_index(partial, json.loads((src / "model_index.json").read_text()))
    if optimize == "gpu":
        optimize_folder(partial, workers=workers, progress=progress)
    (partial / HASH_FILE).write_text(hash_component(partial / "unet") + "\n")

    shutil.rmtree(dest, ignore_errors=True)
    partial.rename(dest)
    report(f"{dest.name}: done")
    return dest


def export_text_encoder(
    text_encoder: Any, path: Path, opset: int, *, hidden_states: bool = False, clip_skip: bool = False
) -> None:
    """Export a transformers CLIP text encoder: int32 ``input_ids`` (batch, 77) -> hidden states.

    A ``CLIPTextModel`` returns ``last_hidden_state, pooler_output``; a
    ``CLIPTextModelWithProjection`` (SDXL's second encoder) ``text_embeds, last_hidden_state``.
    ``hidden_states`` appends the embeddings and every layer's output (``hidden_states.0`` to
    ``hidden_states.N``), as optimum exports SDXL's encoders. ``clip_skip`` appends
    ``clip_skip.2`` to ``clip_skip.N``: the output ``k`` layers from the end through the encoder's
    final LayerNorm, which ``<clip:skip:k>`` conditions on (``clip_skip.1`` would be
    ``last_hidden_state``), as diffusers' ``clip_skip=k-1`` does.
    """
    import torch

    projected = hasattr(text_encoder, "text_projection")
    layers = text_encoder.config.num_hidden_layers

    class TextEncoder(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = text_encoder

        def forward(self, input_ids: torch.Tensor) -> tuple[torch.Tensor, ...]:
            every = hidden_states or clip_skip
            output = self.model(input_ids=input_ids, output_hidden_states=every, return_dict=True)
            first = (
                (output.text_embeds, output.last_hidden_state)
                if projected
                else (output.last_hidden_state, output.pooler_output)
            )
            skipped: tuple[torch.Tensor, ...] = ()
            if clip_skip:
                # transformers 5 puts the norm on the model itself; 4.x on its ``text_model``.
                norm = getattr(self.model, "text_model", self.model).final_layer_norm
                skipped = tuple(norm(output.hidden_states[-skip]) for skip in range(2, layers + 1))
            return first + (tuple(output.hidden_states) if hidden_states else ()) + skipped

    context = text_encoder.config.max_position_embeddings
    input_ids = torch.zeros((1, context), dtype=torch.int32)
    output_names = (
        ["text_embeds", "last_hidden_state"] if projected else ["last_hidden_state", "pooler_output"]
    )
    if hidden_states:
        output_names += [f"hidden_states.{index}" for index in range(layers + 1)]
    if clip_skip:
        output_names += [f"clip_skip.{skip}" for skip in range(2, layers + 1)]
    export_module(
        TextEncoder(),
        (input_ids,),
        path,
        opset,
        inputs={"input_ids": {0: "batch"}},
        outputs={name: {0: "batch"} for name in output_names},
    )


def export_unet(unet: Any, path: Path, opset: int) -> None:
    """Export a ``UNet2DConditionModel`` with a float timestep per batch item.

    The timestep is float because Karras-style schedulers (euler, heun, lms, ...) step on
    fractional timesteps; the prompt sequence axis is dynamic so long prompts (several 77-token
    windows) can be given. A UNet with class embeddings (the x4 upscaler's noise level) also
    takes int64 ``class_labels``, one per batch item; an SDXL UNet (``addition_embed_type``
    ``text_time``) takes ``text_embeds`` and ``time_ids`` (batch, 6); an LCM-distilled UNet
    (``time_cond_proj_dim``) takes ``timestep_cond`` (batch, time_cond_proj_dim), the embedded
    guidance scale.
    """
    import torch

    class UNet(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = unet

        def forward(
            self,
            sample: torch.Tensor,
            timestep: torch.Tensor,
            encoder_hidden_states: torch.Tensor,
            *extra: torch.Tensor,
        ) -> torch.Tensor:
            named = dict(zip(list(inputs)[3:], extra, strict=True))
            added = {"text_embeds": named["text_embeds"], "time_ids": named["time_ids"]} if sdxl else None
            return self.model(
                sample,
                timestep,
                encoder_hidden_states,
                class_labels=named.get("class_labels"),
                timestep_cond=named.get("timestep_cond"),
                added_cond_kwargs=added,
                return_dict=False,
            )[0]

    config = unet.config
    sdxl = config.addition_embed_type == SDXL_EMBED_TYPE
    side = unet_trace_side(config)
    sample = torch.randn((TRACE_BATCH, config.in_channels, side, side))
    timestep = torch.full((TRACE_BATCH,), 999.0)
    hidden = torch.randn((TRACE_BATCH, 77, config.cross_attention_dim))
    args: tuple[Any, ...] = (sample, timestep, hidden)
    inputs: dict[str, dict[int, str]] = {
        "sample": IMAGE_AXES,
        "timestep": {0: "batch"},
        "encoder_hidden_states": {0: "batch", 1: "sequence"},
    }
    if config.num_class_embeds is not None or config.class_embed_type is not None:
        args += (torch.full((TRACE_BATCH,), 20, dtype=torch.int64),)
        inputs["class_labels"] = {0: "batch"}
    sdxl_args, sdxl_axes = sdxl_trace_inputs(config)
    args += sdxl_args
    inputs.update(sdxl_axes)
    if config.time_cond_proj_dim is not None:
        args += (torch.randn((TRACE_BATCH, config.time_cond_proj_dim)),)
        inputs["timestep_cond"] = {0: "batch"}
    export_module(UNet(), args, path, opset, inputs=inputs, outputs={"out_sample": IMAGE_AXES})


def unet_trace_side(config: Any) -> int:
    """Latent side of a UNet's trace inputs: at least one cell left after every down block."""
    return max(TRACE_LATENT_SIDE, 2 ** (len(config.block_out_channels) - 1))


def sdxl_trace_inputs(config: Any) -> tuple[tuple[Any, ...], dict[str, dict[int, str]]]:
    """Trace values and axes of an SDXL UNet's ``text_embeds`` and ``time_ids``; none for SD 1.x/2.x."""
    import torch

    if config.addition_embed_type != SDXL_EMBED_TYPE:
        return (), {}
    # The pooled text embedding fills what the size embeddings leave of the projection's input.
    pooled = config.projection_class_embeddings_input_dim - 6 * config.addition_time_embed_dim
    values = (torch.randn((TRACE_BATCH, pooled)), torch.full((TRACE_BATCH, 6), 64.0))
    return values, {"text_embeds": {0: "batch"}, "time_ids": {0: "batch"}}


def export_vae_encoder(vae: Any, path: Path, opset: int) -> None:
    """Export the VAE encoder, returning the mode of the latent distribution (unscaled).

    diffusers' own converter samples the distribution inside the graph, which draws from ONNX
    Runtime's unseeded generator; the mode keeps img2img reproducible for a given seed.
    """
    import torch

    side = TRACE_LATENT_SIDE * 2 ** (len(vae.config.block_out_channels) - 1)
    export_vae_part(
        vae,
        lambda model, sample: model.encode(sample, return_dict=False)[0].mode(),
        torch.randn((1, vae.config.in_channels, side, side)),
        path,
        opset,
        names=("sample", "latent_sample"),
    )


def export_vae_decoder(vae: Any, path: Path, opset: int) -> None:
    """Export the VAE decoder: unscaled latents -> image in [-1, 1]."""
    import torch

    export_vae_part(
        vae,
        lambda model, latent_sample: model.decode(latent_sample, return_dict=False)[0],
        torch.randn((1, vae.config.latent_channels, TRACE_LATENT_SIDE, TRACE_LATENT_SIDE)),
        path,
        opset,
        names=("latent_sample", "sample"),
    )


def export_vae_part(
    vae: Any,
    forward: Callable[[Any, Any], Any],
    example: Any,
    path: Path,
    opset: int,
    *,
    names: tuple[str, str],
) -> None:
    """Export ``forward(vae, tensor)``, image-shaped tensor to tensor, as graph ``names[0] -> names[1]``."""
    import torch

    class VaePart(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            # A submodule, so the VAE's weights export as the graph's initializers.
            self.model = vae

        def forward(self, tensor: torch.Tensor) -> torch.Tensor:
            return forward(self.model, tensor)

    source, target = names
    export_module(
        VaePart(), (example,), path, opset, inputs={source: IMAGE_AXES}, outputs={target: IMAGE_AXES}
    )


def export_module(
    module: Any,
    args: tuple[Any, ...],
    path: Path,
    opset: int,
    *,
    inputs: Mapping[str, Mapping[int, str]],
    outputs: Mapping[str, Mapping[int, str]],
) -> None:
    """Trace ``module`` to ``path`` with the TorchScript exporter, keeping big weights in one file.

    ``inputs`` and ``outputs`` name the graph's tensors in order, each with its dynamic axes
    (``{}`` for none).
    """
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    with torch.no_grad():
        torch.onnx.export(
            module,
            args,
            str(path),
            input_names=list(inputs),
            output_names=list(outputs),
            dynamic_axes={name: dict(axes) for name, axes in {**inputs, **outputs}.items() if axes},
            opset_version=opset,
            do_constant_folding=True,
            dynamo=False,
        )
    gather_external_data(path)


def gather_external_data(path: Path) -> None:
    """Move the one-file-per-tensor external data of a >2 GB export into a single file.

    The exporter writes every tensor of a model over protobuf's limit (a full-size fp32 UNet) as
    its own file next to the graph; one ``weights.pb`` is what onnx-web's converter writes and
    is far easier to copy around.
    """
    import onnx

    strays = [item for item in path.parent.iterdir() if item.name != path.name]
    if not strays:
        return
    model = onnx.load(str(path), load_external_data=True)
    for item in strays:
        item.unlink()
    onnx.save_model(
        model,
        str(path),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location=EXTERNAL_DATA_FILE,
    )


def copy_tokenizer(src: Path, dest: Path) -> None:
    """Copy the slow-tokenizer files of a CLIP tokenizer (vocab and merges are required)."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in TOKENIZER_FILES:
        if (src / name).is_file():
            shutil.copyfile(src / name, dest / name)
        elif name in ("vocab.json", "merges.txt"):
            raise FileNotFoundError(f"tokenizer file missing: {src / name}")


def write_model_index(dest: Path, source_index: dict[str, Any]) -> None:
    """Write the ``model_index.json`` of diffusers' ONNX pipeline for the source folder's pipeline.

    The x4 upscaler's index also names its ``low_res_scheduler`` and keeps ``max_noise_level``,
    which the runtime reads. An SDXL index keeps the source's class name (diffusers has no ONNX
    SDXL pipeline; optimum does the same), names the second encoder and tokenizer, and keeps
    ``force_zeros_for_empty_prompt``.
    """
    import diffusers

    config = json.loads((dest / "scheduler" / "scheduler_config.json").read_text())
    onnx_model = ["diffusers", "OnnxRuntimeModel"]
    pipeline = ONNX_PIPELINES.get(source_index.get("_class_name", ""), "OnnxStableDiffusionPipeline")
    index: dict[str, Any] = {
        "_class_name": pipeline,
        "_diffusers_version": diffusers.__version__,
        "feature_extractor": [None, None],
        "requires_safety_checker": False,
        "safety_checker": [None, None],
        "scheduler": ["diffusers", config.get("_class_name", "PNDMScheduler")],
        "text_encoder": onnx_model,
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "unet": onnx_model,
        "vae_decoder": onnx_model,
        "vae_encoder": onnx_model,
    }
    if (dest / "low_res_scheduler").is_dir():
        low_res = json.loads((dest / "low_res_scheduler" / "scheduler_config.json").read_text())
        index["low_res_scheduler"] = ["diffusers", low_res.get("_class_name", "DDPMScheduler")]
    if "max_noise_level" in source_index:
        index["max_noise_level"] = source_index["max_noise_level"]
    if (dest / "text_encoder_2").is_dir():
        index.update(
            _class_name=source_index.get("_class_name", "StableDiffusionXLPipeline"),
            force_zeros_for_empty_prompt=source_index.get("force_zeros_for_empty_prompt", True),
            text_encoder_2=onnx_model,
            tokenizer_2=["transformers", "CLIPTokenizer"],
        )
    (dest / "model_index.json").write_text(json.dumps(index, indent=2) + "\n")
