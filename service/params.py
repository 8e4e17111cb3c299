"""Parse one image request into typed, validated parameters (contract §3, with our own rules).

Where the values come from (``request_data``, contract §3.1): a JSON body; else the multipart
field ``json`` (JSON, or YAML when it is not JSON); else, and whenever that object is empty, the
query string. From that object ``D`` each group is read from ``D.<group>`` or from ``D`` itself:
``device`` and ``params`` when the key is present, ``border``, ``upscale``, ``highres`` and
``experimental`` when the key holds an object. So nested (GUI), flat JSON and query-string layouts
all work, and may be mixed.

Unlike onnx-web, bad values are rejected with ``InvalidParams(field, rule)`` (HTTP 400), never
clamped or swapped for another value and never a 500:

- integers: JSON integers, integral numbers (``7.0``) and numeric strings (``"30"``, ``"25.00"``);
  floats: numbers and numeric strings, finite only; booleans: JSON booleans or one of
  ``1 t true y yes 0 f false n no`` (any case). ``null`` is not a number or a boolean.
- ranges and defaults come from ``params.json`` (``load_params_doc``); width and height must also
  be multiples of 8 and their product at most ``Config.max_image_pixels``.
- names (scheduler, pipeline, filters, noise, tile order, models, …) must be ones that exist. A
  missing, ``null`` or ``""`` name takes the ``params.json`` default, not the first name of the list
  (contract §14 item 2); ``pipeline`` then means the route's own pipeline.
- the GUI's nested ``upscale.enabled`` is read as ``upscale.upscale``, and the upscaling and
  correction model names fall back to the ``params`` group (contract §14 item 1).
"""

from __future__ import annotations

import json
import math
import random
import re
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal, TypeGuard, TypeVar

from PIL import ImageColor

from pipelines.diffusion.schedulers import SCHEDULER_ALIASES, SCHEDULER_NAMES
from pipelines.diffusion.wildcards import expand_wildcards
from pipelines.imageops.filters import FILTERS_AVAILABLE, runnable_filters
from pipelines.imageops.masks import MASK_FILTERS as MASK_FILTER_FUNCTIONS
from pipelines.imageops.noise import NOISE_SOURCES as NOISE_SOURCE_FUNCTIONS
from pipelines.imageops.tiling import TILE_ORDERS_AVAILABLE
from pipelines.models.registry import ModelKind, ModelRegistry
from pipelines.stages.shared import MAX_SEED
from service.config import Config
from service.errors import ConfigError, InvalidParams

Route = Literal["txt2img", "img2img", "inpaint", "upscale", "blend", "txt2txt"]

#: The pipeline a route runs when the request names none. blend and txt2txt run no diffusion
#: pipeline; ``txt2img`` is what onnx-web uses for chain stages in the same position.
ROUTE_PIPELINES: dict[str, str] = {
    "txt2img": "txt2img",
    "img2img": "img2img",
    "inpaint": "inpaint",
    "upscale": "upscale",
    "blend": "txt2img",
    "txt2txt": "txt2img",
}
#: Routes whose prompts get wildcards expanded (contract §9.2: not blend, not txt2txt).
WILDCARD_ROUTES = frozenset({"txt2img", "img2img", "inpaint", "upscale"})
#: Routes that read the highres group (contract §3.3: every legacy route but blend).
HIGHRES_ROUTES = frozenset(ROUTE_PIPELINES) - {"blend"}

#: Contract §5.5, in onnx-web's order.
PIPELINES = (
    "controlnet",
    "img2img",
    "img2img-sdxl",
    "inpaint",
    "lpw",
    "panorama",
    "panorama-sdxl",
    "pix2pix",
    "txt2img-sdxl",
    "txt2img",
    "upscale",
)
#: What each image route runs, by pipeline name; a known pipeline outside its route's list is a 400
#: at submit, never run as something else. (The upscale, blend and txt2txt routes use no pipeline.)
ROUTE_PIPELINE_CHOICES: dict[str, tuple[str, ...]] = {
    "txt2img": ("txt2img", "lpw", "panorama", "txt2img-sdxl", "panorama-sdxl"),
    "img2img": ("img2img", "lpw", "img2img-sdxl", "controlnet", "pix2pix", "panorama", "panorama-sdxl"),
    "inpaint": ("inpaint", "lpw", "panorama", "panorama-sdxl"),
}
#: Pipelines a route takes under another name, as onnx-web maps them (contract §8.6); the job
#: records the name it runs.
ROUTE_PIPELINE_ALIASES: dict[str, dict[str, str]] = {"img2img": {"txt2img-sdxl": "img2img-sdxl"}}
#: Pipelines onnx-web accepts on a route that this server does not run there, and why.
ROUTE_PIPELINES_NOT_RUN: dict[str, dict[str, str]] = {
    "inpaint": {
        "controlnet": "ControlNet inpainting is not run by this server",
    },
}
#: onnx-web's pipelines this server does not run yet: refused at submit, not offered in settings.
#: (None now: every pipeline of contract §5.5 runs here.)
PIPELINES_NOT_RUN: tuple[str, ...] = ()
#: ``/api/settings/pipelines``: the pipelines that run here, in onnx-web's order.
AVAILABLE_PIPELINES = tuple(name for name in PIPELINES if name not in PIPELINES_NOT_RUN)
NOISE_SOURCES = tuple(NOISE_SOURCE_FUNCTIONS)
MASK_FILTERS = tuple(MASK_FILTER_FUNCTIONS)
#: The source filters that need no model; the model-based ones (depth, hed, openpose, …) are added
#: by ``source_filters`` where their annotator model is installed, and refused at submit elsewhere.
SOURCE_FILTERS = FILTERS_AVAILABLE
PROMPT_FILTERS = (
    "AUTOMATIC/promptgen-lexart",
    "AUTOMATIC/promptgen-majinai-safe",
    "AUTOMATIC/promptgen-majinai-unsafe",
    "Gustavosta/MagicPrompt-Stable-Diffusion",
)
HIGHRES_METHODS = ("bilinear", "lanczos", "upscale")
#: onnx-web also accepts ``kernel`` but never implemented it.
TILE_ORDERS = TILE_ORDERS_AVAILABLE
UPSCALE_ORDERS = ("correction-both", "correction-first", "correction-last")
#: Device names onnx-web knows (contract §5.6); ``any`` means no preference.
PLATFORMS = ("any", "cpu", "cuda", "directml", "rocm", "tensorrt")

MAX_PROMPT_LENGTH = 20_000
SIZE_MULTIPLE = 8  # the VAE works on 8x8 pixel blocks
RANDOM_SEED = -1
RANDOM_SEED_LIMIT = 2**31 - 1  # onnx-web draws random seeds from [0, 2^31 - 1)
#: The upscale object carries these two fixed values into metadata (contract §3.3).
PRE_PAD = 0
TILE_PAD = 10
#: onnx-web's internal ``denoise`` field of the image params, recorded in metadata (contract §7.3).
IMAGE_DENOISE = 3
TRUE_WORDS = frozenset({"1", "t", "true", "y", "yes"})
FALSE_WORDS = frozenset({"0", "f", "false", "n", "no"})
BUILTIN_PARAMS = Path(__file__).parent / "data" / "params.json"
PARAMS_FILE = "params.json"
_INTEGER_TEXT = re.compile(r"[+-]?[0-9]+")
# Unambiguous (no two ways to split the digits), so matching stays linear on long input.
_NUMBER_TEXT = re.compile(r"[+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][+-]?[0-9]+)?")
#: Longer text is not a number anyone means; refusing it early bounds the work done on it.
_MAX_NUMBER_TEXT = 64
#: Colour names and codes are short; this bounds the work Pillow's parser does.
_MAX_COLOR_TEXT = 64
_SHOWN_CHARACTERS = 40

T = TypeVar("T")


class _AsDict:
    """``to_dict`` for dataclasses whose field names already are the metadata keys."""

    def to_dict(self) -> dict[str, Any]:
        """The snake_case metadata form (contract §7.3)."""
        return asdict(self)  # type: ignore[call-overload]


@dataclass(frozen=True)
class DeviceParams(_AsDict):
    """Where the job should run."""

    #: A platform name (``cpu``, ``cuda``, …) or ``None`` for any worker.
    platform: str | None = None


@dataclass(frozen=True)
class ImageParams:
    """The image parameter set of every image route (contract §3.2)."""

    #: The model's path below the models folder: ``stable-diffusion-x`` or ``diffusion/x``.
    model: str
    pipeline: str
    scheduler: str
    #: The prompt after wildcard expansion.
    prompt: str
    negative_prompt: str | None
    batch: int
    cfg: float
    eta: float
    loopback: int
    steps: int
    #: The resolved seed (never -1).
    seed: int
    tiled_vae: bool
    thumbnail: bool
    unet_tile: int
    unet_overlap: float
    vae_tile: int
    vae_overlap: float
    #: A ControlNet name, or ``None``.
    control: str | None
    width: int
    height: int
    #: The prompt as received, before wildcard expansion.
    input_prompt: str
    input_negative_prompt: str | None

    def to_dict(self) -> dict[str, Any]:
        """The ``params`` object of the metadata (contract §7.3); the size is recorded apart.

        NOTE(params): ``model`` is the path below the models folder. For models at the top of the
        folder, onnx-web's layout, that is the basename §7.3 records; a model from ``diffusion/``
        keeps its prefix, because stages load the model named in these params.
        """
        return {
            "model": self.model,
            "pipeline": self.pipeline,
            "scheduler": self.scheduler,
            "prompt": self.prompt,
            "negative_prompt": self.negative_prompt,
            "cfg": self.cfg,
            "seed": self.seed,
            "steps": self.steps,
            "eta": self.eta,
            "batch": self.batch,
            "control": self.control or "",
            "input_prompt": self.input_prompt,
            "input_negative_prompt": self.input_negative_prompt,
            "loopback": self.loopback,
            "tiled_vae": self.tiled_vae,
            "unet_overlap": self.unet_overlap,
            "unet_tile": self.unet_tile,
            "vae_overlap": self.vae_overlap,
            "vae_tile": self.vae_tile,
            "denoise": IMAGE_DENOISE,
            "thumbnail": self.thumbnail,
        }


@dataclass(frozen=True)
class Border(_AsDict):
    """Outpainting borders in pixels."""

    left: int = 0
    right: int = 0
    top: int = 0
    bottom: int = 0


@dataclass(frozen=True)
class UpscaleParams(_AsDict):
    """Upscaling and face correction (contract §3.3)."""

    #: The upscaling model's path below the models folder, or ``None``.
    upscale_model: str | None
    #: The correction model's path below the models folder, or ``None``.
    correction_model: str | None
    denoise: float
    #: Run the upscaling model.
    upscale: bool
    #: Run the correction model.
    faces: bool
    face_outscale: int
    face_strength: float
    outscale: int
    scale: int
    upscale_order: str
    pre_pad: int = PRE_PAD
    tile_pad: int = TILE_PAD


@dataclass(frozen=True)
class HighresParams(_AsDict):
    """The highres fix: repeated upscale + img2img passes."""

    enabled: bool
    iterations: int
    method: str
    scale: int
    #: The steps of each highres img2img pass. onnx-web parses it and runs the main ``steps``
    #: (contract §3.3); here it is honoured, as its docs and GUI describe it (README's differences).
    steps: int
    strength: float


@dataclass(frozen=True)
class LatentSymmetryParams(_AsDict):
    """Experimental latent mirroring; parsed and recorded, not used (contract §3.3)."""

    enabled: bool
    gradient_start: float
    gradient_end: float
    line_of_symmetry: float


@dataclass(frozen=True)
class PromptEditingParams(_AsDict):
    """Extend the prompt with a text-generation model (txt2img with feature flag ``prompt-filter``)."""

    enabled: bool
    #: A prompt filter model id, or ``none``.
    filter: str
    #: A regular expression removed from the generated prompt.
    remove_tokens: str
    add_suffix: str
    min_length: int


@dataclass(frozen=True)
class ExperimentalParams(_AsDict):
    """The GUI's experimental options."""

    latent_symmetry: LatentSymmetryParams
    prompt_editing: PromptEditingParams


@dataclass(frozen=True)
class Img2ImgParams(_AsDict):
    """The img2img route's own parameters."""

    strength: float
    source_filter: str


@dataclass(frozen=True)
class InpaintParams(_AsDict):
    """The inpaint route's own parameters."""

    fill_color: str
    mask_filter: str
    noise_source: str
    tile_order: str
    fullres_inpaint: bool
    fullres_inpaint_padding: float


@dataclass(frozen=True)
class ParsedRequest:
    """Every parameter group of one image request."""

    route: Route
    device: DeviceParams
    image: ImageParams
    border: Border
    upscale: UpscaleParams
    #: ``None`` for blend, which has no highres pass.
    highres: HighresParams | None
    experimental: ExperimentalParams
    #: Only for the img2img route.
    img2img: Img2ImgParams | None = None
    #: Only for the inpaint route.
    inpaint: InpaintParams | None = None


def load_params_doc(config: Config) -> dict[str, Any]:
    """The ``params.json`` document to serve and to take defaults and ranges from.

    ``Config.params_path`` (onnx-web's ``ONNX_WEB_PARAMS_PATH``) may name the file or, as in
    onnx-web, the folder holding ``params.json``; its entries replace the built-in ones, and the
    built-in ones fill any gaps, so every entry the parser reads exists. ``Config.default_platform``
    replaces ``platform.default``.

    Raises:
        ConfigError: the file cannot be read, or an entry's default is outside its range.
    """
    builtin = json.loads(BUILTIN_PARAMS.read_text(encoding="utf-8"))
    doc = dict(builtin)
    if config.params_path is not None:
        path = config.params_path / PARAMS_FILE if config.params_path.is_dir() else config.params_path
        try:
            override = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as err:
            raise ConfigError(f"cannot read {path}: {err}") from err
        if not isinstance(override, dict):
            raise ConfigError(f"{path} must hold a JSON object")
        doc.update(override)
    _check_entries(builtin, doc)
    if config.default_platform:
        doc["platform"] = {**doc["platform"], "default": config.default_platform}
    return doc


def _check_entries(builtin: Mapping[str, Any], doc: Mapping[str, Any], prefix: str = "") -> None:
    """Refuse a document whose entries lack the shape the parser reads, or whose defaults are invalid.

    Every object entry of the built-in document must stay an object, and every ranged entry must keep
    numeric ``min``, ``max`` and ``default`` with the default inside the range: a missing value must
    be a valid one.
    """
    for key, expected in builtin.items():
        entry = doc.get(key)
        if not isinstance(expected, dict):
            continue
        if not isinstance(entry, dict):
            raise ConfigError(f"params.json {prefix}{key}: must be an object")
        if "min" in expected:
            low, high, default = (entry.get(name) for name in ("min", "max", "default"))
            if not (_is_number(low) and _is_number(high) and _is_number(default) and low <= default <= high):
                raise ConfigError(f"params.json {prefix}{key}: needs numbers min <= default <= max")
        else:
            _check_entries(expected, entry, f"{prefix}{key}.")


def request_data(document: Any, query: Mapping[str, Any], field: str = "body") -> dict[str, Any]:
    """The request data object ``D`` (contract §3.1).

    Args:
        document: the parsed JSON body, or the parsed multipart ``json`` field; ``None`` for neither.
        query: the query-string parameters; of a repeated name the first value counts, as in Flask.
        field: what ``document`` was, for the error when it is not an object (``body`` or ``json``).
    """
    if not document:
        return {key: value[0] if isinstance(value, list) else value for key, value in query.items()}
    if not isinstance(document, dict):
        raise InvalidParams(field, "must be an object")
    return document


def parse_request(
    route: Route,
    data: Mapping[str, Any],
    *,
    params_doc: Mapping[str, Any],
    registry: ModelRegistry,
    config: Config,
    rng: random.Random,
) -> ParsedRequest:
    """Parse and check every group of one image request.

    Args:
        route: the image route, which picks the default pipeline and the route's own group.
        data: the request data object from ``request_data``.
        params_doc: the document from ``load_params_doc``.
        registry: the models that exist.
        config: for ``max_image_pixels`` and ``block_platforms``.
        rng: draws the seed when the request asks for a random one.

    Raises:
        InvalidParams: a value breaks a rule; the error names the field and the rule.
    """
    if route not in ROUTE_PIPELINES:
        raise ValueError(f"not an image route: {route}")
    params_group = _nested(data, "params", present=True)
    upscale_group = _nested(data, "upscale")
    image = parse_image(route, _Reader(params_group, params_doc), registry, config, rng)
    upscale = parse_upscale(
        _Reader(upscale_group, params_doc),
        params_group,
        nested=upscale_group is not data,
        registry=registry,
    )
    # Every known group is checked on every route, used there or not: onnx-web's GUI sends them
    # all, and a value out of range is a mistake wherever it is sent (``strength=1e9`` to txt2img).
    highres: HighresParams | None = parse_highres(_Reader(_nested(data, "highres"), params_doc))
    img2img = parse_img2img(_Reader(params_group, params_doc), registry)
    inpaint = parse_inpaint(_Reader(params_group, params_doc))
    if route not in HIGHRES_ROUTES:
        highres = None
    if (
        highres is not None
        and highres.enabled
        and highres.method == "upscale"
        and upscale.upscale_model is None
    ):
        raise InvalidParams("upscaling", _needs_model("highres method upscale", registry, "upscaling"))
    return ParsedRequest(
        route=route,
        device=parse_device(_nested(data, "device", present=True), config),
        image=image,
        border=parse_border(_Reader(_nested(data, "border"), params_doc)),
        upscale=upscale,
        highres=highres,
        experimental=parse_experimental(_nested(data, "experimental"), params_doc),
        img2img=img2img if route == "img2img" else None,
        inpaint=inpaint if route == "inpaint" else None,
    )


def _nested(data: Mapping[str, Any], key: str, *, present: bool = False) -> Mapping[str, Any]:
    """The group ``data[key]`` or, when the request is flat, ``data`` itself (contract §3.1).

    With ``present`` the key's presence decides (``device``, ``params``), and a present value that is
    not an object is refused; otherwise only an object counts (``upscale: true`` is a flat switch).
    """
    value = data.get(key)
    if isinstance(value, dict):
        return value
    if present and key in data:
        raise InvalidParams(key, "must be an object")
    return data


def parse_device(group: Mapping[str, Any], config: Config) -> DeviceParams:
    """The ``platform`` the job asks for; missing, empty or ``any`` means any worker."""
    platform = _name(group, "platform")
    if platform is None or platform == "any":
        return DeviceParams()
    allowed = [name for name in PLATFORMS if name not in config.block_platforms]
    if platform not in allowed:
        raise InvalidParams("platform", _one_of(allowed, platform))
    return DeviceParams(platform)


def _check_pipeline_runs(pipeline: str) -> None:
    """Refuse a pipeline this server does not run, naming the ones it does."""
    if pipeline in PIPELINES_NOT_RUN:
        raise InvalidParams(
            "pipeline",
            f"{pipeline} is not run by this server; available: {_listing(AVAILABLE_PIPELINES)}",
        )


def check_route_pipeline(route: str, pipeline: str) -> None:
    """Refuse a pipeline another legacy route runs (pix2pix sent to inpaint, ...).

    Chain stages are not checked here: a stage's type, not a route, says what it runs.
    """
    choices = ROUTE_PIPELINE_CHOICES.get(route)
    if choices is None or pipeline in choices:
        return
    reason = ROUTE_PIPELINES_NOT_RUN.get(route, {}).get(pipeline, f"{pipeline} does not run on {route}")
    raise InvalidParams("pipeline", f"{reason}; {route} runs: {_listing(choices)}")


def parse_image(
    route: Route, reader: _Reader, registry: ModelRegistry, config: Config, rng: random.Random
) -> ImageParams:
    """The image parameter set (contract §3.2), with the seed resolved and wildcards expanded."""
    model_name = _name(reader.values, "model") or reader.default("model")
    model = registry.find_model("diffusion", model_name)
    if model is None:
        raise InvalidParams(
            "model",
            f"no diffusion model {_show(model_name)}; available: {_listing(registry.names('diffusion'))}",
        )
    pipeline = reader.choice(
        "pipeline", PIPELINES, default=ROUTE_PIPELINES[route], aliases=ROUTE_PIPELINE_ALIASES.get(route, {})
    )
    _check_pipeline_runs(pipeline)
    control = _name(reader.values, "control") or reader.default("control") or None
    if control is not None and registry.find_network("control", control) is None:
        names = [network.name for network in registry.networks("control")]
        raise InvalidParams("control", f"no ControlNet {_show(control)}; available: {_listing(names)}")
    width, height = reader.size("width"), reader.size("height")
    if width * height > config.max_image_pixels:
        raise InvalidParams(
            "width/height",
            (
                f"must be at most {config.max_image_pixels} pixels together, "
                f"got {width}x{height} = {width * height}"
            ),
        )
    seed = _seed(reader.values, rng)
    # The prompt's params.json default is only the GUI's placeholder text: an absent prompt is empty.
    input_prompt = reader.text("prompt") if "prompt" in reader.values else ""
    input_negative = None
    if reader.values.get("negativePrompt") is not None:
        input_negative = reader.text("negativePrompt")
        input_negative = input_negative if input_negative.strip() else None
    prompt, negative = input_prompt, input_negative
    if route in WILDCARD_ROUTES:
        prompt = _expand("prompt", input_prompt, registry, seed)
        negative = (
            None if input_negative is None else _expand("negativePrompt", input_negative, registry, seed)
        )
    return ImageParams(
        model=model,
        pipeline=pipeline,
        scheduler=reader.choice("scheduler", SCHEDULER_NAMES, aliases=SCHEDULER_ALIASES),
        prompt=prompt,
        negative_prompt=negative,
        batch=reader.integer("batch"),
        cfg=reader.number("cfg"),
        eta=reader.number("eta"),
        loopback=reader.integer("loopback"),
        steps=reader.integer("steps"),
        seed=seed,
        tiled_vae=reader.boolean("tiled_vae"),
        thumbnail=reader.boolean("thumbnail"),
        unet_tile=reader.integer("unet_tile"),
        unet_overlap=reader.number("unet_overlap"),
        vae_tile=reader.integer("vae_tile"),
        vae_overlap=reader.number("vae_overlap"),
        control=control,
        width=width,
        height=height,
        input_prompt=input_prompt,
        input_negative_prompt=input_negative,
    )


def _seed(values: Mapping[str, Any], rng: random.Random) -> int:
    rule = f"must be {RANDOM_SEED} (random) or an integer from 0 to {MAX_SEED}"
    seed = _to_int(values["seed"], "seed", rule) if "seed" in values else RANDOM_SEED
    if seed == RANDOM_SEED:
        return rng.randrange(RANDOM_SEED_LIMIT)
    if not 0 <= seed <= MAX_SEED:
        raise InvalidParams("seed", f"{rule}, got {_show(seed)}")
    return seed


def _expand(key: str, text: str, registry: ModelRegistry, seed: int) -> str:
    try:
        expanded = expand_wildcards(text, registry.wildcards(), seed)
    except ValueError as err:
        raise InvalidParams(key, str(err)) from err
    if len(expanded) > MAX_PROMPT_LENGTH:
        raise InvalidParams(key, f"must be at most {MAX_PROMPT_LENGTH} characters after wildcard expansion")
    return expanded


def parse_border(reader: _Reader) -> Border:
    """The outpainting borders."""
    return Border(*(reader.integer(key) for key in ("left", "right", "top", "bottom")))


def parse_upscale(
    reader: _Reader, params_group: Mapping[str, Any], *, nested: bool, registry: ModelRegistry
) -> UpscaleParams:
    """The upscale group; model names fall back to the ``params`` group, as the GUI sends them there."""
    switch = (
        "enabled" if nested and "upscale" not in reader.values and "enabled" in reader.values else "upscale"
    )
    upscale = reader.boolean(switch, spec="upscale")
    faces = reader.boolean("faces")
    upscale_model = _model(reader, params_group, "upscaling", registry)
    correction_model = _model(reader, params_group, "correction", registry)
    if upscale and upscale_model is None:
        raise InvalidParams("upscaling", _needs_model("upscale", registry, "upscaling"))
    if faces and correction_model is None:
        raise InvalidParams("correction", _needs_model("faces", registry, "correction"))
    return UpscaleParams(
        upscale_model=upscale_model,
        correction_model=correction_model,
        denoise=reader.number("denoise"),
        upscale=upscale,
        faces=faces,
        face_outscale=reader.integer("faceOutscale"),
        face_strength=reader.number("faceStrength"),
        outscale=reader.integer("outscale"),
        scale=reader.integer("scale"),
        upscale_order=reader.choice("upscaleOrder", UPSCALE_ORDERS),
    )


def _model(
    reader: _Reader, params_group: Mapping[str, Any], kind: ModelKind, registry: ModelRegistry
) -> str | None:
    name = _name(reader.values, kind) or _name(params_group, kind) or reader.default(kind) or None
    if name is None:
        return None
    path = registry.find_model(kind, name)
    if path is None:
        raise InvalidParams(
            kind, f"no {kind} model {_show(name)}; available: {_listing(registry.names(kind))}"
        )
    return path


def _needs_model(switch: str, registry: ModelRegistry, kind: ModelKind) -> str:
    return f"{switch} is on but no {kind} model is named; available: {_listing(registry.names(kind))}"


def parse_highres(reader: _Reader) -> HighresParams:
    """The highres group."""
    return HighresParams(
        enabled=reader.boolean("highres"),
        iterations=reader.integer("highresIterations"),
        method=reader.choice("highresMethod", HIGHRES_METHODS),
        scale=reader.integer("highresScale"),
        steps=reader.integer("highresSteps"),
        strength=reader.number("highresStrength"),
    )


def parse_experimental(group: Mapping[str, Any], doc: Mapping[str, Any]) -> ExperimentalParams:
    """The experimental group and its ``latentSymmetry`` and ``promptEditing`` objects."""
    symmetry = _Reader(_object(group, "latentSymmetry"), doc, prefix="latentSymmetry.")
    editing = _Reader(_object(group, "promptEditing"), doc, prefix="promptEditing.")
    remove_tokens = editing.text("removeTokens")
    try:
        re.compile(remove_tokens)
    except re.error as err:
        raise InvalidParams("promptEditing.removeTokens", f"must be a regular expression: {err}") from err
    return ExperimentalParams(
        latent_symmetry=LatentSymmetryParams(
            enabled=symmetry.boolean("enabled"),
            gradient_start=symmetry.number("gradientStart"),
            gradient_end=symmetry.number("gradientEnd"),
            line_of_symmetry=symmetry.number("lineOfSymmetry"),
        ),
        prompt_editing=PromptEditingParams(
            # params.json keeps the switch's default on the group itself and calls the filter ``filter``.
            enabled=editing.boolean("enabled", spec="promptEditing"),
            filter=editing.choice("promptFilter", ("none", *PROMPT_FILTERS), spec="promptEditing.filter"),
            remove_tokens=remove_tokens,
            add_suffix=editing.text("addSuffix"),
            min_length=editing.integer("minLength"),
        ),
    )


def _object(group: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    value = group.get(key, {})
    if not isinstance(value, dict):
        raise InvalidParams(key, "must be an object")
    return value


def source_filters(registry: ModelRegistry) -> tuple[str, ...]:
    """The source filters that run here: those needing no model, and those whose model is installed."""
    return runnable_filters(registry.filter_models())


def parse_img2img(reader: _Reader, registry: ModelRegistry) -> Img2ImgParams:
    """The img2img route's strength and source filter."""
    return Img2ImgParams(
        strength=reader.number("strength"),
        source_filter=reader.choice("sourceFilter", source_filters(registry)),
    )


def parse_inpaint(reader: _Reader) -> InpaintParams:
    """The inpaint route's fill colour, mask filter, noise source and tiling."""
    fill_color = _name(reader.values, "fillColor") or reader.default("fillColor")
    try:
        if len(fill_color) > _MAX_COLOR_TEXT:
            raise ValueError("too long")
        ImageColor.getrgb(fill_color)
    except ValueError as err:
        raise InvalidParams("fillColor", f"must be a colour name or code, got {_show(fill_color)}") from err
    return InpaintParams(
        fill_color=fill_color,
        mask_filter=reader.choice("filter", MASK_FILTERS),
        noise_source=reader.choice("noise", NOISE_SOURCES),
        tile_order=reader.choice("tileOrder", TILE_ORDERS),
        fullres_inpaint=reader.boolean("fullresInpaint"),
        fullres_inpaint_padding=reader.number("fullresInpaintPadding"),
    )


class _Reader:
    """Typed values of one group, with defaults and ranges from ``params.json``."""

    def __init__(self, values: Mapping[str, Any], doc: Mapping[str, Any], prefix: str = "") -> None:
        self.values = values
        self.doc = doc
        #: Dotted path of the group in ``params.json`` and in error messages (``latentSymmetry.``).
        self.prefix = prefix

    def entry(self, key: str) -> Mapping[str, Any]:
        """The ``params.json`` entry of a key of this group."""
        return _walk(self.doc, self.prefix + key)

    def default(self, key: str) -> Any:
        """The default value of an entry (``None`` when it has none)."""
        return self.entry(key).get("default")

    def integer(self, key: str) -> int:
        """An integer within the entry's range."""
        low, high = self.entry(key)["min"], self.entry(key)["max"]
        rule = f"must be an integer from {low} to {high}"
        value = (
            _to_int(self.values[key], self.prefix + key, rule) if key in self.values else self.default(key)
        )
        if not low <= value <= high:
            raise InvalidParams(self.prefix + key, f"{rule}, got {_show(value)}")
        return int(value)

    def size(self, key: str) -> int:
        """A width or height: an integer within range and a multiple of 8."""
        value = self.integer(key)
        if value % SIZE_MULTIPLE:
            raise InvalidParams(key, f"must be a multiple of {SIZE_MULTIPLE}, got {value}")
        return value

    def number(self, key: str) -> float:
        """A finite number within the entry's range."""
        low, high = self.entry(key)["min"], self.entry(key)["max"]
        rule = f"must be a number from {low} to {high}"
        value = (
            _to_float(self.values[key], self.prefix + key, rule) if key in self.values else self.default(key)
        )
        if not low <= value <= high:
            raise InvalidParams(self.prefix + key, f"{rule}, got {_show(value)}")
        return float(value)

    def boolean(self, key: str, *, spec: str | None = None) -> bool:
        """A boolean; ``spec`` names the entry holding its default when that is not ``key``."""
        if key not in self.values:
            entry = _walk(self.doc, spec) if spec else self.entry(key)
            return bool(entry.get("default", False))
        value = self.values[key]
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in TRUE_WORDS | FALSE_WORDS:
            return value.strip().lower() in TRUE_WORDS
        words = "/".join(sorted(TRUE_WORDS)) + " or " + "/".join(sorted(FALSE_WORDS))
        raise InvalidParams(self.prefix + key, f"must be true or false ({words}), got {_show(value)}")

    def choice(
        self,
        key: str,
        allowed: tuple[str, ...],
        *,
        default: str | None = None,
        spec: str | None = None,
        aliases: Mapping[str, str] | None = None,
    ) -> str:
        """One of ``allowed``, or one of its ``aliases`` (the name it stands for is returned); missing
        or empty means ``default``, else the entry's default."""
        value = _name(self.values, key, self.prefix)
        if value is None:
            value = default or (_walk(self.doc, spec) if spec else self.entry(key)).get("default")
        elif aliases:
            value = aliases.get(value, value)
        if value not in allowed:
            raise InvalidParams(self.prefix + key, _one_of(allowed, value))
        return str(value)

    def text(self, key: str) -> str:
        """A string of at most ``MAX_PROMPT_LENGTH`` characters; the entry's default (or "") when absent."""
        value = self.values[key] if key in self.values else self.default(key) or ""
        if not isinstance(value, str):
            raise InvalidParams(self.prefix + key, f"must be a string, got {_show(value)}")
        if len(value) > MAX_PROMPT_LENGTH:
            raise InvalidParams(
                self.prefix + key, f"must be at most {MAX_PROMPT_LENGTH} characters, got {len(value)}"
            )
        return value


def _walk(doc: Mapping[str, Any], path: str) -> Mapping[str, Any]:
    node: Any = doc
    for part in path.split("."):
        node = node.get(part, {}) if isinstance(node, dict) else {}
    return node if isinstance(node, dict) else {}


def _name(values: Mapping[str, Any], key: str, prefix: str = "") -> str | None:
    """A name-like string; missing, ``null`` and ``""`` all mean "not given"."""
    value = values.get(key)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise InvalidParams(prefix + key, f"must be a string, got {_show(value)}")
    return value


def _to_int(value: Any, field: str, rule: str) -> int:
    """Read an integer, refusing booleans, fractions, non-finite numbers and non-numeric text."""
    number: Any = value
    if isinstance(value, str) and len(value) <= _MAX_NUMBER_TEXT:
        text = value.strip()
        if _INTEGER_TEXT.fullmatch(text):
            number = _parse(int, text)
        elif _NUMBER_TEXT.fullmatch(text):
            number = _parse(float, text)
    if isinstance(number, float) and math.isfinite(number) and number.is_integer():
        number = int(number)
    if isinstance(number, bool) or not isinstance(number, int):
        raise InvalidParams(field, f"{rule}, got {_show(value)}")
    return number


def _to_float(value: Any, field: str, rule: str) -> float:
    """Read a finite number, refusing booleans and non-numeric text."""
    number: Any = value
    if isinstance(value, str) and len(value) <= _MAX_NUMBER_TEXT and _NUMBER_TEXT.fullmatch(value.strip()):
        number = _parse(float, value.strip())
    if isinstance(number, int) and not isinstance(number, bool):
        number = _parse(float, number)
    if not isinstance(number, float) or not math.isfinite(number):
        raise InvalidParams(field, f"{rule}, got {_show(value)}")
    return number


def _parse(convert: Callable[[Any], T], value: Any) -> T | None:
    """Convert, or ``None`` when the value is too large (over 4300 digits, or beyond a float)."""
    try:
        return convert(value)
    except (ValueError, OverflowError):
        return None


def _is_number(value: Any) -> TypeGuard[int | float]:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _one_of(allowed: Any, value: Any) -> str:
    return f"must be one of {', '.join(allowed)}; got {_show(value)}"


def _listing(names: Any) -> str:
    return ", ".join(names) or "none"


def _show(value: Any) -> str:
    """A short rendering of a rejected value, so a huge value does not flood the error message.

    Containers are named, not rendered: YAML aliases can make a small body expand enormously.
    """
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list | tuple):
        return "a list"
    try:
        shown = json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError):
        shown = repr(value)
    return shown if len(shown) <= _SHOWN_CHARACTERS else shown[: _SHOWN_CHARACTERS - 1] + "…"
