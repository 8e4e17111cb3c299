"""A stage type, declared in one place: its name, its parameters, its cost, its limits and its runner.

Every module of ``pipelines/stages/`` ends with one ``STAGE = StageType(...)``, and
``pipelines/stages/__init__.py`` lists them. From that one declaration:

- the api checks a stage's parameters at submit (``StageType.resolve``: ranges, choices, required
  values, declared defaults applied) and answers 400 naming the field and the rule;
- the api computes the job's ``steps.total`` (``StageType.estimate``) and the chain's JSON schema;
- the worker checks the stored parameters again (``StageType.load``: every declared key present, of
  its declared type, nothing defaulted) and calls the runner with them.

The image parameters most stages share (``IMAGE_PARAMS``, contract §3.2) and the upscaling
parameters (``UPSCALE_PARAMS``, §3.3) are resolved by the api's request parser from ``params.json``;
a stage declares that it reads them with ``groups`` and the worker checks they are all there.

This module imports nothing heavy: the api imports every stage declaration.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from PIL import ImageColor

from pipelines.context import StageContext, StageImage

Kind = Literal["int", "number", "bool", "choice", "text", "color"]
Group = Literal["image", "upscale"]

#: onnx-web's named tile sizes (contract §10.4).
TILE_NAMES: Mapping[str, int] = {
    "micro": 64,
    "mini": 128,
    "half": 256,
    "auto": 512,
    "hd1k": 1024,
    "hd2k": 2048,
    "hd4k": 4096,
    "hd8k": 8192,
    "hd16k": 16384,
    "hd32k": 32768,
    "hd64k": 65536,
    "max": 2**32,
}
MAX_TILE = 2**32
DEFAULT_TILE = 512
#: Colour names and codes are short; this bounds the work Pillow's parser does.
MAX_COLOR_TEXT = 64


class ParamError(ValueError):
    """A stage parameter breaks its declared rule; the api answers 400 with ``field`` and ``rule``."""

    def __init__(self, field: str, rule: str) -> None:
        super().__init__(f"{field}: {rule}")
        self.field = field
        self.rule = rule


@dataclass(frozen=True)
class Param:
    """One declared parameter: its type, its range or choices, and its default (if it may be left out)."""

    name: str
    kind: Kind
    low: float = 0
    high: float = 0
    choices: tuple[str, ...] = ()
    default: Any = None
    required: bool = False
    #: Stored as ``None`` when the request leaves it out (optional names: ``negative_prompt``).
    nullable: bool = False

    def check(self, path: str, value: Any) -> Any:
        """``value`` as this parameter's Python type; ``ParamError`` naming ``path`` and the rule
        otherwise."""
        if value is None and self.nullable:
            return None
        if self.kind in ("int", "number"):
            return self._number(path, value)
        if self.kind == "bool":
            if not isinstance(value, bool):
                raise ParamError(path, f"must be true or false, got {value!r}"[:120])
            return value
        if self.kind == "choice":
            if value not in self.choices:
                raise ParamError(path, f"must be one of {', '.join(self.choices)}, got {value!r}"[:200])
            return value
        if not isinstance(value, str):
            raise ParamError(path, f"must be a string, got {type(value).__name__}")
        if self.kind == "text" and self.high and len(value) > self.high:
            raise ParamError(path, f"must be at most {self.high:g} characters")
        if self.kind == "color":
            try:
                if len(value) > MAX_COLOR_TEXT:
                    raise ValueError("too long")
                ImageColor.getrgb(value)
            except ValueError as err:
                raise ParamError(path, f"must be a colour name or #rrggbb, got {value[:40]!r}") from err
        return value

    def _number(self, path: str, value: Any) -> int | float:
        kind = "an integer" if self.kind == "int" else "a number"
        ranged = f" from {_number_text(self.low)} to {_number_text(self.high)}" if self.high else ""
        # The error shows what was sent: 2000 from a query string, not the 2000.0 it was read as.
        shown = repr(value)
        if isinstance(value, str) and len(value) <= 64:
            with contextlib.suppress(ValueError):
                value, shown = float(value), value
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise ParamError(path, f"must be {kind}{ranged}, got {shown}"[:120])
        if (self.high and not self.low <= value <= self.high) or (self.kind == "int" and int(value) != value):
            raise ParamError(path, f"must be {kind}{ranged}, got {shown}"[:120])
        return int(value) if self.kind == "int" else float(value)

    def schema(self) -> dict[str, Any]:
        """This parameter as a JSON-schema fragment (for the chain schema and the settings)."""
        schema: dict[str, Any]
        if self.kind in ("int", "number"):
            schema = {"type": "integer" if self.kind == "int" else "number"}
            if self.high:
                schema.update(minimum=self.low, maximum=self.high)
        elif self.kind == "bool":
            schema = {"type": "boolean"}
        elif self.kind == "choice":
            schema = {"enum": list(self.choices)}
        else:
            schema = {"type": "string"}
            if self.kind == "text" and self.high:
                schema["maxLength"] = int(self.high)
        if self.default is not None:
            schema["default"] = self.default
        return schema


def _number_text(value: float) -> str:
    """A range bound as people write it: ``4294967295``, not ``4.29497e+09``."""
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def integer(name: str, low: int, high: int, default: int | None = None, *, required: bool = False) -> Param:
    """A whole number from ``low`` to ``high``."""
    return Param(name, "int", low, high, default=default, required=required)


def number(
    name: str, low: float, high: float, default: float | None = None, *, required: bool = False
) -> Param:
    """A finite number from ``low`` to ``high``."""
    return Param(name, "number", low, high, default=default, required=required)


def choice(name: str, choices: tuple[str, ...], default: str) -> Param:
    """One of ``choices``."""
    return Param(name, "choice", choices=choices, default=default)


def text(name: str, limit: int, default: str | None = None, *, required: bool = False) -> Param:
    """A string of at most ``limit`` characters."""
    return Param(name, "text", 0, limit, default=default, required=required)


def color(name: str, default: str) -> Param:
    """A colour name or ``#rrggbb`` code."""
    return Param(name, "color", default=default)


#: The image parameters of contract §3.2, as the api resolves them into every stage that reads
#: them: ranges and defaults come from ``params.json`` there; here only their presence and types.
IMAGE_PARAMS: tuple[Param, ...] = (
    Param("model", "text"),
    Param("pipeline", "text"),
    Param("scheduler", "text"),
    Param("prompt", "text"),
    Param("negative_prompt", "text", nullable=True),
    Param("cfg", "number"),
    Param("seed", "int"),
    Param("steps", "int"),
    Param("eta", "number"),
    Param("batch", "int"),
    Param("control", "text"),
    Param("input_prompt", "text"),
    Param("input_negative_prompt", "text", nullable=True),
    Param("loopback", "int"),
    Param("tiled_vae", "bool"),
    Param("unet_overlap", "number"),
    Param("unet_tile", "int"),
    Param("vae_overlap", "number"),
    Param("vae_tile", "int"),
    Param("denoise", "number"),
    Param("thumbnail", "bool"),
    Param("width", "int"),
    Param("height", "int"),
)
#: The upscaling and face-correction parameters of contract §3.3.
UPSCALE_PARAMS: tuple[Param, ...] = (
    Param("upscale_model", "text", nullable=True),
    Param("correction_model", "text", nullable=True),
    Param("denoise", "number"),
    Param("upscale", "bool"),
    Param("faces", "bool"),
    Param("face_outscale", "int"),
    Param("face_strength", "number"),
    Param("outscale", "int"),
    Param("scale", "int"),
    Param("upscale_order", "text"),
    Param("pre_pad", "int"),
    Param("tile_pad", "int"),
)
GROUPS: Mapping[str, tuple[Param, ...]] = {"image": IMAGE_PARAMS, "upscale": UPSCALE_PARAMS}


class StageRunner(Protocol):
    """A stage's ``run``: images in, images out, with the parameters ``StageType.load`` checked."""

    def __call__(
        self, ctx: StageContext, params: dict[str, Any], images: list[StageImage]
    ) -> list[StageImage]: ...


def one_step(params: Mapping[str, Any]) -> int:
    """The cost of a stage that is one unit of work per run."""
    return 1


def diffusion_steps(params: Mapping[str, Any]) -> int:
    """One step per scheduler step."""
    return int(params["steps"])


#: The size of the images a stage produces from the size it receives and its resolved params.
SizeRule = Callable[[tuple[int, int], Mapping[str, Any]], tuple[int, int]]


def same_size(size: tuple[int, int], params: Mapping[str, Any]) -> tuple[int, int]:
    """A stage that keeps (or only shrinks) its images' size."""
    return size


def face_outscaled(size: tuple[int, int], params: Mapping[str, Any]) -> tuple[int, int]:
    """A face correction stage: its images ``face_outscale`` times their size."""
    factor = int(params["face_outscale"])
    return size[0] * factor, size[1] * factor


def size_from_params(size: tuple[int, int], params: Mapping[str, Any]) -> tuple[int, int]:
    """A stage that makes images of its ``width`` x ``height``, whatever it receives."""
    return int(params["width"]), int(params["height"])


@dataclass(frozen=True)
class StageType:
    """One stage type of the chain language (contract §10.5)."""

    name: str
    run: StageRunner
    #: Its own parameters, besides the groups it reads.
    params: tuple[Param, ...] = ()
    #: Shared parameter groups it reads (``image``, ``upscale``).
    groups: tuple[Group, ...] = ()
    #: The largest tile it processes at once, in pixels.
    max_tile: int = MAX_TILE
    #: Whether the executor splits large inputs into tiles for it (stages that tile internally, like
    #: the model upscalers, or need the whole image, like face correction, do not).
    tileable: bool = False
    #: Whether each input becomes ``batch`` images (img2img, inpainting); tiled, the executor runs
    #: one pass per batch image.
    makes_batch: bool = False
    #: Whether it reports its ``steps`` once per input image (a diffusion loop per image), rather
    #: than once for the stage; ``estimate_steps`` follows the images through the chain for it.
    steps_per_image: bool = False
    #: Uploads it reads (``source``, ``mask``), named ``<kind>:<stage name>``.
    needs: tuple[str, ...] = ()
    #: The model it runs, which the request must name (``upscaling`` or ``correction``) unless it
    #: has a ``default_model``.
    model: Literal["upscaling", "correction"] | None = None
    #: The model it loads when the request names none.
    default_model: str | None = None
    #: The steps it adds to the job's ``steps.total``, from its resolved parameters (per tile when tiled).
    steps: Callable[[Mapping[str, Any]], int] = one_step
    #: The size of what it produces, before the chain entry's ``outscale`` (memory and size limits
    #: follow the image through the chain with it; a rule that errs large is safe).
    size: SizeRule = same_size

    def declared(self) -> tuple[Param, ...]:
        """Every parameter it reads: the groups first, then its own (which win on a shared name)."""
        own = {param.name for param in self.params}
        shared = [param for group in self.groups for param in GROUPS[group] if param.name not in own]
        unique = {param.name: param for param in shared}
        return (*unique.values(), *self.params)

    def resolve(self, raw: Mapping[str, Any], path: str = "params") -> dict[str, Any]:
        """The api's check of its own parameters: declared defaults applied, each value checked."""
        values: dict[str, Any] = {}
        for param in self.params:
            value = raw.get(param.name)
            if value is None:
                if param.required:
                    raise ParamError(f"{path}.{param.name}", f"is required by {self.name}")
                if param.default is not None:
                    values[param.name] = param.default
                continue
            values[param.name] = param.check(f"{path}.{param.name}", value)
        return values

    def load(self, stored: Mapping[str, Any]) -> dict[str, Any]:
        """The worker's check of a stored stage: every declared parameter present and of its type.

        Nothing is defaulted here: a missing value means the api stored an incomplete chain, a bug
        that must fail loudly rather than run something the user did not ask for.
        """
        loaded = dict(stored)
        for param in self.declared():
            if param.name not in stored:
                if param.required or param.default is not None or param in GROUPS_MEMBERS:
                    raise ParamError(f"{self.name}.{param.name}", "is missing from the stored chain")
                continue
            loaded[param.name] = param.check(f"{self.name}.{param.name}", stored[param.name])
        return loaded

    def estimate(self, params: Mapping[str, Any]) -> int:
        """The steps one run of this stage adds to the job's ``steps.total``."""
        return self.steps(params)

    def schema(self) -> dict[str, Any]:
        """Its own parameters as JSON-schema properties."""
        return {param.name: param.schema() for param in self.params}


GROUPS_MEMBERS = frozenset(param for group in GROUPS.values() for param in group)


def parse_tiles(value: object) -> int:
    """Read a stage's ``tiles`` option: missing → 512, an int, a numeric string or a size name."""
    if value is None:
        return DEFAULT_TILE
    if isinstance(value, bool):
        raise ValueError("must be a tile size in pixels or one of " + ", ".join(TILE_NAMES))
    if isinstance(value, int):
        tile = value
    elif isinstance(value, float) and value.is_integer():
        tile = int(value)
    elif isinstance(value, str) and value in TILE_NAMES:
        tile = TILE_NAMES[value]
    elif isinstance(value, str) and value.strip().isdigit():
        tile = int(value)
    else:
        raise ValueError("must be a tile size in pixels or one of " + ", ".join(TILE_NAMES))
    if tile < 64:
        raise ValueError(f"must be at least 64 pixels, got {tile}")
    return tile
