"""Every submission becomes one resolved chain document (see ``pipelines.context``).

The legacy routes build their chain as contract §8 describes; ``/api/chain`` and ``/api/job``
take the chain language of contract §10.1, validated against a JSON schema, with ``defaults``
merged into every stage. Everything is resolved here, in the api: random seeds chosen, wildcards
expanded, defaults applied, so a retried job reproduces the same images.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import jsonschema

from pipelines.diffusion.networks import mismatched_networks, unknown_networks
from pipelines.diffusion.panorama import PANORAMA_PIPELINES
from pipelines.diffusion.prompt import (
    ALTERNATIVE_PIPELINES,
    PromptSyntaxError,
    check_alternatives,
    parse_stages,
)
from pipelines.diffusion.prompt_grammar import check_areas
from pipelines.diffusion.schedulers import NO_IMAGE_START, NOISE_PREDICTION_ONLY, prediction_type
from pipelines.models.controlnets import controlnet_family, has_cnet
from pipelines.models.registry import ModelRegistry
from pipelines.stages import (
    FROM_UPLOAD,
    NAMES,
    PLANNED,
    SOURCES,
    STAGES,
    TEXT_ONLY,
    effective_tile,
    estimate_steps,
)
from pipelines.stages.spec import GROUPS, MAX_TILE, ParamError, StageType, integer, parse_tiles
from service.errors import InvalidParams, NotImplementedYet
from service.fetch import SourceURLError, parse_source_url
from service.params import ParsedRequest, check_route_pipeline, source_filters

MAX_STAGES = 50
SCALAR = {"type": ["string", "number", "boolean", "null"]}
CHAIN_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["stages"],
    "properties": {
        "defaults": {"type": "object"},
        "platform": {"type": "string"},
        "callback": {"type": "string", "maxLength": 2048},
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
                    "type": {"type": "string", "enum": sorted(NAMES)},
                    "params": {
                        "type": "object",
                        "propertyNames": {"pattern": "^[-_A-Za-z]+$"},
                        "additionalProperties": SCALAR,
                        "properties": {
                            **{
                                key: {"type": "number"}
                                for key in ("left", "right", "top", "bottom", "outscale", "scale")
                            },
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


def stage(
    name: str, stage_type: str, params: Mapping[str, Any], *, tiles: int = MAX_TILE, outscale: int = 1
) -> dict[str, Any]:
    """One resolved stage entry: its declared defaults applied and every value checked."""
    try:
        resolved = {**params, **STAGES[stage_type].resolve(params)}
    except ParamError as err:
        raise InvalidParams(err.field.removeprefix("params."), err.rule) from err
    return {
        "name": name,
        "type": stage_type,
        "params": resolved,
        "tiles": effective_tile(stage_type, tiles),
        "outscale": outscale,
    }


def require_available(chain: Mapping[str, Any]) -> None:
    """Answer 501 naming the stage types this build cannot run yet, before any job exists."""
    missing = sorted({entry["type"] for entry in chain["stages"] if entry["type"] in PLANNED})
    if missing:
        raise NotImplementedYet(f"this server cannot run these stages yet: {', '.join(missing)}")


#: The stage types that run an SDXL model (txt2img, img2img and highres, inpaint and outpaint).
SDXL_STAGES = frozenset({"source-txt2img", "blend-img2img", "blend-inpaint", "upscale-outpaint"})


#: Where a stage's params name the models its outputs' metadata lists.
MODEL_PARAMS = ("model", "upscale_model", "correction_model")


def extras_hashes(chain: Mapping[str, Any], registry: ModelRegistry) -> dict[str, str]:
    """The hashes the extras give the models and networks a chain names, for its outputs' metadata.

    Contract §7.3: a model's extras ``hash`` wins over its ``hash.txt`` and its file's own. Workers
    do not read the extras (the api keeps them, stored document included), so the job carries them.
    """
    names: set[str] = set()
    for entry in chain["stages"]:
        params = entry["params"]
        names.update(str(params[key]) for key in MODEL_PARAMS if isinstance(params.get(key), str))
        for key in ("prompt", "negative_prompt"):
            if isinstance(params.get(key), str):
                try:
                    stages = parse_stages(params[key])
                except PromptSyntaxError:  # checked at parse time: not a prompt the stage reads
                    continue
                for parsed in stages:
                    names.update(network.name for network in (*parsed.loras, *parsed.inversions))
    listed = {name: registry.extras_hash(name) for name in sorted(names)}
    return {name: value for name, value in listed.items() if value is not None}


def require_runnable(
    chain: Mapping[str, Any], registry: ModelRegistry, paths: Mapping[str, str] | None = None
) -> None:
    """400 for a model the workers cannot run in its stage, before any job exists.

    Args:
        chain: the built chain.
        registry: tells each diffusion model's family.
        paths: the request's path of each stage by name (``stages[2]``); legacy routes name the
            request's own fields instead.
    """
    for entry in chain["stages"]:
        params = entry["params"]
        where = f"{paths[entry['name']]}.params." if paths and entry["name"] in paths else ""
        if entry["type"] == "edit-filter":
            _require_filter(params, registry, where)
        if STAGES[entry["type"]].model == "upscaling" and params.get("upscale_model"):
            _require_upscaler_kind(entry["type"], str(params["upscale_model"]), registry, where)
        if "model" not in params or "pipeline" not in params:
            continue
        family = registry.family(params["model"])
        pipeline = str(params["pipeline"])
        if family == "sd" and pipeline.endswith("-sdxl"):
            raise InvalidParams(
                f"{where}pipeline",
                f"{pipeline} needs an SDXL model; {params['model']} is Stable Diffusion 1.x/2.x "
                f"(SDXL models here: {_listing(_family_models(registry, 'sdxl'))})",
            )
        _require_networks(params, registry, where)
        _require_pix2pix_unet(entry["type"], params, registry, where)
        _require_plain_unet(entry["type"], params, registry, where)
        _require_scheduler(entry["type"], params, registry, where)
        if pipeline == "controlnet":
            _require_controlnet(entry["type"], params, registry, where)
        if entry["type"] == "source-txt2img":
            # Reseed tokens shape every txt2img's starting noise, region tokens only a panorama's
            # (img2img and inpaint start from their source and run the base windows, as onnx-web's).
            _require_areas(params, where, regions=pipeline in PANORAMA_PIPELINES)
        if family == "sdxl" and entry["type"] not in SDXL_STAGES:
            raise InvalidParams(
                f"{where}model",
                f"{params['model']} is an SDXL model, which this server runs only in "
                f"{', '.join(sorted(SDXL_STAGES))}; {entry['type']} needs a Stable Diffusion 1.x/2.x model "
                f"({_listing(_family_models(registry, 'sd'))})",
            )


def _require_filter(params: Mapping[str, Any], registry: ModelRegistry, where: str) -> None:
    """400 for a model-based source filter whose annotator model is not installed."""
    available = source_filters(registry)
    if params["filter"] not in available:
        raise InvalidParams(
            f"{where}filter",
            f"source filter {params['filter']} needs its annotator model, which is not installed here; "
            f"available: {_listing(available)}",
        )


#: The stage types that run pipeline controlnet: img2img's (onnx-web's inpaint ControlNet is not run here).
CONTROLNET_STAGES = frozenset({"blend-img2img"})
FAMILY_NAMES = {"sd": "Stable Diffusion 1.x/2.x", "sdxl": "SDXL"}


def _require_controlnet(
    stage_type: str, params: Mapping[str, Any], registry: ModelRegistry, where: str
) -> None:
    """400 for pipeline controlnet where it cannot run: another diffusion stage, no ``control``, a
    model converted without its ``cnet`` UNet, or a ControlNet made for the other model family."""
    if stage_type in SDXL_STAGES - CONTROLNET_STAGES:
        raise InvalidParams(
            f"{where}pipeline",
            f"controlnet runs in {', '.join(sorted(CONTROLNET_STAGES))}, not in {stage_type}",
        )
    if stage_type not in CONTROLNET_STAGES:
        return
    model, control = str(params["model"]), str(params.get("control") or "")
    if not control:
        names = [network.name for network in registry.networks("control")]
        raise InvalidParams(
            f"{where}control", f"pipeline controlnet needs a ControlNet; available: {_listing(names)}"
        )
    if not has_cnet(registry.resolve(model)):
        with_cnet = [
            name
            for name in registry.names("diffusion")
            if (path := registry.find_model("diffusion", name)) and has_cnet(registry.resolve(path))
        ]
        raise InvalidParams(
            f"{where}model",
            f"{model} has no ControlNet UNet (cnet/; convert it with --cnet) to run pipeline controlnet; "
            f"models with one: {_listing(with_cnet)}",
        )
    family, control_family = registry.family(model), controlnet_family(registry.models_path, control)
    if control_family is not None and control_family != family:
        fitting = [
            network.name
            for network in registry.networks("control")
            if controlnet_family(registry.models_path, network.name) in (family, None)
        ]
        raise InvalidParams(
            f"{where}control",
            f"ControlNet {control} is for {FAMILY_NAMES[control_family]} models and {model} is "
            f"{FAMILY_NAMES[family]}; ControlNets for it: {_listing(fitting)}",
        )


#: The stage type that runs pipeline pix2pix (img2img, its loopbacks and highres passes).
PIX2PIX_STAGES = frozenset({"blend-img2img"})
#: Input channels of an InstructPix2Pix UNet (``pipelines.diffusion.pix2pix``): latents and source latents.
PIX2PIX_CHANNELS = 8


#: Input channels of an inpainting UNet: latents, mask and masked-image latents.
INPAINTING_CHANNELS = 9
#: The stages that run an inpainting UNet (its mask and masked image are theirs to give).
INPAINTING_STAGES = frozenset({"blend-inpaint", "upscale-outpaint"})


def _require_plain_unet(
    stage_type: str, params: Mapping[str, Any], registry: ModelRegistry, where: str
) -> None:
    """400 for an inpainting model in a stage that cannot feed its mask (txt2img, img2img, a route's
    highres passes): its UNet takes 9 input channels, and the run would fail in the worker."""
    if stage_type not in SDXL_STAGES or stage_type in INPAINTING_STAGES:
        return
    model = str(params["model"])
    if registry.unet_channels(model) == INPAINTING_CHANNELS:
        raise InvalidParams(
            f"{where}model",
            f"{model} is an inpainting model: it runs on the inpaint route (and the blend-inpaint and "
            f"upscale-outpaint stages) only, not in {stage_type}, so not for highres either",
        )


#: Pipelines of blend-img2img that start from noise, not from the noised source.
NOISE_START_PIPELINES = frozenset({"pix2pix", "controlnet"})


def _require_scheduler(
    stage_type: str, params: Mapping[str, Any], registry: ModelRegistry, where: str
) -> None:
    """400 for a scheduler that cannot run this stage's model (ipndm on a v-prediction model) or
    start from its image (ipndm has no ``add_noise``), which would fail the job in the worker."""
    name = str(params.get("scheduler", ""))
    if name not in NOISE_PREDICTION_ONLY | NO_IMAGE_START:
        return
    model = str(params["upscale_model"] if stage_type == "upscale-stable-diffusion" else params["model"])
    predicts = prediction_type(registry.resolve(model))
    if name in NOISE_PREDICTION_ONLY and predicts not in (None, "epsilon"):
        raise InvalidParams(
            f"{where}scheduler",
            f"{name} cannot run {model}, which predicts {predicts}: choose another scheduler",
        )
    from_image = (stage_type == "blend-img2img" and params.get("pipeline") not in NOISE_START_PIPELINES) or (
        stage_type in INPAINTING_STAGES and registry.unet_channels(model) != INPAINTING_CHANNELS
    )
    if name in NO_IMAGE_START and from_image:
        raise InvalidParams(
            f"{where}scheduler",
            f"{name} cannot start from an image ({stage_type}, highres passes too): choose another scheduler",
        )


def _require_pix2pix_unet(
    stage_type: str, params: Mapping[str, Any], registry: ModelRegistry, where: str
) -> None:
    """400 for pix2pix outside img2img or on a model without an InstructPix2Pix UNet, and for such a
    model run by another pipeline. A folder that does not record its UNet (``unet/config.json``,
    written by our converter) is left to the worker, which refuses it when it loads the UNet."""
    if stage_type not in SDXL_STAGES:
        return
    model, pipeline = str(params["model"]), str(params["pipeline"])
    channels = registry.unet_channels(model)
    if pipeline != "pix2pix":
        if channels == PIX2PIX_CHANNELS:
            raise InvalidParams(
                f"{where}pipeline", f"{model} is an InstructPix2Pix model: it runs only with pipeline pix2pix"
            )
        return
    if stage_type not in PIX2PIX_STAGES:
        raise InvalidParams(
            f"{where}pipeline", f"pix2pix runs in {', '.join(sorted(PIX2PIX_STAGES))}, not in {stage_type}"
        )
    if channels is not None and channels != PIX2PIX_CHANNELS:
        fitting = [
            name
            for name in registry.names("diffusion")
            if (path := registry.find_model("diffusion", name))
            and registry.unet_channels(path) == PIX2PIX_CHANNELS
        ]
        raise InvalidParams(
            f"{where}model",
            f"pipeline pix2pix needs an InstructPix2Pix model (a UNet with {PIX2PIX_CHANNELS} input "
            f"channels); {model} has {channels}; InstructPix2Pix models: {_listing(fitting)}",
        )


def _require_upscaler_kind(stage_type: str, name: str, registry: ModelRegistry, where: str) -> None:
    """400 for an upscaling model of the other kind: the SD x4 upscaler is a diffusion folder, the
    others one ONNX file. A model this api cannot see on disk (the model store's) is left to the worker."""
    path = registry.resolve(name)
    wants_folder = stage_type == SD_UPSCALER_STAGE
    if path.is_dir() == wants_folder or not (path.is_dir() or path.with_name(f"{path.name}.onnx").is_file()):
        return
    kind = "Stable Diffusion upscaler folder" if wants_folder else "super-resolution model (one .onnx file)"
    fitting = [
        other
        for other in registry.names("upscaling")
        if registry.resolve(registry.find_model("upscaling", other) or other).is_dir() == wants_folder
    ]
    raise InvalidParams(
        f"{where}upscaling",
        f"{stage_type} needs a {kind}; {name} is not one (those here: {_listing(fitting)})",
    )


def _require_networks(params: Mapping[str, Any], registry: ModelRegistry, where: str) -> None:
    """400 for a ``<lora:…>`` or ``<inversion:…>`` that names no network here, listing those there,
    or one made for another model family, whose blend would fail in the worker.

    The worker would skip a missing one (as onnx-web does), and the user would get an image without it.
    """
    for key, field_name in (("prompt", "prompt"), ("negative_prompt", "negativePrompt")):
        text = params.get(key)
        if not isinstance(text, str):
            continue
        for parsed in parse_stages(text):
            missing = unknown_networks(parsed, registry)
            if missing:
                kind, _, name = missing[0].partition(":")
                there = [network.name for network in registry.networks(kind)]  # type: ignore[arg-type]
                label = "LoRA" if kind == "lora" else "textual inversion"
                raise InvalidParams(
                    f"{where}{field_name}", f"no {label} named {name!r}; available: {_listing(there)}"
                )
            model = str(params.get("model", ""))
            mismatched = mismatched_networks(parsed, registry, model) if model else []
            if mismatched:
                kind, name, width, model_width = mismatched[0]
                label = "LoRA" if kind == "lora" else "textual inversion"
                raise InvalidParams(
                    f"{where}{field_name}",
                    f"the {label} {name!r} was made for another model family (text conditioning {width} "
                    f"wide; {model}'s is {model_width})",
                )


def _require_areas(params: Mapping[str, Any], where: str, *, regions: bool) -> None:
    """400 for a reseed rectangle, or with ``regions`` a region's, that does not fit the image,
    before it runs; without ``regions`` the region tokens are left unread, as the pipeline leaves them."""
    text = params.get("prompt")
    width, height = params.get("width"), params.get("height")
    if not isinstance(text, str) or not isinstance(width, int) or not isinstance(height, int):
        return
    for parsed in parse_stages(text):
        try:
            check_areas(parsed if regions else replace(parsed, regions=[]), width, height)
        except ValueError as err:
            raise InvalidParams(f"{where}prompt", str(err)) from err


def _family_models(registry: ModelRegistry, family: str) -> list[str]:
    return [
        name
        for name in registry.names("diffusion")
        if (path := registry.find_model("diffusion", name)) and registry.family(path) == family
    ]


def _listing(names: Sequence[str]) -> str:
    return ", ".join(names) or "none"


def check_prompts(request: ParsedRequest) -> None:
    """400 naming the field and character of the first mistake in a prompt's syntax (contract §9).

    The text as sent is checked, so positions are the user's; then, if wildcards changed it, the
    expanded text the worker will parse.
    """
    image = request.image
    for field_name, sent, expanded in (
        ("prompt", image.input_prompt, image.prompt),
        ("negativePrompt", image.input_negative_prompt, image.negative_prompt),
    ):
        for text, note in ((sent, ""), (expanded, " (after wildcards were expanded)")):
            if text is None or (note and text == sent):
                continue
            try:
                parse_stages(text)
                if image.pipeline in ALTERNATIVE_PIPELINES:
                    check_alternatives(text)
            except PromptSyntaxError as err:
                raise InvalidParams(field_name, f"{err}{note}") from err


def output_settings(request: ParsedRequest, image_format: str, thumbnail_size: int) -> dict[str, Any]:
    """How the worker encodes this job's outputs."""
    return {"format": image_format, "thumbnail": request.image.thumbnail, "thumbnail_size": thumbnail_size}


def image_params(request: ParsedRequest) -> dict[str, Any]:
    """A stage's image parameters: the metadata ``params`` plus the size to generate."""
    return {**request.image.to_dict(), "width": request.image.width, "height": request.image.height}


def refine_params(request: ParsedRequest) -> dict[str, Any]:
    """The image parameters of a stage that refines the route's images (loopback, highres, the
    upscalers): ``batch`` is how many images the first stage makes; each later pass turns every
    image into one, as onnx-web's do, where passing ``batch`` on would multiply them at each pass."""
    return {**image_params(request), "batch": 1}


# -- the legacy routes (contract §8) ---------------------------------------------------------

#: The stage of the SD x4 upscaler, a diffusion folder; the other upscaling stages run one ONNX file.
SD_UPSCALER_STAGE = "upscale-stable-diffusion"
UPSCALE_STAGES = {
    "bsrgan": "upscale-bsrgan",
    "esrgan": "upscale-resrgan",
    "stable-diffusion": "upscale-stable-diffusion",
    "swinir": "upscale-swinir",
}
CORRECTION_STAGES = {"codeformer": "correct-codeformer", "gfpgan": "correct-gfpgan"}


def _by_substring(name: str | None, table: Mapping[str, str]) -> str | None:
    return next((stage_type for key, stage_type in table.items() if name and key in name), None)


def upscale_stages(request: ParsedRequest, *, when: str) -> list[dict[str, Any]]:
    """The upscaling/correction stages that run ``before`` or ``after`` highres (contract §8.5)."""
    up = request.upscale
    upscaler = _by_substring(up.upscale_model, UPSCALE_STAGES) if up.upscale else None
    corrector = _by_substring(up.correction_model, CORRECTION_STAGES) if up.faces else None
    params = {**refine_params(request), **up.to_dict()}
    # onnx-web corrects again after upscaling for correction-first too (contract §8.5); here
    # correction-first corrects once, before, correction-last once, after, and -both twice.
    if when == "before":
        if corrector and up.upscale_order in ("correction-first", "correction-both"):
            return [stage("correct-before", corrector, params)]
        return []
    stages: list[dict[str, Any]] = []
    if upscaler:
        stages.append(stage("upscale", upscaler, params, tiles=request.image.unet_tile, outscale=up.outscale))
    if corrector and up.upscale_order in ("correction-last", "correction-both"):
        stages.append(stage("correct", corrector, params))
    return stages


def highres_stages(request: ParsedRequest, prefix: str = "highres") -> list[dict[str, Any]]:
    """``iterations`` times (upscale by ``scale``, then tiled img2img at ``strength``) (contract §8.4).

    A panorama pipeline's img2img windows the whole enlarged image itself, as onnx-web's feature
    flag ``panorama-highres`` has it (always on here): no seams between separately painted tiles.
    """
    hr = request.highres
    if hr is None or not hr.enabled or hr.iterations < 1:
        return []
    image = refine_params(request)
    stages: list[dict[str, Any]] = []
    for index in range(hr.iterations):
        if hr.method == "upscale":
            upscaler = _by_substring(request.upscale.upscale_model, UPSCALE_STAGES)
            if upscaler is None:
                raise InvalidParams("highresMethod", "'upscale' needs an upscaling model in 'upscaling'")
            stages.append(
                stage(
                    f"{prefix}-upscale-{index}",
                    upscaler,
                    # The model's native scale, enlarged (or reduced) to the highres scale.
                    {**image, **request.upscale.to_dict(), "faces": False, "outscale": hr.scale},
                    outscale=hr.scale,
                )
            )
        else:
            stages.append(
                stage(f"{prefix}-resize-{index}", "upscale-simple", {"method": hr.method, "scale": hr.scale})
            )
        stages.append(
            stage(
                f"{prefix}-img2img-{index}",
                "blend-img2img",
                {
                    **image,
                    "strength": hr.strength,
                    "steps": hr.steps,
                    "prompt_index": index + 1,
                    # Its tiles overlap by the request's vae_overlap, as onnx-web's highres tiles do.
                    "overlap": request.image.vae_overlap,
                },
                tiles=_diffusion_tiles(request),
            )
        )
    return stages


def _refine(request: ParsedRequest) -> list[dict[str, Any]]:
    """What every legacy route runs after its first stage: correction, highres, upscaling."""
    return [
        *upscale_stages(request, when="before"),
        *highres_stages(request),
        *upscale_stages(request, when="after"),
    ]


#: The strength of the denoising after panorama txt2img: onnx-web's (``BlendDenoiseFastNLMeansStage``).
PANORAMA_DENOISE = 3


def _diffusion_tiles(request: ParsedRequest) -> int:
    """The tile size of the img2img, inpaint and highres diffusion stages: MultiDiffusion windows the
    whole image itself; any other pipeline runs tile by tile, one UNet tile at a time."""
    return MAX_TILE if request.image.pipeline in PANORAMA_PIPELINES else request.image.unet_tile


def build_txt2img(request: ParsedRequest, *, image_format: str, thumbnail_size: int) -> BuiltChain:
    """txt2img: generate (a panorama then denoised, as onnx-web does), then correction/highres/upscaling
    as asked (contract §8.1)."""
    stages = [stage("txt2img", "source-txt2img", {**image_params(request), "prompt_index": 0})]
    if request.image.pipeline in PANORAMA_PIPELINES:
        # As onnx-web: non-local means (OpenCV's h = 3) takes the grain MultiDiffusion's averaged
        # windows leave, before anything enlarges it.
        stages.append(stage("denoise", "blend-denoise", {"strength": PANORAMA_DENOISE}))
    stages.extend(_refine(request))
    return _legacy("txt2img", request, stages, image_format=image_format, thumbnail_size=thumbnail_size)


def build_img2img(
    request: ParsedRequest, source_size: tuple[int, int], *, image_format: str, thumbnail_size: int
) -> BuiltChain:
    """img2img: filter the source, img2img at ``strength``, loopback passes, then refine (contract §8.2)."""
    assert request.img2img is not None
    image = {**image_params(request), "overlap": request.image.vae_overlap}
    loop = {**refine_params(request), "overlap": request.image.vae_overlap}
    strength = request.img2img.strength
    tiles = _diffusion_tiles(request)
    stages = []
    if request.img2img.source_filter != "none":
        stages.append(
            stage("filter", "edit-filter", {"filter": request.img2img.source_filter, "seed": image["seed"]})
        )
    stages.append(
        stage(
            "img2img",
            "blend-img2img",
            {**image, "strength": strength, "prompt_index": 0},
            tiles=tiles,
        )
    )
    stages.extend(upscale_stages(request, when="before"))
    stages.extend(
        stage(
            f"loopback-{index}",
            "blend-img2img",
            {**loop, "strength": strength, "prompt_index": 0},
            tiles=tiles,
        )
        for index in range(request.image.loopback)
    )
    stages.extend([*highres_stages(request), *upscale_stages(request, when="after")])
    return _legacy(
        "img2img",
        request,
        stages,
        image_format=image_format,
        thumbnail_size=thumbnail_size,
        sources=["source"],
        inputs={"source": "source"},
        input_size=source_size,
    )


def build_inpaint(
    request: ParsedRequest, source_size: tuple[int, int], *, image_format: str, thumbnail_size: int
) -> BuiltChain:
    """inpaint/outpaint: grow and fill the canvas, inpaint in tiles, then refine (contract §8.3)."""
    assert request.inpaint is not None
    paint = request.inpaint
    image = image_params(request)
    expand = {
        **request.border.to_dict(),
        "fill_color": paint.fill_color,
        "noise_source": paint.noise_source,
        "mask_filter": paint.mask_filter,
        "target": "inpaint",
        "seed": image["seed"],
    }
    stages = [
        stage("expand", "edit-expand", expand),
        stage(
            "inpaint",
            "upscale-outpaint",
            {
                **image,
                "prompt_index": 0,
                "fill_color": paint.fill_color,
                "tile_order": paint.tile_order,
                "overlap": request.image.vae_overlap,
                # Full-res inpainting only without a border: outpainting repaints the edges.
                "fullres": paint.fullres_inpaint and not any(request.border.to_dict().values()),
                "fullres_padding": paint.fullres_inpaint_padding,
            },
            tiles=_diffusion_tiles(request),
        ),
        *_refine(request),
    ]
    border = request.border
    metadata = {"border": border.to_dict()}
    return _legacy(
        "inpaint",
        request,
        stages,
        image_format=image_format,
        thumbnail_size=thumbnail_size,
        sources=["source"],
        inputs={"source": "source", "mask:inpaint": "mask"},
        input_size=source_size,
        metadata=metadata,
    )


def build_upscale(
    request: ParsedRequest, source_size: tuple[int, int], *, image_format: str, thumbnail_size: int
) -> BuiltChain:
    """upscale: correction, highres and upscaling of the uploaded source (contract §8.5)."""
    return _legacy(
        "upscale",
        request,
        _refine(request),
        image_format=image_format,
        thumbnail_size=thumbnail_size,
        sources=["source"],
        inputs={"source": "source"},
        input_size=source_size,
    )


def build_blend(
    request: ParsedRequest, source_size: tuple[int, int], *, image_format: str, thumbnail_size: int
) -> BuiltChain:
    """blend: ``source:1`` over ``source:0`` where the mask is white, then correction/upscaling."""
    stages = [
        stage("blend", "blend-mask", {}),
        *upscale_stages(request, when="before"),
        *upscale_stages(request, when="after"),
    ]
    inputs = {"source:0": "source:0", "source:blend": "source:1", "mask:blend": "mask"}
    return _legacy(
        "blend",
        request,
        stages,
        image_format=image_format,
        thumbnail_size=thumbnail_size,
        sources=["source:0"],
        inputs=inputs,
        input_size=source_size,
    )


def _legacy(
    kind: str,
    request: ParsedRequest,
    stages: list[dict[str, Any]],
    *,
    image_format: str,
    thumbnail_size: int,
    sources: list[str] | None = None,
    inputs: dict[str, str] | None = None,
    input_size: tuple[int, int] | None = None,
    metadata: dict[str, Any] | None = None,
) -> BuiltChain:
    """A legacy route's chain: its stages, then ``persist-disk`` saving every final image."""
    check_route_pipeline(kind, request.image.pipeline)
    check_prompts(request)
    stages = [*stages, stage("save", "persist-disk", {})]
    width, height = input_size or (request.image.width, request.image.height)
    metadata = {"input_size": {"width": width, "height": height}, **(metadata or {})}
    if request.highres is not None and request.highres.enabled:
        metadata["highres"] = request.highres.to_dict()
    if request.upscale.upscale or request.upscale.faces:
        metadata["upscale"] = request.upscale.to_dict()
    chain = {
        "version": 1,
        "kind": kind,
        "stages": stages,
        "sources": sources or [],
        "output": output_settings(request, image_format, thumbnail_size),
        "metadata": metadata,
    }
    return BuiltChain(kind, chain, request, request.image.model, request.device.platform, inputs or {})


# -- the chain language (contract §10) -------------------------------------------------------


def _json_path(error: jsonschema.ValidationError) -> str:
    return "".join(
        f"[{part}]" if isinstance(part, int) else f".{part}" for part in error.absolute_path
    ).lstrip(".")


def _schema_rule(error: jsonschema.ValidationError) -> str:
    """The rule a schema error broke, in words; jsonschema's own message quotes the whole value."""
    limit = error.validator_value
    rules = {
        "maxItems": f"must have at most {limit} items",
        "minItems": f"must have at least {limit} item(s)",
        "maxLength": f"must be at most {limit} characters",
        "minLength": f"must be at least {limit} character(s)",
        "type": f"must be of type {' or '.join(limit) if isinstance(limit, list) else limit}",
        "enum": f"must be one of {', '.join(map(str, limit)) if isinstance(limit, list) else limit}",
        "pattern": f"must match {limit}",
    }
    return rules.get(str(error.validator), error.message)


def validate_chain_document(doc: object) -> dict[str, Any]:
    """Check a chain document against the schema; 400 naming the path of the first bad field."""
    if not isinstance(doc, dict):
        raise InvalidParams("chain", "must be a JSON object with a 'stages' array")
    error = jsonschema.exceptions.best_match(_VALIDATOR.iter_errors(doc))
    if error is not None:
        raise InvalidParams(_json_path(error) or "chain", _schema_rule(error))
    names = [entry["name"] for entry in doc["stages"]]
    duplicate = next((name for name in names if names.count(name) > 1), None)
    if duplicate:
        raise InvalidParams("stages", f"stage names must be unique, {duplicate!r} repeats")
    return doc


def own_size(stage_type: StageType) -> bool:
    """Whether a stage's ``width``/``height`` are its own (grid cells, crop box, thumbnail box, noise
    size) rather than the image size the image parameters describe."""
    return "image" not in stage_type.groups and any(param.name == "width" for param in stage_type.params)


_OUTSCALE = integer("outscale", 1, 4, 1)


#: onnx-web's stages read the upscale group's snake-case names from their raw params too (contract
#: §10.3): here they are the flat names, which win where both are given.
SNAKE_CASE_UPSCALE_KEYS = {
    "upscale_model": "upscaling",
    "correction_model": "correction",
    "face_strength": "faceStrength",
    "face_outscale": "faceOutscale",
    "upscale_order": "upscaleOrder",
}


def snake_case_upscale_keys(raw: Mapping[str, Any]) -> dict[str, Any]:
    """``raw`` with each snake-case upscale key under its flat name, unless that is given too."""
    renamed = {SNAKE_CASE_UPSCALE_KEYS.get(key, key): value for key, value in raw.items()}
    return {**renamed, **{key: raw[key] for key in SNAKE_CASE_UPSCALE_KEYS.values() if key in raw}}


def stage_specific(stage_type: str, path: str, raw: Mapping[str, Any]) -> dict[str, Any]:
    """Check the stage-specific keys of one stage."""
    try:
        values = STAGES[stage_type].resolve(raw, path)
    except ParamError as err:
        raise InvalidParams(err.field, err.rule) from err
    if stage_type == "text-prompt" and values.get("remove_tokens"):
        try:
            re.compile(str(values["remove_tokens"]))
        except re.error as err:
            raise InvalidParams(f"{path}.remove_tokens", f"must be a regular expression: {err}") from err
    if stage_type == "source-url":
        # Refuse what can be refused without the network now, rather than fail the job later.
        for url in str(values["source_urls"]).split(","):
            try:
                parse_source_url(url.strip())
            except SourceURLError as err:
                raise InvalidParams(f"{path}.source_urls", str(err)) from err
    return values


def _parse_at(
    parse: Callable[[str, Mapping[str, Any]], ParsedRequest], path: str, raw: Mapping[str, Any]
) -> ParsedRequest:
    """Parse one stage's flat parameters, naming bad fields by their path in the document."""
    try:
        request = parse("txt2img", raw)
        check_prompts(request)
    except InvalidParams as err:
        raise InvalidParams(f"{path}.{err.field}", err.rule) from err
    return request


def check_image_flow(stages: Sequence[Mapping[str, Any]], uploads: frozenset[str]) -> None:
    """400 for the first stage that would run without images: no earlier stage makes any, and it
    does not start from its own upload. It would fail in the worker or make nothing."""
    has_images = False
    for index, entry in enumerate(stages):
        stage_type, name = entry["type"], entry["name"]
        has_images = has_images or stage_type in SOURCES
        has_images = has_images or (stage_type in FROM_UPLOAD and f"source:{name}" in uploads)
        if not has_images and stage_type not in TEXT_ONLY:
            upload = f" and no 'source:{name}' image is uploaded" if stage_type in FROM_UPLOAD else ""
            raise InvalidParams(
                f"stages[{index}]",
                f"stage type {stage_type} has no image to work on: no earlier stage makes one{upload}",
            )


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
        # onnx-web's snake-case upscale names as the flat ones, each side first, so that a stage's
        # own value wins over the defaults' whichever way either is spelt.
        raw = {**snake_case_upscale_keys(defaults), **snake_case_upscale_keys(entry["params"])}
        stage_type = entry["type"]
        if stage_type == "upscale-highres":
            # A compound stage: compiled here into its resize and img2img passes (contract §8.4),
            # so the worker runs only plain stages and progress counts each pass.
            stages.extend(
                highres_stages(_parse_at(parse, path, {**raw, "highres": True}), prefix=entry["name"])
            )
            continue
        if stage_type in PLANNED:
            raise NotImplementedYet(f"this server cannot run these stages yet: {stage_type}")
        declared = STAGES[stage_type]
        if declared.default_model and not raw.get(declared.model or ""):
            # Its own model when the stage names none (CodeFormer's one checkpoint), checked as named.
            raw = {**raw, str(declared.model): declared.default_model}
        # A stage's own params are checked by its declaration, not as the flat params they may share
        # a name with (blend-denoise's strength of 0-100 is no img2img strength; a grid's width is
        # no image width).
        own = {param.name for param in declared.params} - {
            param.name for group in declared.groups for param in GROUPS[group]
        }
        parsed = _parse_at(parse, path, {key: value for key, value in raw.items() if key not in own})
        if raw.get("seed") == -1:
            # A random seed, as onnx-web drops -1 and every stage then draws one: this stage's.
            raw = {**raw, "seed": parsed.image.seed}
        specific = stage_specific(stage_type, path, raw)
        for needed in STAGES[stage_type].needs:
            if f"{needed}:{entry['name']}" not in uploads:
                raise InvalidParams(
                    f"stages[{index}]",
                    f"stage type {stage_type} needs an uploaded '{needed}:{entry['name']}' image",
                )
        try:
            tiles = parse_tiles(raw.get("tiles"))
        except ValueError as err:
            raise InvalidParams(f"{path}.tiles", str(err)) from err
        try:
            outscale = int(_OUTSCALE.check(f"{path}.outscale", raw.get("outscale", 1)))
        except ParamError as err:
            raise InvalidParams(err.field, err.rule) from err
        if declared.model == "upscaling" and not parsed.upscale.upscale_model:
            raise InvalidParams(f"{path}.upscaling", f"{stage_type} needs an upscaling model")
        if declared.model == "correction" and not parsed.upscale.correction_model:
            raise InvalidParams(f"{path}.correction", f"{stage_type} needs a correction model")
        params = {**image_params(parsed), **parsed.upscale.to_dict(), **specific}
        stages.append(stage(entry["name"], stage_type, params, tiles=tiles, outscale=outscale))
    check_image_flow(doc["stages"], uploads)
    chain = {
        "version": 1,
        "kind": "chain",
        "stages": stages,
        "output": output_settings(base, image_format, thumbnail_size),
        "metadata": {"input_size": {"width": base.image.width, "height": base.image.height}},
    }
    model = next(
        (entry["params"].get("model") for entry in stages if entry["type"] == "source-txt2img"),
        base.image.model,
    )
    platform = base.device.platform
    if doc.get("platform"):
        # Checked as the flat parameter is (a known, unblocked platform), and named as the document's.
        platform = parse("txt2img", {**defaults, "platform": doc["platform"]}).device.platform
    # Uploads are named <kind>:<stage name>; one for no stage of this chain is never decoded or stored.
    names = {entry["name"] for entry in doc["stages"]}
    used = {name: name for name in uploads if name.partition(":")[2] in names}
    return BuiltChain("chain", chain, base, model, platform, used)
