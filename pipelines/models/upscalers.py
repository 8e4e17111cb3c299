"""Upscaling and face-correction models: convert checkpoints to ONNX and build the demo set.

Real checkpoints (``RealESRGAN_x4plus.pth``, ``BSRGAN.pth``, SwinIR, GFPGAN, CodeFormer) are read
by spandrel, which recognises the architecture and its hyperparameters from the state dict;
:func:`convert_upscaler` exports the module to ONNX (opset 17, TorchScript exporter). The demo
models are the same architectures with small widths and seeded random weights, exported through
that same function, so tests and the embedded stack exercise the path real models take.

Files land where onnx-web looks (contract §5.3, §11.1): ``<models>/upscaling-<name>.onnx`` and
``<models>/correction-<name>.onnx``, listed with labels in ``<models>/extras.json``.

Every exported model takes ``input`` (N, 3, H, W) float RGB in [0, 1] (face models: [-1, 1])
and returns ``output``; face models also take ``weight`` (1,) float, CodeFormer's fidelity.
Its native scale is stored in the ONNX metadata under ``scale``. Models whose graph only works
at the size they were traced at (SwinIR bakes its attention masks, face models their style
resolution) are exported with a fixed H and W, which :mod:`pipelines.imageops.upscale` pads tiles to.
"""

from __future__ import annotations

import logging
import re
import sys
import tempfile
import types
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipelines.models.convert import export_module
from pipelines.models.demo import merge_extras
from pipelines.models.layout import EXTRAS_FILE

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

OPSET = 17
#: Seed of the demo models' random weights, so every build exports the same files.
DEMO_SEED = 20240401
#: The ONNX metadata key holding a model's native scale.
SCALE_KEY = "scale"
#: Tile size the fixed-size upscalers (SwinIR) are traced at: their stage's maximum tile (§10.5).
SWINIR_TILE = 64


def load_spandrel() -> types.ModuleType:
    """Import spandrel (with its extra architectures registered), even where torchvision is absent.

    spandrel imports torchvision at start-up for two architectures we never load (LaMa and
    RestoreFormer), and no CPU build of torchvision is installable here: PyPI's Linux wheels
    need CUDA libraries. Only if torchvision is missing, a placeholder stands in for the duration
    of the import and is removed afterwards, so nothing else ever sees it.
    """
    if "spandrel" in sys.modules:
        return sys.modules["spandrel"]
    try:
        import torchvision  # noqa: F401
    except ModuleNotFoundError:
        placeholders = _torchvision_placeholders()
        sys.modules.update(placeholders)
        try:
            import spandrel
        finally:
            for name in placeholders:
                sys.modules.pop(name, None)
    import spandrel
    import spandrel_extra_arches

    spandrel_extra_arches.install()
    return spandrel


def _torchvision_placeholders() -> dict[str, types.ModuleType]:
    """Just the torchvision names spandrel binds at import time; calling them raises."""

    def unavailable(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("torchvision is not installed: this spandrel architecture cannot run here")

    root = types.ModuleType("torchvision")
    transforms = types.ModuleType("torchvision.transforms")
    functional = types.ModuleType("torchvision.transforms.functional")
    functional.InterpolationMode = types.SimpleNamespace(BILINEAR="bilinear", NEAREST="nearest")  # type: ignore[attr-defined]
    functional.rotate = unavailable  # type: ignore[attr-defined]
    functional.normalize = unavailable  # type: ignore[attr-defined]
    root.transforms = transforms  # type: ignore[attr-defined]
    transforms.functional = functional  # type: ignore[attr-defined]
    return {module.__name__: module for module in (root, transforms, functional)}


class _FaceWrapper:
    """Builds the export wrapper of a face model: fixed noise, and CodeFormer's fidelity as an input."""

    @staticmethod
    def build(model: torch.nn.Module, architecture: str) -> torch.nn.Module:
        import torch

        if architecture == "CodeFormer":
            model.fuse_convs_dict = _size_keyed(model.fuse_convs_dict)

        class FaceModel(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.model = model

            def forward(self, image: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
                if architecture == "CodeFormer":
                    # Traced with weight > 0, so the fusion branch is kept; weight 0 then adds nothing.
                    restored = self.model(image, weight=weight)[0]
                else:
                    # GFPGAN draws fresh style noise per call unless told not to; ONNX must repeat.
                    restored = self.model(image, return_rgb=False, randomize_noise=False)[0]
                # Keeps ``weight`` a graph input for models that ignore it (GFPGAN, CodeFormer
                # without fusion), so every face model has the same signature.
                return restored + weight * 0

        return FaceModel()


def _size_keyed(modules: Any) -> torch.nn.ModuleDict:
    """CodeFormer's fusion blocks (same keys, same weights), found however the tracer spells a size.

    CodeFormer looks them up by ``str(x.shape[-1])``, which the TorchScript tracer turns into
    ``"tensor(32)"``; without this, no CodeFormer, demo or real checkpoint, exports at all.
    """
    import torch

    class SizeKeyed(torch.nn.ModuleDict):
        def __getitem__(self, key: str) -> torch.nn.Module:
            return super().__getitem__(re.sub(r"^tensor\((\d+)\)$", r"\1", key))

    return SizeKeyed(dict(modules.items()))


@dataclass(frozen=True)
class LoadedModel:
    """A checkpoint read by spandrel: the module and what spandrel recognised."""

    module: torch.nn.Module
    architecture: str
    scale: int
    purpose: str


def load_checkpoint(source: Path | Mapping[str, Any]) -> LoadedModel:
    """Read a ``.pth``/``.safetensors`` file or a state dict with spandrel's architecture detection."""
    spandrel = load_spandrel()
    loader = spandrel.ModelLoader(device="cpu")
    descriptor = (
        loader.load_from_file(source) if isinstance(source, Path) else loader.load_from_state_dict(source)
    )
    descriptor.model.eval()
    return LoadedModel(descriptor.model, descriptor.architecture.id, descriptor.scale, descriptor.purpose)


def convert_upscaler(
    source: Path | Mapping[str, Any] | LoadedModel,
    dest: Path,
    *,
    fixed_size: int | None = None,
    opset: int = OPSET,
) -> Path:
    """Export an upscaling or face-correction checkpoint to ``dest`` as ONNX and return ``dest``.

    ``fixed_size`` traces at that square size and keeps H and W fixed; SwinIR and the face
    models need it (see the module docstring), the convolutional upscalers take any size.
    """
    import onnx
    import torch

    dest.parent.mkdir(parents=True, exist_ok=True)
    loaded = source if isinstance(source, LoadedModel) else load_checkpoint(source)
    size = fixed_size or SWINIR_TILE
    image = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(0))
    spatial: dict[int, str] = {} if fixed_size else {2: "height", 3: "width"}
    inputs: dict[str, dict[int, str]] = {"input": spatial}
    if loaded.purpose == "FaceSR":
        module = _FaceWrapper.build(loaded.module, loaded.architecture)
        args: tuple[Any, ...] = (image * 2 - 1, torch.tensor([0.5]))
        inputs["weight"] = {}
    else:
        module, args = loaded.module, (image,)
    outputs = {"output": {} if fixed_size else {2: "out_height", 3: "out_width"}}
    # export_module tidies its folder (it gathers stray tensor files and removes them), so it
    # gets a folder of its own rather than the models folder these files share.
    with tempfile.TemporaryDirectory(dir=dest.parent, prefix=".export-") as folder:
        traced = Path(folder) / "model.onnx"
        export_module(module, args, traced, opset, inputs=inputs, outputs=outputs)
        model = onnx.load(str(traced))
    onnx.helper.set_model_props(model, {SCALE_KEY: str(loaded.scale), "architecture": loaded.architecture})
    onnx.save(model, str(dest))
    return dest


@dataclass(frozen=True)
class DemoUpscaler:
    """One demo model: a small instance of a real architecture and its extras-file entry."""

    #: File name without ``.onnx`` (``upscaling-…`` or ``correction-…``).
    name: str
    label: str
    #: ``resrgan`` | ``swinir`` | ``bsrgan`` (upscaling) or ``gfpgan`` | ``codeformer`` (correction).
    model: str
    scale: int
    build: Callable[[], torch.nn.Module]
    fixed_size: int | None = None

    @property
    def section(self) -> str:
        """The extras-file section listing this model."""
        return "correction" if self.name.startswith("correction-") else "upscaling"

    def entry(self) -> dict[str, Any]:
        """This model's extras-file entry (§11.2)."""
        entry: dict[str, Any] = {
            "name": self.name,
            "label": self.label,
            "source": "demo",
            "model": self.model,
        }
        if self.section == "upscaling":
            entry["scale"] = self.scale
        return entry


def _rrdb() -> torch.nn.Module:
    spandrel = load_spandrel()
    return spandrel.architectures.ESRGAN.ESRGAN(num_filters=8, num_blocks=1, scale=4)


def _compact() -> torch.nn.Module:
    spandrel = load_spandrel()
    return spandrel.architectures.Compact.Compact(num_feat=8, num_conv=2, upscale=4)


def _swinir() -> torch.nn.Module:
    spandrel = load_spandrel()
    return spandrel.architectures.SwinIR.SwinIR(
        img_size=SWINIR_TILE,
        embed_dim=12,
        depths=[1],
        num_heads=[2],
        window_size=8,
        mlp_ratio=2.0,
        upscale=4,
        upsampler="nearest+conv",
        resi_connection="1conv",
    )


#: Face models are built, not loaded: spandrel's loaders assume the full-size hyperparameters.
FACE_SIZE = 64


def _gfpgan() -> torch.nn.Module:
    spandrel = load_spandrel()
    return spandrel.architectures.GFPGAN.GFPGAN(
        out_size=FACE_SIZE, num_style_feat=32, channel_multiplier=1, narrow=0.125, num_mlp=2
    )


#: The demo CodeFormer: VQGAN levels (channel multipliers of ``CODEFORMER_WIDTH``), codebook
#: entries and transformer width. Two downsamplings take a 64 px face to the 16x16 latent of
#: 256 channels that CodeFormer's ``forward`` is written for.
CODEFORMER_LEVELS = [1, 1, 2]
CODEFORMER_WIDTH = 32
CODEFORMER_CODES = 64
CODEFORMER_EMBED = 32


def _codeformer() -> torch.nn.Module:
    """CodeFormer with its real ``forward`` on a 1M-weight network (the real one has 74M).

    spandrel's constructor always builds the 512 px, six-level VQGAN, far too slow for tests on
    a CPU, so the parts are built here instead: the VQGAN at 64 px, a one-layer transformer, and
    feature fusion at 32 and 64 px after the blocks where those resolutions end (encoder) and
    start (generator), as the real model fuses at its resolutions.
    """
    import torch
    from torch import nn

    load_spandrel()
    from spandrel_extra_arches.architectures.CodeFormer.__arch import codeformer as arch

    width, embed = CODEFORMER_WIDTH, CODEFORMER_EMBED
    model = arch.CodeFormer.__new__(arch.CodeFormer)
    arch.VQAutoEncoder.__init__(
        model, FACE_SIZE, width, CODEFORMER_LEVELS, "nearest", 1, [16], CODEFORMER_CODES
    )
    model.connect_list = ["32", "64"]
    model.n_layers, model.dim_embd, model.dim_mlp = 1, embed, embed * 2
    model.position_emb = nn.Parameter(torch.zeros(16 * 16, embed))
    model.feat_emb = nn.Linear(256, embed)
    model.ft_layers = nn.Sequential(arch.TransformerSALayer(embed_dim=embed, nhead=2, dim_mlp=embed * 2))
    model.idx_pred_layer = nn.Sequential(nn.LayerNorm(embed), nn.Linear(embed, CODEFORMER_CODES, bias=False))
    model.channels = {"32": width, "64": width}
    model.fuse_encoder_block = {"64": 1, "32": 3}
    model.fuse_generator_block = {"32": 7, "64": 9}
    model.fuse_convs_dict = nn.ModuleDict(
        {size: arch.Fuse_sft_block(width, width) for size in model.connect_list}
    )
    return model


#: spandrel's architecture ids of the demo face models, which the export wrapper dispatches on.
FACE_ARCHITECTURES = {"gfpgan": "GFPGAN", "codeformer": "CodeFormer"}

DEMO_UPSCALERS: tuple[DemoUpscaler, ...] = (
    DemoUpscaler("upscaling-real-esrgan-x4-plus", "Real ESRGAN x4 Plus (demo)", "resrgan", 4, _rrdb),
    DemoUpscaler("upscaling-real-esrgan-x4-v3", "Real ESRGAN x4 v3 (demo)", "resrgan", 4, _compact),
    DemoUpscaler("upscaling-real-esrgan-x4-v3-wdn", "Real ESRGAN x4 v3 WDN (demo)", "resrgan", 4, _compact),
    DemoUpscaler("upscaling-bsrgan-x4", "BSRGAN x4 (demo)", "bsrgan", 4, _rrdb),
    DemoUpscaler("upscaling-swinir-real-large-x4", "SwinIR x4 (demo)", "swinir", 4, _swinir, SWINIR_TILE),
    DemoUpscaler("correction-gfpgan-v1-3", "GFPGAN v1.3 (demo)", "gfpgan", 1, _gfpgan, FACE_SIZE),
    DemoUpscaler("correction-codeformer", "CodeFormer (demo)", "codeformer", 1, _codeformer, FACE_SIZE),
)


def demo_checkpoint(demo: DemoUpscaler, seed: int = DEMO_SEED) -> dict[str, torch.Tensor]:
    """The demo model's state dict: its architecture with seeded random weights."""
    import torch

    torch.manual_seed(seed + sum(demo.name.encode()))
    module = demo.build()
    # Default initialisations leave some layers at zero (biases, learned noise strengths) or, in
    # deep residual stacks, shrink the signal to nothing; uniform weights scaled by fan-in keep
    # every layer's output in range and every path in the graph exercised.
    with torch.no_grad():
        for parameter in module.parameters():
            fan_in = max(1, parameter[0].numel()) if parameter.dim() > 1 else parameter.numel()
            parameter.uniform_(-1.0, 1.0).mul_(fan_in**-0.5)
    return {key: value.clone() for key, value in module.state_dict().items()}


def demo_module(demo: DemoUpscaler, seed: int = DEMO_SEED) -> LoadedModel:
    """The demo model as spandrel would load it, for building and for comparing against ONNX."""
    state_dict = demo_checkpoint(demo, seed)
    if demo.section == "upscaling":
        return load_checkpoint(state_dict)
    module = demo.build()
    module.load_state_dict(state_dict)
    module.eval()
    return LoadedModel(module, FACE_ARCHITECTURES[demo.model], 1, "FaceSR")


def build_demo_upscalers(
    models_path: Path,
    *,
    force: bool = False,
    progress: Callable[[str], None] | None = None,
) -> list[Path]:
    """Export every demo upscaler and face model into ``models_path`` and list them in extras.json.

    Existing files are kept unless ``force``; entries other builders wrote to the extras file
    stay. Returns the paths of the ONNX files, built or found.
    """
    paths = []
    for demo in DEMO_UPSCALERS:
        dest = models_path / f"{demo.name}.onnx"
        if force or not dest.is_file():
            if progress:
                progress(f"building {demo.name}")
            # Written under another name first, so an interrupted build leaves no half model.
            partial = dest.with_name(dest.name + ".tmp")
            convert_upscaler(demo_module(demo), partial, fixed_size=demo.fixed_size)
            partial.replace(dest)
        paths.append(dest)
    for section in ("upscaling", "correction"):
        entries = [demo.entry() for demo in DEMO_UPSCALERS if demo.section == section]
        merge_extras(models_path / EXTRAS_FILE, section, entries)
    return paths
