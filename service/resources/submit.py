"""Job submission: ``POST /api/{txt2img,img2img,inpaint,upscale,blend,txt2txt,chain}`` and
``POST /api/job`` (contract §3, §4.3-4.10).

A submission is parsed (any of the three request layouts), compiled into a resolved chain,
its uploads stored in the object store, and the job row committed before the answer is sent:
``200`` with the job record means the job exists and will run.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, cast

import falcon

from pipelines.models.registry import ModelRegistry
from service import chains
from service.config import Config
from service.errors import InvalidParams, NotImplementedYet
from service.images import decode_upload, encode_png
from service.jobs.store import JobStore, JobView, NewJob
from service.names import job_name
from service.params import ParsedRequest, Route, json_or_yaml, parse_request, request_data
from service.resources.jobs import render_job
from service.storage import ObjectStore, input_key

#: The image routes; ``/api/chain`` and ``/api/job`` share the chain language.
SUBMIT_ROUTES = ("txt2img", "img2img", "inpaint", "upscale", "blend", "txt2txt", "chain")
#: Files each legacy route requires, checked before any parameter (contract §3.5).
REQUIRED_FILES = {
    "img2img": ("source",),
    "inpaint": ("source", "mask"),
    "upscale": ("source",),
    "blend": ("mask", "source:0", "source:1"),
}
#: The legacy routes that start from an upload, and the upload whose size is the input size.
FROM_UPLOAD = {
    "img2img": (chains.build_img2img, "source"),
    "inpaint": (chains.build_inpaint, "source"),
    "upscale": (chains.build_upscale, "source"),
    "blend": (chains.build_blend, "source:0"),
}
#: Per-stage uploads of chain requests are named ``source:<stage>`` / ``mask:<stage>``.
FILE_PREFIXES = ("source", "mask")


@dataclass
class RequestBody:
    """A submission as received: the parameter object, the uploaded files and the raw text."""

    data: dict[str, Any]
    files: dict[str, bytes] = field(default_factory=dict)
    chain: Any = None
    raw: bytes = b""


def read_body(req: falcon.Request, *, chain_route: bool) -> RequestBody:
    """Read any of the layouts: JSON body, multipart with ``json``/``chain`` fields, or query string."""
    query = dict(req.params)
    if req.content_type and req.content_type.split(";")[0].strip() == falcon.MEDIA_JSON:
        body = req.get_media()
        raw = json.dumps(body, sort_keys=True).encode()
        if chain_route:
            return RequestBody({}, chain=body, raw=raw)
        if body is not None and not isinstance(body, dict):
            raise InvalidParams("body", "must be a JSON object")
        return RequestBody(request_data(falcon.MEDIA_JSON, body, None, query), raw=raw)
    if req.content_type and req.content_type.startswith(falcon.MEDIA_MULTIPART):
        files: dict[str, bytes] = {}
        texts: dict[str, str] = {}
        for part in req.get_media():
            if part.filename is not None or (part.content_type or "").startswith("image/"):
                files[part.name] = part.stream.read()
            elif part.name in ("json", "chain"):
                texts[part.name] = part.text
        digest = hashlib.sha256(json.dumps(texts, sort_keys=True).encode())
        for name in sorted(files):
            digest.update(name.encode() + hashlib.sha256(files[name]).digest())
        if chain_route:
            if "chain" not in texts:
                raise InvalidParams("chain", "chain pipeline must have a body (a 'chain' form field)")
            return RequestBody({}, files, json_or_yaml("chain", texts["chain"]), digest.digest())
        data = request_data(falcon.MEDIA_MULTIPART, None, texts.get("json"), query)
        return RequestBody(data, files, raw=digest.digest())
    if chain_route:
        raise InvalidParams("chain", "chain pipeline must have a body (JSON, or a multipart 'chain' field)")
    return RequestBody(request_data(None, None, None, query), raw=json.dumps(query, sort_keys=True).encode())


class Submitter:
    """Turns a request body into a committed job."""

    def __init__(
        self,
        config: Config,
        *,
        jobs: JobStore,
        store: ObjectStore,
        registry: ModelRegistry,
        params_doc: Mapping[str, Any],
    ) -> None:
        self.config = config
        self.jobs = jobs
        self.store = store
        self.registry = registry
        self.params_doc = params_doc
        self.rng = secrets.SystemRandom()

    def parse(self, route: str, data: Mapping[str, Any]) -> ParsedRequest:
        """Parse one request's parameters for ``route`` (chain stages parse as txt2img)."""
        return parse_request(
            cast(Route, route),
            data,
            params_doc=self.params_doc,
            registry=self.registry,
            config=self.config,
            rng=self.rng,
        )

    def build(self, route: str, body: RequestBody) -> tuple[chains.BuiltChain, dict[str, Any]]:
        """Compile the request into a chain; return it with the decoded uploads it uses."""
        if route == "txt2txt":
            raise NotImplementedYet("txt2txt needs a text-generation model; this server has none")
        for required in REQUIRED_FILES.get(route, ()):
            if required not in body.files:
                raise InvalidParams(required, f"{required} image is required")
        images = {
            name: decode_upload(data, name, max_pixels=self.config.max_image_pixels)
            for name, data in body.files.items()
            if name.split(":")[0] in FILE_PREFIXES
        }
        if route == "chain":
            doc = chains.validate_chain_document(body.chain)
            built = chains.build_chain(
                doc,
                self.parse,
                image_format=self.config.image_format,
                thumbnail_size=self.config.thumbnail_size,
                uploads=frozenset(images),
            )
        elif route == "txt2img":
            built = chains.build_txt2img(
                self.parse(route, body.data),
                image_format=self.config.image_format,
                thumbnail_size=self.config.thumbnail_size,
            )
        else:
            builder, sized_by = FROM_UPLOAD[route]
            built = builder(
                self.parse(route, body.data),
                images[sized_by].size,
                image_format=self.config.image_format,
                thumbnail_size=self.config.thumbnail_size,
            )
        chains.require_available(built.chain)
        return built, {name: images[name] for name in built.inputs.values() if name in images}

    def submit(
        self, route: str, body: RequestBody, *, request_id: str | None, idempotency_key: str | None
    ) -> JobView:
        """Store the uploads and commit the job row; the answer is sent only after the commit."""
        built, images = self.build(route, body)
        job_id = uuid.uuid4()
        image = built.request.image
        name = job_name(built.kind, built.request, job_id)
        inputs = {}
        for field_name, image_name in built.inputs.items():
            if image_name in images:
                key = input_key(name, field_name.replace(":", "-"))
                self.store.put_bytes(key, encode_png(images[image_name]), "image/png")
                inputs[field_name] = key
        platform = built.platform if built.platform not in (None, "", "any") else None
        return self.jobs.enqueue(
            NewJob(
                id=job_id,
                name=name,
                kind=built.kind,
                chain=built.chain,
                model=built.model or image.model,
                platform=platform,
                max_attempts=self.config.max_attempts,
                idempotency_key=idempotency_key,
                request_hash=hashlib.sha256(route.encode() + body.raw).hexdigest()
                if idempotency_key
                else None,
                inputs=inputs,
                request_id=request_id,
                steps_total=built.steps_total,
                stages_total=built.stages_total,
                tiles_total=0,
            )
        )


class SubmitResource:
    """``POST /api/<route>``: answers the new job's record (onnx-web's GUI expects ``200``)."""

    def __init__(self, submitter: Submitter, route: str) -> None:
        self.submitter = submitter
        self.route = route

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        body = read_body(req, chain_route=self.route == "chain")
        key = req.get_header("Idempotency-Key")
        if key is not None and not 1 <= len(key) <= 255:
            raise InvalidParams("Idempotency-Key", "must be 1 to 255 characters")
        view = self.submitter.submit(
            self.route, body, request_id=req.context.get("request_id"), idempotency_key=key
        )
        resp.media = render_job(view.name, view)
