"""The OpenAPI 3.1 document of this api (``GET /api/openapi.json``), generated from the code.

The paths and their methods are the running app's own routes (``falcon.inspect``): a route this
module does not describe makes ``build_document`` fail, and so its unit test. The request bodies
and parameters are ``service.request_schema``'s, built from ``params.json``, the parser's choices
and the stage declarations; the error answers are ``service.errors.HTTP_STATUS``'s plus those of
the front (gunicorn's limits, the body cap).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import falcon
import falcon.inspect

from pipelines.diffusion.schedulers import SCHEDULER_NAMES
from pipelines.models.registry import ModelRegistry
from service.config import MAX_JOBS_PER_CALL, Config
from service.errors import HTTP_STATUS
from service.jobs.states import JobState
from service.output_names import OUTPUT_NAME
from service.params import AVAILABLE_PIPELINES, MASK_FILTERS, NOISE_SOURCES, PROMPT_FILTERS, source_filters
from service.request_schema import RequestSchemas
from service.resources.jobs import LIST_LIMIT, LIST_MAX
from service.resources.submit import REQUIRED_FILES, SUBMIT_ROUTES
from service.text_jobs import TEXT_FIELDS

OPENAPI_VERSION = "3.1.0"
JSON = falcon.MEDIA_JSON
MULTIPART = falcon.MEDIA_MULTIPART
#: Statuses any request can get before it reaches its route: a query string the api refuses (NUL,
#: unpaired surrogates) or one gunicorn cannot parse, the body cap, request line and header limits,
#: rate limiting.
ANY_REQUEST = (400, 413, 414, 429, 431)
#: Errors that are not ``ServiceError``s: gunicorn's (``service.http_worker``) and the front's.
OTHER_ERRORS = {
    400: "The request is malformed.",
    413: "The request body is larger than the api accepts.",
    414: "The request line is too long.",
    429: "Too many requests: retry later.",
    431: "The request's header fields are too large.",
}
#: ``GET /api/settings/limits``'s keys (``service.resources.settings.upload_limits``), described.
LIMIT_DESCRIPTIONS = {
    "maxBodyBytes": "Bytes of the whole request body; more is a 413 before the body is read.",
    "maxImagePixels": (
        "Pixels (width times height) of one uploaded image (more is a 413) and of the size asked for (a 400)."
    ),
    "maxImageSide": "Pixels of an uploaded image's longer side; more is a 400 naming the field.",
    "maxOutputPixels": "Pixels of any image a job makes at any stage; more is a 400 naming the parameter.",
}
JOB_STATUSES = [*(state.value for state in JobState), "unknown"]


def _ref(name: str, section: str = "schemas") -> dict[str, str]:
    return {"$ref": f"#/components/{section}/{name}"}


def _object(properties: Mapping[str, Any], *required: str) -> dict[str, Any]:
    """A JSON object schema with these ``properties``, of which ``required`` must be present."""
    return {
        "type": "object",
        **({"required": list(required)} if required else {}),
        "properties": dict(properties),
    }


def _list_of(items: Mapping[str, Any]) -> dict[str, Any]:
    return {"type": "array", "items": dict(items)}


def _text(*names: str) -> dict[str, Any]:
    """String properties ``names``."""
    return {name: {"type": "string"} for name in names}


def _json(schema: Any, description: str = "OK") -> dict[str, Any]:
    return {"description": description, "content": {JSON: {"schema": schema}}}


def _query(
    name: str, schema: Mapping[str, Any], description: str, *, required: bool = False
) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": required, "description": description, "schema": schema}


def _operation_id(method: str, path: str) -> str:
    words = re.findall(r"[A-Za-z0-9]+", path.replace(":path", "")) or ["index"]
    return method.lower() + "".join(word.capitalize() for word in words)


class _Document:
    """Builds the document's parts from one app's configuration, parameters and models."""

    def __init__(self, config: Config, params_doc: Mapping[str, Any], registry: ModelRegistry) -> None:
        self.config = config
        self.params_doc = params_doc
        self.requests = RequestSchemas(config, params_doc, registry)

    def query_parameters(self) -> dict[str, Any]:
        """The flat keys as query parameters, read when the body has no parameters."""
        return {
            key: _query(key, schema, "read when the body carries no parameters (a form's fields win)")
            for key, schema in self.requests.text_fields().items()
        }

    # -- operations --------------------------------------------------------------------------

    def errors(self, *statuses: int) -> dict[str, Any]:
        return {str(status): _ref(str(status), "responses") for status in sorted({*statuses, *ANY_REQUEST})}

    def submit(self, route: str) -> dict[str, Any]:
        """``POST /api/<route>`` and ``POST /api/job``."""
        chain = route == "chain"
        text = route == "txt2txt"
        body = _ref("ChainDocument" if chain else "TextRequest" if text else "ImageRequest")
        query = [] if chain else [_ref(key, "parameters") for key in self.requests.flat_fields()]
        if text:
            # txt2txt's ``model`` names a text model; its sampling keys are its own.
            query = [entry for entry in query if entry["$ref"] != _ref("model", "parameters")["$ref"]]
            query += [_query(key, schema, "txt2txt's own key") for key, schema in self.text_fields().items()]
        files = {
            name: {"type": "string", "format": "binary", "description": "an image Pillow can read"}
            for name in REQUIRED_FILES.get(route, ())
        }
        text_field = "chain" if chain else "json"
        multipart: dict[str, Any] = {
            "schema": {
                "type": "object",
                "properties": {text_field: body, **files},
                "required": [text_field] if chain else list(files),
            },
            "encoding": {text_field: {"contentType": JSON}},
        }
        if chain:
            multipart["schema"]["patternProperties"] = {
                "^(source|mask):.+$": {
                    "type": "string",
                    "format": "binary",
                    "description": "the upload a stage of that name reads",
                }
            }
        content: dict[str, Any] = {MULTIPART: multipart}
        if chain or not files:
            content = {JSON: {"schema": body}, **content}
        if not chain and not files:
            content[falcon.MEDIA_URLENCODED] = {"schema": _ref("TextForm" if text else "ImageForm")}
        operation: dict[str, Any] = {
            "tags": ["jobs"],
            "summary": f"Queue a {route} job" if route != "chain" else "Queue a chain pipeline job",
            "parameters": [
                {
                    "name": "Idempotency-Key",
                    "in": "header",
                    "required": False,
                    "description": "the same key with the same body answers the same job",
                    "schema": {"type": "string", "minLength": 1, "maxLength": 255},
                },
                *query,
            ],
            "requestBody": {"required": chain or bool(files), "content": content},
            "responses": {
                "200": _json(_ref("JobRecord"), "The job is committed and queued."),
                **self.errors(408, 409, 415, 503, *([501] if route == "chain" else [])),
            },
        }
        return operation

    def text_fields(self) -> dict[str, Any]:
        """txt2txt's own keys: the text ``model`` and the ``text-generate`` stage's sampling ranges."""
        models = self.requests.registry.names("text")
        fields: dict[str, Any] = {
            "model": {"enum": [*models, ""], "description": "a text model; default: the first listed"}
        }
        fields.update({key: param.schema() for key, param in TEXT_FIELDS.items()})
        return fields

    def text_request(self) -> dict[str, Any]:
        """The txt2txt request: an image request whose ``model`` is a text model, plus its own keys."""
        schema = self.requests.request()
        own = self.text_fields()
        schema["properties"].update(own)
        schema["properties"]["params"]["properties"].update(own)
        schema["description"] += " txt2txt: `model` names a text model; its sampling keys are its own."
        return schema

    def jobs_query(self) -> list[dict[str, Any]]:
        return [
            _query("jobs", {"type": "string"}, f"comma-separated job names, 1 to {MAX_JOBS_PER_CALL}"),
            _query("job", {"type": "string"}, "one more job name (legacy)"),
        ]

    def output_query(self) -> list[dict[str, Any]]:
        return [_query("output", {"type": "string", "minLength": 1}, "a job name", required=True)]

    def admin(self, summary: str, response: dict[str, Any], *statuses: int) -> dict[str, Any]:
        return {
            "tags": ["admin"],
            "summary": summary,
            "responses": {"200": response, **self.errors(503, *statuses)},
        }

    def settings(self, summary: str, schema: Any) -> dict[str, Any]:
        return {"tags": ["settings"], "summary": summary, "responses": {"200": _json(schema)}}

    def operations(self) -> dict[str, dict[str, Callable[[], dict[str, Any]]]]:
        """Falcon route template -> method -> its operation."""
        strings = {"type": "array", "items": {"type": "string"}}

        def enum_list(values: Sequence[str]) -> dict[str, Any]:
            return {"type": "array", "items": {"enum": list(values)}}

        table: dict[str, dict[str, Callable[[], dict[str, Any]]]] = {
            "/": {"GET": lambda: _gui("The GUI's index.html (a placeholder page when it is not built)")},
            "/{filename:path}": {"GET": lambda: _gui("A file of the GUI bundle", path_param=True)},
            "/output/{filename}": {"GET": self.output, "HEAD": self.output},
            "/api": {
                "GET": lambda: {
                    "tags": ["meta"],
                    "summary": "Every route and its methods (contract §4.2)",
                    "responses": {"200": _json(_ref("Introspection"))},
                }
            },
            "/api/openapi.json": {
                "GET": lambda: {
                    "tags": ["meta"],
                    "summary": "This document",
                    "responses": {"200": _json({"type": "object", "required": ["openapi", "paths"]})},
                }
            },
            "/api/docs": {
                "GET": lambda: {
                    "tags": ["meta"],
                    "summary": "This document, rendered (Swagger UI, bundled with the GUI)",
                    "responses": {
                        "200": {"description": "OK", "content": {"text/html": {"schema": {"type": "string"}}}}
                    },
                }
            },
            "/api/jobs": {
                "GET": lambda: {
                    "tags": ["jobs"],
                    "summary": "The caller's own jobs, newest first (with ONNX_WEB_AUTH=keys; else 404)",
                    "parameters": [
                        _query(
                            "status", {"enum": [state.value for state in JobState]}, "only jobs in this state"
                        ),
                        _query(
                            "limit",
                            {"type": "integer", "minimum": 1, "maximum": LIST_MAX, "default": LIST_LIMIT},
                            "jobs per page",
                        ),
                        _query("cursor", {"type": "string"}, "the previous page's next"),
                    ],
                    "responses": {
                        "200": _json(
                            {
                                "type": "object",
                                "required": ["jobs", "next"],
                                "properties": {
                                    "jobs": {"type": "array", "items": _ref("JobRecord")},
                                    "next": {"type": ["string", "null"]},
                                },
                            }
                        ),
                        **self.errors(404, 503),
                    },
                }
            },
            "/api/job/events": {
                "GET": lambda: {
                    "tags": ["jobs"],
                    "summary": "Server-sent events: a job record each time one of the jobs changes",
                    "parameters": self.jobs_query(),
                    "responses": {
                        "200": {
                            "description": "An event stream",
                            "content": {"text/event-stream": {"schema": {"type": "string"}}},
                        },
                        **self.errors(503),
                    },
                }
            },
            "/api/job/status": {
                "GET": lambda: {
                    "tags": ["jobs"],
                    "summary": "Status of jobs by name, in request order",
                    "parameters": self.jobs_query(),
                    "responses": {
                        "200": _json({"type": "array", "items": _ref("JobRecord")}),
                        **self.errors(400, 503),
                    },
                }
            },
            "/api/job/cancel": {
                "PUT": lambda: {
                    "tags": ["jobs"],
                    "summary": "Cancel jobs by name",
                    "parameters": self.jobs_query(),
                    "responses": {
                        "200": _json({"type": "array", "items": _ref("CancelRecord")}),
                        **self.errors(400, 503),
                    },
                }
            },
            "/api/job/preview": {
                "GET": lambda: {
                    "tags": ["jobs"],
                    "summary": "The running job's latest live preview (a status record's preview.url)",
                    "parameters": [
                        {"name": "job", "in": "query", "required": True, "schema": {"type": "string"}},
                        {"name": "step", "in": "query", "schema": {"type": "integer"}},
                    ],
                    "responses": {
                        "200": {
                            "description": "A JPEG of the job's first image, at most 256 px on a side",
                            "content": {"image/jpeg": {"schema": {"type": "string", "format": "binary"}}},
                        },
                        **self.errors(400, 404, 503),
                    },
                }
            },
            "/api/ready": {
                "GET": lambda: {
                    "tags": ["jobs"],
                    "summary": "Deprecated: whether one job is done",
                    "parameters": self.output_query(),
                    "responses": {"200": _json(_ref("ReadyRecord")), **self.errors(400, 503)},
                }
            },
            "/api/cancel": {
                "PUT": lambda: {
                    "tags": ["jobs"],
                    "summary": "Deprecated: cancel one job",
                    "parameters": self.output_query(),
                    "responses": {"200": _json(_ref("ReadyRecord")), **self.errors(400, 503)},
                }
            },
            "/api/extras": {
                "GET": lambda: self.admin(
                    "The current extras document (the stored one, else the first extras file)",
                    _json({"type": "object"}, "The document's text, as it was sent"),
                ),
                "PUT": lambda: {
                    **self.admin(
                        "Store an extras document and start a conversion job per new or changed entry",
                        _json(_ref("ExtrasSaved")),
                        400,
                        409,
                        413,
                        501,
                    ),
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": {"schema": {"type": "object"}},
                            "application/yaml": {"schema": {"type": "string"}},
                        },
                    },
                },
            },
            "/api/models": {
                "GET": lambda: self.admin(
                    "The model store's versions and the recent conversion jobs", _json(_ref("ModelStore"))
                )
            },
            "/api/models/{name}": {
                "DELETE": lambda: {
                    **self.admin(
                        "Withdraw a model from the store (refused while jobs need it)",
                        _json(
                            {
                                "type": "object",
                                "required": ["name", "versions"],
                                "properties": {"name": {"type": "string"}, "versions": {"type": "integer"}},
                            }
                        ),
                        400,
                        404,
                        409,
                    ),
                    "parameters": [
                        {"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}
                    ],
                }
            },
            "/api/worker/status": {
                "GET": lambda: self.admin("Live workers and active jobs", _json(_ref("WorkerStatus")))
            },
            "/api/worker/restart": {
                "POST": lambda: self.admin(
                    "Ask every live worker to restart after its job", _json(_ref("WorkerStatus"))
                )
            },
            "/healthz": {"GET": lambda: _probe("Liveness", {"status": {"const": "ok"}})},
            "/readyz": {
                "GET": lambda: _probe(
                    "Readiness: Postgres answers",
                    {"status": {"const": "ok"}, "pending": {"type": "integer", "minimum": 0}},
                    self.errors(503),
                )
            },
            "/metrics": {
                "GET": lambda: {
                    "tags": ["meta"],
                    "summary": "Prometheus metrics",
                    "responses": {
                        "200": {
                            "description": "OK",
                            "content": {"text/plain": {"schema": {"type": "string"}}},
                        },
                    },
                }
            },
            "/api/settings/filters": {
                "GET": lambda: self.settings(
                    "Mask, prompt and source filter names",
                    {
                        "type": "object",
                        "required": ["mask", "prompt", "source"],
                        "properties": {
                            "mask": enum_list(MASK_FILTERS),
                            "prompt": enum_list(PROMPT_FILTERS),
                            "source": enum_list(source_filters(self.requests.registry)),
                        },
                    },
                )
            },
            "/api/settings/masks": {
                "GET": lambda: self.settings("Mask filter names", enum_list(MASK_FILTERS))
            },
            "/api/settings/models": {"GET": lambda: self.settings("Models and networks", _ref("Models"))},
            "/api/settings/noises": {"GET": lambda: self.settings("Noise sources", enum_list(NOISE_SOURCES))},
            "/api/settings/params": {
                "GET": lambda: self.settings("params.json: defaults, ranges, version", _ref("ParamsDocument"))
            },
            "/api/settings/pipelines": {
                "GET": lambda: self.settings("Pipelines", enum_list(AVAILABLE_PIPELINES))
            },
            "/api/settings/platforms": {"GET": lambda: self.settings("Platforms workers serve", strings)},
            "/api/settings/schedulers": {
                "GET": lambda: self.settings("Schedulers", enum_list(SCHEDULER_NAMES))
            },
            "/api/settings/strings": {"GET": lambda: self.settings("Localised strings", {"type": "object"})},
            "/api/settings/wildcards": {"GET": lambda: self.settings("Wildcard names", strings)},
            "/api/settings/limits": {
                "GET": lambda: self.settings(
                    "The sizes past which a submission is refused (413 or 400)",
                    {
                        "type": "object",
                        "required": list(LIMIT_DESCRIPTIONS),
                        "properties": {
                            name: {"type": "integer", "minimum": 1, "description": text}
                            for name, text in LIMIT_DESCRIPTIONS.items()
                        },
                    },
                )
            },
            "/api/settings/stages": {
                "GET": lambda: self.settings(
                    "The chain language's stage types and their parameters",
                    {"type": "object", "additionalProperties": _ref("StageType")},
                )
            },
        }
        for route in (*SUBMIT_ROUTES, "job"):
            # /api/job takes the chain language, as /api/chain does.
            table[f"/api/{route}"] = {
                "POST": functools.partial(self.submit, "chain" if route == "job" else route)
            }
        return table

    def output(self) -> dict[str, Any]:
        return {
            "tags": ["outputs"],
            "summary": "An output image, thumbnail or metadata sidecar",
            "parameters": [
                {
                    "name": "filename",
                    "in": "path",
                    "required": True,
                    "schema": {"type": "string", "pattern": OUTPUT_NAME.pattern},
                }
            ],
            "responses": {
                "200": {
                    "description": "The file",
                    "content": {
                        "image/*": {"schema": {"type": "string", "format": "binary"}},
                        JSON: {"schema": _ref("Metadata")},
                    },
                },
                "304": {"description": "Not modified (If-None-Match)"},
                "307": {"description": "Redirect to a presigned URL (S3_PRESIGN)"},
                **self.errors(404, 503),
            },
        }

    # -- components --------------------------------------------------------------------------

    def components(self) -> dict[str, Any]:
        strings = _list_of({"type": "string"})
        optional_text = {"type": ["string", "null"]}
        counter = _object({"current": {"type": "integer"}, "total": {"type": "integer"}}, "current", "total")
        counters = {name: _ref("Counter") for name in ("queue", "stages", "steps", "tiles")}
        error_text = {str(status): text for status, text in OTHER_ERRORS.items()}
        for kind, status in HTTP_STATUS.items():
            error_text[str(status)] = (kind.__doc__ or kind.__name__).strip()
        schemas: dict[str, Any] = {
            "Error": {
                "type": "object",
                "required": ["error"],
                "properties": {
                    "error": {"type": "string"},
                    "request_id": {"type": "string"},
                    "errors": {
                        "description": "every rule an extras document breaks (PUT /api/extras)",
                        **_list_of(_object(_text("field", "rule"))),
                    },
                    "conflicts": {
                        "description": "entries whose earlier conversion is still on its way",
                        **_list_of(_object(_text("name", "field", "job"))),
                    },
                },
            },
            "ExtrasSaved": _object(
                {
                    **_text("file"),
                    "version": {"type": "integer"},
                    "successful": strings,
                    "errors": {"type": "array", "maxItems": 0},
                    "conversions": _list_of(_object(_text("name", "section", "job", "state"))),
                    "unchanged": strings,
                    "skipped": _list_of(_object(_text("name", "reason"))),
                },
                *("file", "version", "successful", "errors", "conversions", "unchanged", "skipped"),
            ),
            "ModelStore": _object(
                {
                    "models": _list_of(
                        _object(
                            {
                                **_text("name", "kind", "content_hash"),
                                "family": optional_text,
                                "variant": {"enum": ["fp32", "cuda"]},
                                "size_bytes": {"type": "integer"},
                                "state": {"enum": ["publishing", "ready", "deleting"]},
                                "created": optional_text,
                                "labels": {"type": "object"},
                            }
                        )
                    ),
                    "conversions": _list_of(
                        _object(
                            {
                                **_text("job", "name", "created", "updated"),
                                "section": optional_text,
                                "state": {"enum": JOB_STATUSES},
                                "stage": {"enum": ["download", "convert", "publish", None]},
                                "progress": counter,
                                "reason": optional_text,
                            }
                        )
                    ),
                },
                "models",
                "conversions",
            ),
            "Counter": counter,
            "JobRecord": {
                "type": "object",
                "required": ["name", "status", *counters],
                "properties": {
                    "name": {"type": "string"},
                    "status": {"enum": JOB_STATUSES},
                    **counters,
                    "reason": {"type": "string"},
                    "cancelRequested": {"type": "boolean"},
                    "retry": {
                        "type": "object",
                        "description": "a pending job whose earlier attempt failed: the attempt it "
                        "waits to run, of how many, and when it may run at the earliest",
                        "required": ["attempt", "maxAttempts"],
                        "properties": {
                            "attempt": {"type": "integer"},
                            "maxAttempts": {"type": "integer"},
                            "after": {"type": "string", "format": "date-time"},
                        },
                    },
                    "loading": {
                        "type": "object",
                        "description": "the model being pulled from the store: {model, current, total} bytes",
                    },
                    "preview": {
                        "type": "object",
                        "description": "while it runs: the latest approximate image of its latents, its step",
                        "properties": {"url": {"type": "string"}, "step": {"type": "integer"}},
                    },
                    "outputs": {"type": "array", "items": {"type": "string"}},
                    "thumbnails": {"type": "array", "items": {"type": "string"}},
                    "metadata": {"type": "array", "items": _ref("Metadata")},
                },
            },
            "CancelRecord": {
                "type": "object",
                "required": ["name", "status"],
                "properties": {
                    "name": {"type": "string"},
                    "status": {"enum": JOB_STATUSES},
                    "cancelRequested": {"type": "boolean"},
                },
            },
            "ReadyRecord": {
                "type": "object",
                "required": ["cancelled", "failed", "pending", "progress", "ready"],
                "properties": {
                    **{flag: {"type": "boolean"} for flag in ("cancelled", "failed", "pending", "ready")},
                    "progress": {"type": "integer"},
                },
            },
            "Metadata": {"type": "object", "description": "an output's metadata (contract §7.3)"},
            "Introspection": {
                "type": "object",
                "required": ["name", "routes"],
                "properties": {
                    "name": {"type": "string"},
                    "routes": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "required": ["path", "methods"],
                            "properties": {"path": {"type": "string"}, "methods": {"type": "array"}},
                        },
                    },
                },
            },
            "Models": {
                "type": "object",
                "required": ["correction", "diffusion", "networks", "upscaling"],
                "properties": {
                    "correction": {"type": "array", "items": {"type": "string"}},
                    "diffusion": {"type": "array", "items": {"type": "string"}},
                    "upscaling": {"type": "array", "items": {"type": "string"}},
                    "networks": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "required": ["name", "tokens", "type"],
                            "properties": {
                                "name": {"type": "string"},
                                "tokens": {"type": "array", "items": {"type": "string"}},
                                "type": {"type": "string"},
                            },
                        },
                    },
                },
            },
            "ParamsDocument": {
                "type": "object",
                "required": ["version"],
                "properties": {"version": {"type": "string"}},
                "additionalProperties": {"type": "object"},
            },
            "StageType": {
                "type": "object",
                "required": ["available"],
                "properties": {
                    "available": {"type": "boolean"},
                    "params": {"type": "object", "description": "JSON schema properties"},
                    "groups": {"type": "array", "items": {"type": "string"}},
                    "needs": {"type": "array", "items": {"type": "string"}},
                    "model": {"type": ["string", "null"]},
                    "max_tile": {"type": "integer"},
                    "tileable": {"type": "boolean"},
                },
            },
            "WorkerStatus": {
                "type": "object",
                "required": ["jobs", "workers", "details"],
                "properties": {
                    "jobs": {"type": "array"},
                    "workers": {"type": "array"},
                    "details": {"type": "array", "items": _ref("WorkerDetail")},
                },
            },
            "WorkerDetail": {
                "type": "object",
                "required": ["id", "platform", "device", "models", "jobs", "started", "seen"],
                "properties": {
                    "id": {"type": "string"},
                    "platform": {"type": "string"},
                    "device": {"type": ["integer", "null"]},
                    "memory_bytes": {"type": ["integer", "null"]},
                    "providers": {"type": "array", "items": {"type": "string"}},
                    "models": {
                        "type": "array",
                        "items": {"type": "string"},
                        "description": "models with sessions loaded, most recently used first",
                    },
                    "cached_models": {
                        "type": "array",
                        "items": {"type": "string"},
                        "description": "models in the worker's pull cache of the model store",
                    },
                    "heartbeat_age_s": {
                        "type": "number",
                        "description": "seconds since its last sign of life",
                    },
                    "job": {"type": ["string", "null"], "description": "the job it runs, if any"},
                    "loading": {
                        "type": ["object", "null"],
                        "description": "the model that job waits for: {model, current, total} in bytes",
                    },
                    "version": {"type": ["string", "null"]},
                    "jobs": {"type": "integer"},
                    "started": {"type": "string", "format": "date-time"},
                    "seen": {"type": "string", "format": "date-time"},
                },
            },
            "ImageRequest": self.requests.request(),
            "ImageForm": {"type": "object", "properties": self.requests.text_fields()},
            "TextRequest": self.text_request(),
            "TextForm": {
                "type": "object",
                "properties": {**self.requests.text_fields(), **self.text_fields()},
            },
            "ChainDocument": self.requests.chain(),
            "ImageFields": self.requests.image_fields(),
        }
        return {
            "schemas": schemas,
            "parameters": self.query_parameters(),
            "responses": {status: _json(_ref("Error"), text) for status, text in sorted(error_text.items())},
            "securitySchemes": {
                "adminToken": {"type": "apiKey", "in": "query", "name": "token"},
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "an API key, or the admin token",
                },
            },
        }


def _gui(summary: str, *, path_param: bool = False) -> dict[str, Any]:
    operation: dict[str, Any] = {
        "tags": ["gui"],
        "summary": summary,
        "responses": {
            "200": {"description": "The file", "content": {"*/*": {"schema": {}}}},
            **({"404": _ref("404", "responses")} if path_param else {}),
        },
    }
    if path_param:
        operation["parameters"] = [
            {
                "name": "filename",
                "in": "path",
                "required": True,
                "description": "a path below the bundle folder",
                "schema": {"type": "string"},
            }
        ]
    return operation


def _probe(summary: str, properties: dict[str, Any], errors: dict[str, Any] | None = None) -> dict[str, Any]:
    schema = {"type": "object", "required": list(properties), "properties": properties}
    return {"tags": ["meta"], "summary": summary, "responses": {"200": _json(schema), **(errors or {})}}


def _head(operation: dict[str, Any]) -> dict[str, Any]:
    """A GET operation as HEAD answers it: the same statuses and headers, no bodies."""
    head = dict(operation)
    head["responses"] = {
        status: {"description": _description(response)} for status, response in operation["responses"].items()
    }
    return head


def _description(response: Mapping[str, Any]) -> str:
    if "$ref" in response:
        return f"See {response['$ref'].rsplit('/', 1)[-1]}"
    return str(response["description"])


def openapi_path(template: str) -> str:
    """A Falcon route template as an OpenAPI path: ``{name:converter}`` becomes ``{name}``."""
    return re.sub(r"\{(\w+)(?::[^}]*)?\}", r"{\1}", template)


def resource_access(app: falcon.App, template: str) -> str:
    """The ``access`` a route's resource declares (``service.auth``): public, key or admin."""
    # falcon.inspect reads the router the same way; it lists the routes but not their resources.
    found = app._router.find(re.sub(r"\{[^}]*\}", "x", template))
    return str(getattr(found[0], "access", "key")) if found else "key"


def secure(operation: dict[str, Any], access: str, *, keys: bool) -> None:
    """Add what a route's access asks of a request, and the answers to one without it."""
    refused = {"401": _ref("401", "responses"), "403": _ref("403", "responses")}
    if access == "admin":
        operation["security"] = [{"adminToken": []}, {"bearer": []}]
        operation["responses"].update(refused if keys else {"401": refused["401"]})
    elif access == "key" and keys:
        operation["security"] = [{"bearer": []}]
        operation["responses"].update(refused)


def build_document(
    app: falcon.App, *, config: Config, params_doc: Mapping[str, Any], registry: ModelRegistry
) -> dict[str, Any]:
    """The OpenAPI document of every route ``app`` serves.

    Raises:
        KeyError: a route or method of ``app`` has no description here.
    """
    parts = _Document(config, params_doc, registry)
    table = parts.operations()
    paths: dict[str, Any] = {}
    for route in falcon.inspect.inspect_routes(app):
        described = table.get(route.path)
        if described is None:
            raise KeyError(f"no OpenAPI description for the route {route.path}")
        item = paths.setdefault(openapi_path(route.path), {})
        for method in sorted({info.method for info in route.methods if not info.internal}):
            build = described.get(method) or (described["GET"] if method == "HEAD" else None)
            if build is None:
                raise KeyError(f"no OpenAPI description for {method} {route.path}")
            operation = {**build(), "operationId": _operation_id(method, route.path)}
            secure(operation, resource_access(app, route.path), keys=config.auth == "keys")
            item[method.lower()] = _head(operation) if method == "HEAD" else operation
    return {
        "openapi": OPENAPI_VERSION,
        "info": {
            "title": "onnx-web",
            "version": str(params_doc.get("version", config.server_version)),
            "description": (
                'onnx-web\'s HTTP API on a Postgres job queue. Every error is JSON {"error": ...}. '
                "CORS applies to every route; OPTIONS is answered for each. Requests may carry "
                "X-Request-ID, echoed in the response."
            ),
        },
        "paths": paths,
        "components": parts.components(),
    }
