"""The image request and the chain document as JSON schema, generated from the code's declarations.

Nothing here repeats a range, a default or a list of choices: ranges and defaults are ``params.json``'s
(``load_params_doc``), choices the tuples ``service.params`` checks against, model names the
registry's. Each field becomes a ``pipelines.stages.spec.Param``, whose ``schema()`` is also what
``/api/settings/stages`` publishes; the chain document is ``service.chains.CHAIN_SCHEMA`` with each
stage type's parameters from ``pipelines.stages.stage_catalogue``.

What this module does write down is which keys the parser reads in which group (``GROUPS``);
``tests/unit/service/test_openapi.py`` checks that list against what ``parse_request`` reads.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from pipelines.diffusion.schedulers import SCHEDULER_NAMES
from pipelines.models.registry import ModelRegistry
from pipelines.stages import STAGES, stage_catalogue
from pipelines.stages.spec import Param
from service.chains import CHAIN_SCHEMA, own_size
from service.config import Config
from service.params import (
    HIGHRES_METHODS,
    MASK_FILTERS,
    MAX_PROMPT_LENGTH,
    NOISE_SOURCES,
    PIPELINES,
    PLATFORMS,
    PROMPT_FILTERS,
    SIZE_MULTIPLE,
    TILE_ORDERS,
    UPSCALE_ORDERS,
    source_filters,
)

#: Where the schemas referred to here live in the OpenAPI document.
COMPONENTS = "#/components/schemas/"
SIZE_KEYS = ("width", "height")
FieldKind = Literal["int", "size", "number", "bool", "choice", "name", "text", "color"]


@dataclass(frozen=True)
class Field:
    """One key of the image request and how ``service.params`` reads it."""

    key: str
    kind: FieldKind
    #: The allowed values of a ``choice``.
    choices: tuple[str, ...] = ()
    #: Where a ``name``'s values come from: a model kind of the registry, ControlNets, platforms, or the
    #: source filters that run with the installed annotator models.
    names: Literal["diffusion", "upscaling", "correction", "control", "platform", "filter"] | None = None
    #: The ``params.json`` entry holding its default and range, when it is not the key itself.
    spec: str | None = None
    #: ``null`` is a value of its own (not "use the default").
    nullable: bool = False


IMAGE_FIELDS = (
    Field("model", "name", names="diffusion"),
    Field("pipeline", "choice", PIPELINES),
    Field("scheduler", "choice", SCHEDULER_NAMES),
    Field("prompt", "text"),
    Field("negativePrompt", "text", nullable=True),
    Field("batch", "int"),
    Field("cfg", "number"),
    Field("eta", "number"),
    Field("loopback", "int"),
    Field("steps", "int"),
    Field("seed", "int"),
    Field("tiled_vae", "bool"),
    Field("thumbnail", "bool"),
    Field("unet_tile", "int"),
    Field("unet_overlap", "number"),
    Field("vae_tile", "int"),
    Field("vae_overlap", "number"),
    Field("control", "name", names="control"),
    Field("width", "size"),
    Field("height", "size"),
)
#: The upscaling and correction model names, read from the upscale group or else from ``params``.
MODEL_FIELDS = (
    Field("upscaling", "name", names="upscaling"),
    Field("correction", "name", names="correction"),
)
#: img2img's and inpaint's own keys; every route checks them, only those two use them.
ROUTE_FIELDS = (
    Field("strength", "number"),
    Field("sourceFilter", "name", names="filter"),
    Field("fillColor", "color"),
    Field("filter", "choice", MASK_FILTERS),
    Field("noise", "choice", NOISE_SOURCES),
    Field("tileOrder", "choice", TILE_ORDERS),
    Field("fullresInpaint", "bool"),
    Field("fullresInpaintPadding", "number"),
)
#: Each group of the request data (contract §3.1) and the keys read from it, on every image route.
GROUPS: Mapping[str, tuple[Field, ...]] = {
    "device": (Field("platform", "name", names="platform"),),
    "params": (*IMAGE_FIELDS, *ROUTE_FIELDS),
    "border": tuple(Field(side, "int") for side in ("left", "right", "top", "bottom")),
    "upscale": (
        Field("upscale", "bool"),
        *MODEL_FIELDS,
        Field("denoise", "number"),
        Field("faces", "bool"),
        Field("faceOutscale", "int"),
        Field("faceStrength", "number"),
        Field("outscale", "int"),
        Field("scale", "int"),
        Field("upscaleOrder", "choice", UPSCALE_ORDERS),
    ),
    "highres": (
        Field("highres", "bool"),
        Field("highresIterations", "int"),
        Field("highresMethod", "choice", HIGHRES_METHODS),
        Field("highresScale", "int"),
        Field("highresSteps", "int"),
        Field("highresStrength", "number"),
    ),
}
#: The GUI's nested name of the upscale switch (contract §14 item 1).
UPSCALE_ENABLED = Field("enabled", "bool", spec="upscale")
#: The experimental group's two objects.
EXPERIMENTAL: Mapping[str, tuple[Field, ...]] = {
    "latentSymmetry": (
        Field("enabled", "bool"),
        Field("gradientStart", "number"),
        Field("gradientEnd", "number"),
        Field("lineOfSymmetry", "number"),
    ),
    "promptEditing": (
        Field("enabled", "bool", spec="promptEditing"),
        Field("promptFilter", "choice", ("none", *PROMPT_FILTERS), spec="promptEditing.filter"),
        Field("removeTokens", "text"),
        Field("addSuffix", "text"),
        Field("minLength", "int"),
    ),
}

#: Every key the top level of an image request's data object may hold: the flat keys and the names
#: of the groups.
REQUEST_KEYS = frozenset(
    {
        *(field.key for fields in GROUPS.values() for field in fields),
        *(field.key for field in MODEL_FIELDS),
        *GROUPS,
        "experimental",
        *EXPERIMENTAL,
    }
)


def _entry(doc: Mapping[str, Any], path: str) -> Mapping[str, Any]:
    node: Any = doc
    for part in path.split("."):
        node = node.get(part, {}) if isinstance(node, dict) else {}
    return node if isinstance(node, dict) else {}


def schema_ref(name: str) -> dict[str, str]:
    """A reference to the document's schema ``name``."""
    return {"$ref": COMPONENTS + name}


class RequestSchemas:
    """The request schemas of one app: its configuration, ``params.json`` and models."""

    def __init__(self, config: Config, params_doc: Mapping[str, Any], registry: ModelRegistry) -> None:
        self.config = config
        self.params_doc = params_doc
        self.registry = registry

    def names(self, field: Field) -> tuple[str, ...]:
        """The values a ``name`` field accepts now."""
        if field.names == "platform":
            return tuple(name for name in PLATFORMS if name not in self.config.block_platforms)
        if field.names == "control":
            return tuple(network.name for network in self.registry.networks("control"))
        if field.names == "filter":
            return source_filters(self.registry)
        assert field.names is not None
        return self.registry.names(field.names)

    def param(self, field: Field, prefix: str = "") -> Param:
        """The field as a stage-spec ``Param``, with its range and default from ``params.json``."""
        entry = _entry(self.params_doc, field.spec or prefix + field.key)
        default = entry.get("default")
        if field.kind in ("int", "size"):
            return Param(field.key, "int", entry["min"], entry["max"], default=default)
        if field.kind == "number":
            return Param(field.key, "number", entry["min"], entry["max"], default=default)
        if field.kind == "bool":
            return Param(field.key, "bool", default=bool(default))
        if field.kind == "text":
            # The prompt's params.json default is the GUI's placeholder: an absent prompt is empty.
            default = None if field.key == "prompt" else default
            return Param(field.key, "text", 0, MAX_PROMPT_LENGTH, default=default)
        if field.kind == "color":
            return Param(field.key, "color", default=default)
        choices = field.choices if field.kind == "choice" else self.names(field)
        # A default this server lacks (a model, the route's own pipeline) is described, not listed.
        return Param(field.key, "choice", choices=choices, default=default if default in choices else None)

    def field_schema(self, field: Field, prefix: str = "") -> dict[str, Any]:
        """One field's JSON schema; names and choices also take ``""`` or ``null`` for the default."""
        schema = self.param(field, prefix).schema()
        if field.kind == "size":
            schema["multipleOf"] = SIZE_MULTIPLE
            schema["description"] = (
                f"a multiple of {SIZE_MULTIPLE}; width x height at most {self.config.max_image_pixels} pixels"
            )
        elif field.key == "seed":
            schema["description"] = "-1 draws a random seed"
        elif field.key == "pipeline":
            schema["description"] = "default: the route's own (txt2img for blend, txt2txt and chain stages)"
        elif field.key == "unet_tile":
            schema["description"] = "pixels: the tile of tiled diffusion stages, and a panorama's window"
        elif field.key == "unet_overlap":
            schema["description"] = "a panorama's windows start unet_tile x (1 - unet_overlap) pixels apart"
        elif field.nullable:
            schema["type"] = ["string", "null"]
        elif field.key == "removeTokens":
            schema["format"] = "regex"
        if field.kind in ("choice", "name"):
            schema["enum"] = [*schema["enum"], "", None]
        return schema

    def fields(self, fields: Sequence[Field], prefix: str = "") -> dict[str, Any]:
        return {field.key: self.field_schema(field, prefix) for field in fields}

    def flat_fields(self) -> dict[str, Any]:
        """Every scalar key of the image request, as the flat layouts send them."""
        properties: dict[str, Any] = {}
        for group in GROUPS.values():
            properties.update(self.fields(group))
        return properties

    def request(self) -> dict[str, Any]:
        """The request data object of the image routes: flat keys, nested groups, or both."""
        flat = self.flat_fields()
        experimental = {
            name: {"type": "object", "properties": self.fields(fields, prefix=f"{name}.")}
            for name, fields in EXPERIMENTAL.items()
        }
        nested: dict[str, Any] = {
            name: {"type": "object", "properties": self.fields(fields)} for name, fields in GROUPS.items()
        }
        nested["params"]["properties"].update(self.fields(MODEL_FIELDS))
        nested["upscale"]["properties"]["enabled"] = self.field_schema(UPSCALE_ENABLED)
        nested["experimental"] = {"type": "object", "properties": experimental}
        properties = {**flat, **nested, **experimental}
        # ``upscale`` and ``highres`` are a flat switch or a nested group.
        for switch in ("upscale", "highres"):
            properties[switch] = {"anyOf": [flat[switch], nested[switch]]}
        return {
            "type": "object",
            "description": (
                "Keys may be flat or in their groups (device, params, border, upscale, highres, "
                "experimental); numbers may also be sent as numeric strings and booleans as "
                "true/false/yes/no/1/0 (contract §3.1). Every route checks every key; each uses those "
                "of its task."
            ),
            "properties": properties,
        }

    def text_fields(self) -> dict[str, Any]:
        """The flat keys as a query string or a form sends them: no ``null``."""
        fields = {}
        for key, schema in self.flat_fields().items():
            text_schema = dict(schema)
            if "enum" in text_schema:
                text_schema["enum"] = [value for value in text_schema["enum"] if value is not None]
            if text_schema.get("type") == ["string", "null"]:
                text_schema["type"] = "string"
            fields[key] = text_schema
        return fields

    # -- the chain language ------------------------------------------------------------------

    def chain(self) -> dict[str, Any]:
        """``CHAIN_SCHEMA`` with ``defaults`` as a txt2img request and each stage type's parameters.

        Every stage's params are also read as a flat txt2img request (``ImageFields``), except the
        size of stages whose ``width``/``height`` are their own (grid cells, crop box, ...).
        """
        doc = copy.deepcopy(CHAIN_SCHEMA)
        doc["properties"]["defaults"] = {
            **schema_ref("ImageRequest"),
            "description": "merged into every stage's params",
        }
        size = {field.key: self.field_schema(field) for field in IMAGE_FIELDS if field.key in SIZE_KEYS}
        per_type = []
        for name, entry in stage_catalogue().items():
            own = entry.get("params", {})
            stage_type = STAGES.get(name)
            sized = {} if stage_type is not None and own_size(stage_type) else size
            params = {"allOf": [schema_ref("ImageFields")], "properties": {**sized, **own}}
            per_type.append({"properties": {"type": {"const": name}, "params": params}})
        doc["properties"]["stages"]["items"]["anyOf"] = per_type
        return doc

    def image_fields(self) -> dict[str, Any]:
        """The flat txt2img keys every stage's params may set, but for the size."""
        flat = self.flat_fields()
        return {"type": "object", "properties": {k: v for k, v in flat.items() if k not in SIZE_KEYS}}
