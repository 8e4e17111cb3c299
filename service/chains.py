"""Every submission becomes one resolved chain document (see ``pipelines.stages.base``).

The legacy routes build their chain as contract §8 describes; ``/api/chain`` and ``/api/job``
take the chain language of contract §10.1, validated against a JSON schema, with ``defaults``
merged into every stage. Everything is resolved here, in the api: random seeds chosen, wildcards
expanded, defaults applied, so a retried job reproduces the same images.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import jsonschema

from pipelines.stages.catalogue import MAX_TILE, STAGES, effective_tile, estimate_steps, parse_tiles
from service.errors import InvalidParams, NotImplementedYet
from service.params import ParsedRequest

MAX_STAGES = 50
SCALAR = {"type": ["string", "number", "boolean", "null"]}
CHAIN_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["stages"],
    "properties": {
        "defaults": {"type": "object"},
        "platform": {"type": "string"},
        "stages": {
            "type": "array",
            "minItems": 1,
            "maxItems": MAX_STAGES,
            "items": {
                "type": "object",
                "additionalProperties": False,
                "required": ["name", "type", "params"],
                "properties": {
                    "name": {"type": "string", "minLength": 1, "maxLength": 64},
                    "type": {"type": "string", "enum": sorted(STAGES)},
                    "params": {
                        "type": "object",
                        "propertyNames": {"pattern": "^[-_A-Za-z]+$"},
                        "additionalProperties": SCALAR,
                        "properties": {
                            **{key: {"type": "number"} for key in ("left", "right", "top", "bottom", "outscale", "scale")},
                            "prompt": {"type": "string"},
                        },
                    },
                },
            },
        },
    },
}
_VALIDATOR = jsonschema.Draft202012Validator(CHAIN_SCHEMA)


@dataclass
class BuiltChain:
    """A resolved chain plus what the job row records about it."""

    kind: str
    chain: dict[str, Any]
    #: The parsed request whose seed, prompt and size name the job.
    request: ParsedRequest
    model: str | None
    platform: str | None
    #: Upload field → the stage input key it feeds (``source`` → ``source:img2img``).
    inputs: dict[str, str] = field(default_factory=dict)

    @property
    def steps_total(self) -> int:
        return estimate_steps(self.chain["stages"])

    @property
    def stages_total(self) -> int:
        return len(self.chain["stages"])


def stage(name: str, stage_type: str, params: Mapping[str, Any], *, tiles: int = MAX_TILE, outscale: int = 1) -> dict[str, Any]:
    """One resolved stage entry."""
    return {
        "name": name,
        "type": stage_type,
        "params": dict(params),
        "tiles": effective_tile(stage_type, tiles),
        "outscale": outscale,
    }


def require_available(chain: Mapping[str, Any]) -> None:
    """Answer 501 naming the stage types this build cannot run yet, before any job exists."""
    missing = sorted({entry["type"] for entry in chain["stages"] if not STAGES[entry["type"]].available})
    if missing:
        raise NotImplementedYet(f"this server cannot run these stages yet: {', '.join(missing)}")


def output_settings(request: ParsedRequest, image_format: str, thumbnail_size: int) -> dict[str, Any]:
    """How the worker encodes this job's outputs."""
    return {"format": image_format, "thumbnail": request.image.thumbnail, "thumbnail_size": thumbnail_size}


def image_params(request: ParsedRequest) -> dict[str, Any]:
    """A stage's image parameters: the metadata ``params`` plus the size to generate."""
    return {**request.image.to_dict(), "width": request.image.width, "height": request.image.height}


# -- the legacy routes (contract §8) ---------------------------------------------------------

UPSCALE_STAGES = {"bsrgan": "upscale-bsrgan", "esrgan": "upscale-resrgan",
                  "stable-diffusion": "upscale-stable-diffusion", "swinir": "upscale-swinir"}  # fmt: skip
CORRECTION_STAGES = {"codeformer": "correct-codeformer", "gfpgan": "correct-gfpgan"}


def _by_substring(name: str | None, table: Mapping[str, str]) -> str | None:
    return next((stage_type for key, stage_type in table.items() if name and key in name), None)


def upscale_stages(request: ParsedRequest, *, when: str) -> list[dict[str, Any]]:
    """The upscaling/correction stages that run ``before`` or ``after`` highres (contract §8.5)."""
    up = request.upscale
    upscaler = _by_substring(up.upscale_model, UPSCALE_STAGES) if up.upscale else None
    corrector = _by_substring(up.correction_model, CORRECTION_STAGES) if up.faces else None
    params = {**image_params(request), **up.to_dict()}
    # onnx-web corrects again after upscaling for correction-first too (contract §8.5); here
    # correction-first corrects once, before, correction-last once, after, and -both twice.
    if when == "before":
        if corrector and up.upscale_order in ("correction-first", "correction-both"):
            return [stage("correct-before", corrector, params, outscale=up.face_outscale)]
        return []
    stages: list[dict[str, Any]] = []
    if upscaler:
        stages.append(stage("upscale", upscaler, params, tiles=request.image.unet_tile, outscale=up.outscale))
    if corrector and up.upscale_order in ("correction-last", "correction-both"):
        stages.append(stage("correct", corrector, params, outscale=up.face_outscale))
    return stages


def highres_stages(request: ParsedRequest) -> list[dict[str, Any]]:
    """``iterations`` times (upscale by ``scale``, then tiled img2img at ``strength``) (contract §8.4)."""
    hr = request.highres
    if hr is None or not hr.enabled or hr.iterations < 1:
        return []
    image = image_params(request)
    stages: list[dict[str, Any]] = []
    for index in range(hr.iterations):
        if hr.method == "upscale":
            upscaler = _by_substring(request.upscale.upscale_model, UPSCALE_STAGES)
            if upscaler is None:
                raise InvalidParams("highresMethod", "'upscale' needs an upscaling model in 'upscaling'")
            stages.append(stage(f"highres-upscale-{index}", upscaler,
                                {**image, **request.upscale.to_dict(), "faces": False}, outscale=hr.scale))  # fmt: skip
        else:
            stages.append(stage(f"highres-resize-{index}", "upscale-simple", {"method": hr.method, "scale": hr.scale}))
        stages.append(
            stage(f"highres-img2img-{index}", "blend-img2img",
                  {**image, "strength": hr.strength, "steps": hr.steps, "prompt_index": index + 1},
                  tiles=request.image.unet_tile)
        )  # fmt: skip
    return stages


def build_txt2img(request: ParsedRequest, *, image_format: str, thumbnail_size: int) -> BuiltChain:
    """txt2img: generate, then correction/highres/upscaling as asked (contract §8.1)."""
    stages = [
        stage("txt2img", "source-txt2img", {**image_params(request), "prompt_index": 0}),
        *upscale_stages(request, when="before"),
        *highres_stages(request),
        *upscale_stages(request, when="after"),
    ]
    return _legacy("txt2img", request, stages, image_format=image_format, thumbnail_size=thumbnail_size)


def _legacy(kind: str, request: ParsedRequest, stages: list[dict[str, Any]], *, image_format: str,
            thumbnail_size: int, inputs: dict[str, str] | None = None) -> BuiltChain:  # fmt: skip
    metadata: dict[str, Any] = {"input_size": {"width": request.image.width, "height": request.image.height}}
    if request.highres is not None and request.highres.enabled:
        metadata["highres"] = request.highres.to_dict()
    if request.upscale.upscale or request.upscale.faces:
        metadata["upscale"] = request.upscale.to_dict()
    chain = {
        "version": 1,
        "kind": kind,
        "stages": stages,
        "output": output_settings(request, image_format, thumbnail_size),
        "metadata": metadata,
    }
    return BuiltChain(kind, chain, request, request.image.model, request.device.platform, inputs or {})


# -- the chain language (contract §10) -------------------------------------------------------

def _json_path(error: jsonschema.ValidationError) -> str:
    return "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in error.absolute_path).lstrip(".")


def validate_chain_document(doc: object) -> dict[str, Any]:
    """Check a chain document against the schema; 400 naming the path of the first bad field."""
    if not isinstance(doc, dict):
        raise InvalidParams("chain", "must be a JSON object with a 'stages' array")
    error = jsonschema.exceptions.best_match(_VALIDATOR.iter_errors(doc))
    if error is not None:
        raise InvalidParams(_json_path(error) or "chain", error.message)
    names = [entry["name"] for entry in doc["stages"]]
    duplicate = next((name for name in names if names.count(name) > 1), None)
    if duplicate:
        raise InvalidParams("stages", f"stage names must be unique, {duplicate!r} repeats")
    return doc


#: Validators for the stage-specific keys each stage reads besides the image parameters.
StageParams = Callable[[str, Mapping[str, Any]], dict[str, Any]]


def _choice(field_path: str, value: Any, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise InvalidParams(field_path, f"must be one of {', '.join(allowed)}, got {value!r}")
    return str(value)


def _number(field_path: str, value: Any, low: float, high: float, *, integer: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
        kind = "an integer" if integer else "a number"
        raise InvalidParams(field_path, f"must be {kind} from {low:g} to {high:g}, got {value!r}")
    if integer and int(value) != value:
        raise InvalidParams(field_path, f"must be an integer from {low:g} to {high:g}, got {value!r}")
    return int(value) if integer else float(value)


def _upscale_simple(path: str, raw: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "method": _choice(f"{path}.method", raw.get("method", "lanczos"), ("bilinear", "lanczos")),
        "scale": _number(f"{path}.scale", raw.get("scale", 2), 1, 8),
    }


def _txt2img(path: str, raw: Mapping[str, Any]) -> dict[str, Any]:
    return {"prompt_index": int(_number(f"{path}.prompt_index", raw.get("prompt_index", 0), 0, 16, integer=True))}


def _nothing(path: str, raw: Mapping[str, Any]) -> dict[str, Any]:
    return {}


STAGE_PARAMS: dict[str, StageParams] = {
    "source-txt2img": _txt2img,
    "upscale-simple": _upscale_simple,
    "persist-disk": _nothing,
    "persist-s3": _nothing,
}


def _parse_at(parse: Callable[[str, Mapping[str, Any]], ParsedRequest], path: str, raw: Mapping[str, Any]) -> ParsedRequest:
    """Parse one stage's flat parameters, naming bad fields by their path in the document."""
    try:
        return parse("txt2img", raw)
    except InvalidParams as err:
        raise InvalidParams(f"{path}.{err.field}", err.rule) from err


def build_chain(
    doc: Mapping[str, Any],
    parse: Callable[[str, Mapping[str, Any]], ParsedRequest],
    *,
    image_format: str,
    thumbnail_size: int,
    uploads: frozenset[str] = frozenset(),
) -> BuiltChain:
    """Resolve a validated chain document: ``defaults`` merged into every stage, seeds chosen once."""
    defaults = dict(doc.get("defaults") or {})
    base = _parse_at(parse, "defaults", defaults)
    # One resolved seed for the whole chain unless a stage sets its own.
    defaults["seed"] = base.image.seed
    stages = []
    for index, entry in enumerate(doc["stages"]):
        path = f"stages[{index}].params"
        raw = {**defaults, **entry["params"]}
        stage_type = entry["type"]
        for needed in STAGES[stage_type].needs:
            if f"{needed}:{entry['name']}" not in uploads:
                raise InvalidParams(f"stages[{index}]", f"stage type {stage_type} needs an uploaded '{needed}:{entry['name']}' image")
        parsed = _parse_at(parse, path, raw)
        try:
            tiles = parse_tiles(raw.get("tiles"))
        except ValueError as err:
            raise InvalidParams(f"{path}.tiles", str(err)) from err
        outscale = int(_number(f"{path}.outscale", raw.get("outscale", 1), 1, 4, integer=True))
        specific = STAGE_PARAMS.get(stage_type)
        if specific is None:
            raise NotImplementedYet(f"this server cannot run these stages yet: {stage_type}")
        params = {**image_params(parsed), **specific(path, raw)}
        stages.append(stage(entry["name"], stage_type, params, tiles=tiles, outscale=outscale))
    chain = {
        "version": 1,
        "kind": "chain",
        "stages": stages,
        "output": output_settings(base, image_format, thumbnail_size),
        "metadata": {"input_size": {"width": base.image.width, "height": base.image.height}},
    }
    model = next((entry["params"].get("model") for entry in stages if entry["type"] == "source-txt2img"), base.image.model)
    platform = doc.get("platform") or base.device.platform
    return BuiltChain("chain", chain, base, model, platform, {name: name for name in uploads})
