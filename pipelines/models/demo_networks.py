"""Random-weight networks for the demo SD 1.5 model: a kohya LoRA and a textual inversion.

``make run`` builds them next to the demo models (``models/lora``, ``models/inversion``), so the
networks list of ``/api/settings/models`` and both GUIs' network pickers have something to offer,
and ``<lora:demo-detail:0.8>`` or ``<inversion:demo-style:1>`` work on the demo model. The tests
make their own networks for the demo model's modules with the same functions.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

#: The LoRA's rank and alpha (the deltas are scaled by alpha / rank, as kohya's are).
RANK = 4
ALPHA = 2.0
#: UNet modules a kohya LoRA trains: attention and feed-forward Linears, projections (1x1 conv in
#: SD 1.x) and the resnets' 3x3 convolutions.
UNET_MODULES = ("to_q", "to_k", "to_v", "to_out.0", "ff.net.0.proj", "ff.net.2", "proj_in", "proj_out")
UNET_CONVS = ("conv1", "conv2")
#: Text encoder modules: CLIP's attention projections and MLP.
TEXT_MODULES = ("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2")
DEMO_LORA = "demo-detail"
DEMO_INVERSION = "demo-style"
#: Vectors of the demo inversion: its tokens are ``demo-style``, ``demo-style-0`` … ``-2`` and ``-all``.
DEMO_INVERSION_VECTORS = 3


def trained_modules(parts: dict[str, Any]) -> Iterable[tuple[str, str, Any]]:
    """``(kohya name, component, module)`` of the modules a LoRA trains (SDXL: both encoders).

    ``parts`` are a model's diffusers modules (``pipelines.models.demo.torch_parts``).
    """
    for name, module in parts["unet"].named_modules():
        leaf = name.rsplit(".", 2)
        if name.endswith(UNET_MODULES) or ("resnets" in name and leaf[-1] in UNET_CONVS):
            yield "lora_unet_" + name.replace(".", "_"), "unet", module
    encoders = {"text_encoder": "lora_te_"}
    if "text_encoder_2" in parts:
        encoders = {"text_encoder": "lora_te1_", "text_encoder_2": "lora_te2_"}
    for component, prefix in encoders.items():
        for name, module in parts[component].named_modules():
            if name.endswith(TEXT_MODULES):
                # kohya names CLIP's modules from ``text_model`` down, whatever transformers calls them.
                yield (
                    f"{prefix}text_model_" + name.removeprefix("text_model.").replace(".", "_"),
                    component,
                    module,
                )


def random_lora(parts: dict[str, Any], seed: int = 0, scale: float = 0.3) -> dict[str, Any]:
    """A kohya LoRA of rank ``RANK`` for every trained module; conv layers keep their kernel in ``down``."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    tensors = {}
    for key, _, module in trained_modules(parts):
        weight = module.get_parameter("weight")
        kernel = tuple(weight.shape[2:])
        down_shape = (RANK, weight.shape[1], *kernel)
        up_shape = (weight.shape[0], RANK, *((1, 1) if kernel else ()))
        tensors[f"{key}.lora_down.weight"] = torch.randn(down_shape, generator=generator) * scale
        tensors[f"{key}.lora_up.weight"] = torch.randn(up_shape, generator=generator) * scale
        tensors[f"{key}.alpha"] = torch.tensor(ALPHA)
    return tensors


def random_inversion(parts: dict[str, Any], vectors: int, seed: int = 0) -> dict[str, Any]:
    """A multi-vector embedding (``emb_params``, as A1111 and Civitai files hold it) for the encoder."""
    import torch

    width = parts["text_encoder"].get_input_embeddings().weight.shape[1]
    generator = torch.Generator().manual_seed(seed)
    return {"emb_params": torch.randn((vectors, width), generator=generator) * 0.02}


def build_demo_networks(
    models_path: Path, model: str, *, progress: Callable[[str], None] | None = None
) -> list[Path]:
    """Write the demo LoRA and inversion for demo model ``model`` unless they exist; their paths.

    ``progress`` is told of each network built (nothing when both exist).
    """
    from safetensors.torch import save_file

    from pipelines.models.demo import torch_parts

    lora = models_path / "lora" / f"{DEMO_LORA}.safetensors"
    inversion = models_path / "inversion" / f"{DEMO_INVERSION}.safetensors"
    missing = [path for path in (lora, inversion) if not path.is_file()]
    if missing:
        parts = torch_parts(models_path, model)
        for path in missing:
            if progress is not None:
                progress(f"{path.parent.name}/{path.stem}: building a random-weight network for {model}")
            path.parent.mkdir(parents=True, exist_ok=True)
            tensors = random_lora(parts) if path == lora else random_inversion(parts, DEMO_INVERSION_VECTORS)
            # Written beside and renamed: a folder never lists a half-written network.
            partial = path.with_suffix(".tmp")
            save_file({key: value.contiguous() for key, value in tensors.items()}, str(partial))
            partial.replace(path)
    return [lora, inversion]
