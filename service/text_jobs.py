"""The txt2txt route and the model names of the text and safety stages (``text-prompt``, ``edit-safety``).

A txt2txt request is an image request (contract §3.2, so the GUI's layouts and ``seed`` work as on
every route) whose ``model`` names a text model, plus the sampling keys of ``TEXT_FIELDS``. Their
ranges and defaults are the ``text-generate`` stage's own declarations (``SAMPLING``), so the
route, the stage and the OpenAPI document cannot disagree. The job is a chain of one
``text-generate`` stage; its output is the text (``<job>_0.txt``), its metadata the text too.

The feature flags of contract §12.3 add these stages to the legacy routes (§8): ``prompt-filter``
lets txt2img's ``experimental.promptEditing`` run ``text-prompt`` before the image is made;
``horde-safety`` runs ``edit-safety`` over every legacy route's results before they are saved,
recording its verdict (and failing a ``csam`` one), and ``horde-safety-nsfw`` also blacks out the
flagged images.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any

from pipelines.models.registry import ModelKind, ModelRegistry
from pipelines.stages.spec import Param, ParamError
from pipelines.stages.text_generate import SAMPLING
from service import chains
from service.errors import InvalidParams, Unavailable
from service.params import ParsedRequest

#: Request key -> the ``text-generate`` parameter it sets (camelCase, as the request's other keys).
TEXT_FIELDS: Mapping[str, Param] = {
    "maxTokens": SAMPLING[0],
    "temperature": SAMPLING[1],
    "topK": SAMPLING[2],
    "topP": SAMPLING[3],
}
PROMPT_FILTER_FLAG = "prompt-filter"
SAFETY_FLAG = "horde-safety"
SAFETY_NSFW_FLAG = "horde-safety-nsfw"
#: The routes ``horde-safety`` checks: every legacy image route.
SAFETY_ROUTES = frozenset({"txt2img", "img2img", "inpaint", "upscale", "blend"})
#: The model parameter of each stage type that names a text or safety model, and that model's kind.
STAGE_MODELS: Mapping[str, tuple[str, ModelKind]] = {
    "text-prompt": ("prompt_filter", "text"),
    "edit-safety": ("safety_model", "safety"),
}


def find_model(registry: ModelRegistry, kind: ModelKind, name: str | None, field: str) -> str:
    """The path of the ``kind`` model ``name`` (the first one listed when ``None``), or a 400.

    A Hugging Face id (``AUTOMATIC/promptgen-lexart``, as onnx-web's prompt filters are named)
    finds the converted model of its last part.
    """
    listed = registry.names(kind)
    if name is None:
        if not listed:
            raise InvalidParams(field, f"no {kind} model is installed on this server")
        name = listed[0]
    path = registry.find_model(kind, name) or registry.find_model(kind, name.rsplit("/", 1)[-1])
    if path is None:
        raise InvalidParams(field, f"no {kind} model {name[:60]!r}; available: {', '.join(listed) or 'none'}")
    return path


def _text_model_name(data: Mapping[str, Any]) -> tuple[str | None, dict[str, Any]]:
    """The ``model`` the request names (flat or in ``params``), and the request without it."""
    rest = dict(data)
    group = rest.get("params")
    name = rest.pop("model", None)
    if isinstance(group, dict) and "model" in group:
        group = dict(group)
        name = group.pop("model")
        rest["params"] = group
    if name is not None and not isinstance(name, str):
        raise InvalidParams("model", f"must be a string, got {type(name).__name__}")
    return name or None, rest


def sampling_params(data: Mapping[str, Any]) -> dict[str, Any]:
    """The sampling keys of a request (flat or in ``params``), checked against the stage's ranges."""
    group = data.get("params")
    values = {**data, **group} if isinstance(group, dict) else dict(data)
    resolved = {}
    for key, param in TEXT_FIELDS.items():
        value = values.get(key)
        try:
            resolved[param.name] = param.default if value is None or value == "" else param.check(key, value)
        except ParamError as err:
            raise InvalidParams(err.field, err.rule) from err
    return resolved


def build_txt2txt(
    data: Mapping[str, Any],
    parse: Callable[[str, Mapping[str, Any]], ParsedRequest],
    registry: ModelRegistry,
) -> chains.BuiltChain:
    """The chain of a txt2txt request: one ``text-generate`` stage."""
    name, image_data = _text_model_name(data)
    model = find_model(registry, "text", name, "model")
    sampling = sampling_params(data)
    listed = registry.names("diffusion")
    if listed:
        # The image group's ``model`` is a diffusion model the parser insists on; here it names
        # nothing the job runs, so any listed one lets the group's other keys be checked, rather
        # than the params.json default, which this server may not have.
        image_data = {**image_data, "model": listed[0]}
    request = parse("txt2txt", image_data)
    # The job is named after the text model, as an image job is after its diffusion model.
    request = replace(request, image=replace(request.image, model=model))
    image = request.image
    stage = chains.stage(
        "txt2txt",
        "text-generate",
        {"text_model": model, "prompt": image.input_prompt, "seed": image.seed, **sampling},
    )
    chain = {
        "version": 1,
        "kind": "txt2txt",
        "stages": [stage],
        "output": {"format": "txt", "thumbnail": False},
        "metadata": {"input_size": {"width": 0, "height": 0}},
    }
    return chains.BuiltChain("txt2txt", chain, request, model, request.device.platform)


def resolve_stage_models(
    chain: Mapping[str, Any], registry: ModelRegistry, paths: Mapping[str, str] | None = None
) -> None:
    """Replace each text and safety stage's model name by its path, or answer 400 naming the field."""
    for entry in chain["stages"]:
        declared = STAGE_MODELS.get(entry["type"])
        if declared is None:
            continue
        key, kind = declared
        where = f"{paths[entry['name']]}.params." if paths and entry["name"] in paths else ""
        entry["params"][key] = find_model(registry, kind, str(entry["params"][key]), where + key)


def add_flagged_stages(
    built: chains.BuiltChain, route: str, flags: tuple[str, ...], registry: ModelRegistry
) -> None:
    """Add the stages the feature flags ask for to a legacy route's chain (contract §8.1, §12.3)."""
    stages: list[dict[str, Any]] = built.chain["stages"]
    editing = built.request.experimental.prompt_editing
    if route == "txt2img" and PROMPT_FILTER_FLAG in flags and editing.enabled and editing.filter != "none":
        model = find_model(registry, "text", editing.filter, "promptEditing.promptFilter")
        params = {
            **chains.image_params(built.request),
            "prompt_filter": model,
            "remove_tokens": editing.remove_tokens,
            "add_suffix": editing.add_suffix,
            "min_length": editing.min_length,
        }
        stages.insert(0, chains.stage("prompt-filter", "text-prompt", params))
    if route in SAFETY_ROUTES and SAFETY_FLAG in flags:
        if not registry.names("safety"):
            # The server promises a check it cannot run: no image leaves it unchecked (503, not a 400:
            # the request is fine, the server is not ready for it).
            raise Unavailable(f"feature flag {SAFETY_FLAG} is on but no safety model is installed (safety/)")
        model = find_model(registry, "safety", None, "safety")
        action = "black" if SAFETY_NSFW_FLAG in flags else "mark"
        # Before the save stage, so what is saved is what was checked.
        at = len(stages) - 1 if stages and stages[-1]["type"] == "persist-disk" else len(stages)
        stages.insert(at, chains.stage("safety", "edit-safety", {"safety_model": model, "action": action}))
