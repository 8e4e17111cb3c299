"""Job submission: ``POST /api/{txt2img,img2img,inpaint,upscale,blend,txt2txt,chain}`` and
``POST /api/job`` (contract §3, §4.3-4.10).

A submission is parsed (any of the three request layouts), compiled into a resolved chain,
its uploads stored in the object store, and the job row committed before the answer is sent:
``200`` with the job record means the job exists and will run.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import secrets
import time
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, cast

import falcon
from PIL import Image

from pipelines.imageops.metadata import upload_metadata
from pipelines.memory import ChainMemory, pixel_steps
from pipelines.models.registry import ModelRegistry
from service import chains, text_jobs
from service.admission import Admission
from service.auth import ANONYMOUS
from service.callbacks import check_callback_url
from service.config import Config
from service.db import DATABASE_OUTAGES
from service.errors import (
    ConfigError,
    InvalidParams,
    TooManyRequests,
    UnsupportedMediaType,
)
from service.images import encode_png, load_upload, open_upload
from service.inputs import (
    MAX_DOCUMENT_BYTES,
    check_query,
    check_query_string,
    check_text,
    load_json,
    load_json_or_yaml,
    shorten,
)
from service.jobs.keys import ApiKey, KeyStore
from service.jobs.store import JobStore, JobView, NewJob, OwnerBusy
from service.names import job_name
from service.params import ParsedRequest, Route, parse_request, request_data
from service.request_schema import REQUEST_KEYS
from service.resources.jobs import render_job
from service.storage import ObjectStore, check_input_name, input_key

log = logging.getLogger(__name__)

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
#: Request parameters: sent as plain multipart form fields they are not read (contract §3.1), so
#: such a field is refused rather than left out of the job without a word.
PARAMETER_KEYS = REQUEST_KEYS | frozenset(text_jobs.TEXT_FIELDS)
#: What a chain request without a document is told.
NO_CHAIN_BODY = "chain pipeline must have a body (JSON, or a multipart 'chain' field)"
#: When a client over its running-jobs limit may look again.
RUNNING_RETRY_S = 10
SECONDS_PER_DAY = 24 * 3600
#: The body media types a submission may have (without a body, parameters come from the query).
BODY_TYPES = (falcon.MEDIA_JSON, falcon.MEDIA_MULTIPART, falcon.MEDIA_URLENCODED)


@dataclass
class RequestBody:
    """A submission as received: the parameter object, the uploaded files and a digest of it all.

    ``digest`` covers everything that decides the job (query string, parameter text, chain and
    every uploaded file), so an ``Idempotency-Key`` reused with any other request is a 409.
    """

    data: dict[str, Any]
    files: dict[str, bytes] = field(default_factory=dict)
    chain: Any = None
    digest: bytes = b""


def read_body(req: falcon.Request, *, chain_route: bool) -> RequestBody:
    """Read any of the layouts: JSON body, multipart with ``json``/``chain`` fields, a form, or the query.

    Media types are compared without case (RFC 9110). A body of any other type is refused with 415
    rather than ignored, so a client never gets a default job in place of the one it described.
    """
    # The query string's escapes were checked for every route (``service.app``); a form's are below.
    query = dict(req.params)
    mimetype = (req.content_type or "").split(";", 1)[0].strip().lower()
    digest = hashlib.sha256(_canonical({"query": query}))
    if mimetype == falcon.MEDIA_JSON:
        # One byte past the document cap is enough to refuse an oversized body without reading it all.
        document = load_json(_read_declared(req, MAX_DOCUMENT_BYTES + 1), "body")
        digest.update(_canonical(document))
        if chain_route:
            return RequestBody({}, chain=document, digest=digest.digest())
        return RequestBody(request_data(document, query), digest=digest.digest())
    if mimetype == falcon.MEDIA_MULTIPART:
        files, texts = _read_parts(req, chain_route=chain_route)
        digest.update(_canonical(texts))
        for name in sorted(files):
            digest.update(name.encode() + hashlib.sha256(files[name]).digest())
        if chain_route:
            if "chain" not in texts:
                raise InvalidParams("chain", "chain pipeline must have a body (a 'chain' form field)")
            return RequestBody({}, files, load_json_or_yaml(texts["chain"], "chain"), digest.digest())
        document = load_json_or_yaml(texts["json"], "json") if "json" in texts else None
        return RequestBody(request_data(document, query, "json"), files, digest=digest.digest())
    if mimetype == falcon.MEDIA_URLENCODED:
        form = _read_form(req)
        merged = {**query, **form}
        digest.update(_canonical(form))
        if chain_route:
            # What curl --data sends without a -H 'Content-Type: application/json'.
            raise InvalidParams("chain", f"{NO_CHAIN_BODY}; got a form ({falcon.MEDIA_URLENCODED})")
        return RequestBody(request_data(None, merged), digest=digest.digest())
    if req.content_length:
        raise UnsupportedMediaType(
            f"Content-Type {_shown_type(mimetype)} is not accepted; send {', '.join(BODY_TYPES)}"
        )
    if chain_route:
        raise InvalidParams("chain", NO_CHAIN_BODY)
    return RequestBody(request_data(None, query), digest=digest.digest())


def _read_declared(req: falcon.Request, limit: int) -> bytes:
    """Up to ``limit`` bytes of the body; 400 if fewer arrived than its Content-Length declares.

    A client that half-closes its socket midway gives a short read, not an error: without this
    check a job would be built from the part that came.
    """
    declared = req.content_length or 0
    raw = req.bounded_stream.read(limit)
    if len(raw) < min(declared, limit):
        raise InvalidParams(
            "body", f"is incomplete: {len(raw)} of its {declared} bytes (Content-Length) arrived"
        )
    return raw


def _read_form(req: falcon.Request) -> dict[str, Any]:
    """A form body, read as Falcon reads one, but whole and with only UTF-8 in its percent-escapes."""
    raw = _read_declared(req, req.content_length or 0)
    try:
        text = raw.decode("ascii")
    except UnicodeDecodeError as err:
        raise InvalidParams(
            "body",
            f"a form must be ASCII, other characters percent-encoded (a bad byte at position {err.start})",
        ) from err
    check_query_string(text, "form")
    form: dict[str, Any] = falcon.uri.parse_query_string(text, keep_blank=True)
    check_query(form)
    return form


def _read_parts(req: falcon.Request, *, chain_route: bool) -> tuple[dict[str, bytes], dict[str, str]]:
    """The uploaded files (kept as bytes, decoded only when a stage uses them) and the text fields.

    An upload's name must be one its object key can hold, checked here rather than when the job is
    stored, whether or not a stage uses it. A text field named as a request parameter is refused:
    parameters travel in the ``json`` field or the query string, and other fields are not read.
    """
    files: dict[str, bytes] = {}
    texts: dict[str, str] = {}
    for part in req.get_media():
        try:
            name = check_text(part.name or "", "multipart part name")
            is_file = part.filename is not None or part.content_type.startswith("image/")
        except UnicodeDecodeError as err:
            raise InvalidParams(
                "multipart part headers", "Content-Disposition must be UTF-8 and Content-Type ASCII"
            ) from err
        if is_file:
            try:
                check_input_name(name)
            except ValueError as err:
                raise InvalidParams(f"upload {shorten(name)!r}", str(err)) from err
            files[name] = part.stream.read()
        elif name in ("json", "chain"):
            try:
                texts[name] = part.stream.read().decode("utf-8")
            except UnicodeDecodeError as err:
                raise InvalidParams(name, f"must be UTF-8 text (a bad byte at position {err.start})") from err
        elif not chain_route and name in PARAMETER_KEYS:
            raise InvalidParams(
                name,
                "was sent as a multipart form field, which is not read: send parameters in the "
                "query string or in the multipart field 'json'",
            )
    return files, texts


def _canonical(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, ensure_ascii=True).encode()


def _shown_type(mimetype: str) -> str:
    return repr(mimetype[:60]) if mimetype else "(none)"


@dataclass
class Submitter:
    """Turns a request body into a committed job."""

    config: Config
    jobs: JobStore
    store: ObjectStore
    registry: ModelRegistry
    params_doc: Mapping[str, Any]
    admission: Admission
    #: API keys and their usage, in keys mode.
    keys: KeyStore | None = None
    #: Draws the seeds of requests that ask for a random one.
    rng: random.Random = field(default_factory=secrets.SystemRandom)

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

    def build(self, route: str, body: RequestBody) -> tuple[chains.BuiltChain, dict[str, Any], ChainMemory]:
        """Compile the request into a chain; return it with the decoded uploads it uses and its
        memory estimate, once a live worker is known to hold it."""
        for required in REQUIRED_FILES.get(route, ()):
            if required not in body.files:
                raise InvalidParams(required, f"{required} image is required")
        # Headers only: an upload no stage names is never decoded.
        uploads = {
            name: open_upload(data, name, max_pixels=self.config.max_image_pixels)
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
                uploads=frozenset(uploads),
            )
        elif route == "txt2txt":
            built = text_jobs.build_txt2txt(body.data, self.parse, self.registry)
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
                uploads[sized_by].size,
                image_format=self.config.image_format,
                thumbnail_size=self.config.thumbnail_size,
            )
        if route != "chain":
            text_jobs.add_flagged_stages(built, route, self.config.feature_flags, self.registry)
        chains.require_available(built.chain)
        paths = None
        if route == "chain":
            paths = {entry["name"]: f"stages[{index}]" for index, entry in enumerate(body.chain["stages"])}
        chains.require_runnable(built.chain, self.registry, paths)
        text_jobs.resolve_stage_models(built.chain, self.registry, paths)
        hashes = chains.extras_hashes(built.chain, self.registry)
        if hashes:
            built.chain["hashes"] = hashes
        used = {name for name in built.inputs.values() if name in uploads}
        memory = self.admission.estimate(built, _largest_size(uploads[name] for name in used))
        self.admission.admit(memory, _platform(built), paths)
        return built, {name: load_upload(uploads[name], name) for name in sorted(used)}, memory

    def submit(
        self,
        route: str,
        body: RequestBody,
        *,
        request_id: str | None,
        idempotency_key: str | None,
        key: ApiKey | None = None,
    ) -> JobView:
        """Store the uploads and commit the job row; the answer is sent only after the commit.

        With a ``key`` (keys mode) the job is its owner's, and the key's quotas are checked first.
        A retry with an ``Idempotency-Key`` already used is answered its job before any work: it is
        not charged again and stores nothing.
        """
        owner = ANONYMOUS if key is None else key.owner
        request_hash = hashlib.sha256(route.encode() + body.digest).hexdigest() if idempotency_key else None
        if idempotency_key and request_hash:
            earlier = self.jobs.keyed_job(owner, idempotency_key, request_hash)
            if earlier is not None:
                return earlier
        built, images, memory = self.build(route, body)
        callback = self.callback(route, body)
        if key is not None:
            self.charge(key, pixel_steps(built.chain["stages"], memory))
        job_id = uuid.uuid4()
        image = built.request.image
        name = job_name(built.kind, built.request, job_id)
        inputs = {}
        for field_name, image_name in built.inputs.items():
            if image_name in images:
                object_key = input_key(name, field_name.replace(":", "-"))
                upload = images[image_name]
                self.store.put_bytes(object_key, encode_png(upload, upload_metadata(upload)), "image/png")
                inputs[field_name] = object_key
        new_job = NewJob(
            id=job_id,
            name=name,
            kind=built.kind,
            chain=built.chain,
            model=built.model or image.model,
            platform=_platform(built),
            max_attempts=self.config.max_attempts,
            idempotency_key=idempotency_key,
            request_hash=request_hash,
            inputs=inputs,
            request_id=request_id,
            steps_total=built.steps_total,
            stages_total=built.stages_total,
            tiles_total=0,
            memory=memory.to_dict(),
            owner=owner,
            callback=callback,
        )
        max_active = None if key is None else key.max_running
        try:
            view = self.jobs.enqueue(new_job, max_active=max_active)
        except OwnerBusy as err:
            self._discard(inputs)
            assert key is not None
            raise _running_limit(key, err.active) from err
        except DATABASE_OUTAGES:
            # The connection may have dropped after COMMIT reached the server: the row may exist
            # and name these inputs, and a retry with the same Idempotency-Key is answered that
            # job. Deleting them would fail it in the worker; left, they cost a few bytes.
            if inputs:
                log.warning(
                    "database failed while a job was committed; its inputs are kept",
                    extra={"job": name, "inputs": len(inputs)},
                )
            raise
        except BaseException:
            self._discard(inputs)
            raise
        if view.name != name:
            self._discard(inputs)  # an identical submission got in first: its job has its own inputs
        return view

    def _discard(self, inputs: Mapping[str, str]) -> None:
        """Delete the inputs stored for a job that was not created (best effort: they are small,
        and each is named after a job no row has)."""
        for object_key in inputs.values():
            try:
                self.store.delete(object_key)
            except Exception:
                log.warning("could not delete an input of a job not created", extra={"key": object_key})

    def callback(self, route: str, body: RequestBody) -> str | None:
        """The request's ``callback`` URL (top level of the parameters or of the chain), checked."""
        document = body.chain if route == "chain" else body.data
        url = document.get("callback") if isinstance(document, dict) else None
        if url is None or url == "":
            return None
        return check_callback_url(
            url, allow_private=self.config.callback_allow_private, secret=self.config.callback_secret
        )

    def charge(self, key: ApiKey, work: int) -> None:
        """Refuse (429) a job over the key's running-jobs limit or its pixel-steps for today."""
        if self.keys is None:
            raise ConfigError("quotas need the key store")
        if key.max_running is not None:
            # Early, before the pixel-steps are charged; enqueue counts again under a lock.
            active = self.keys.active_jobs(key.owner)
            if active >= key.max_running:
                raise _running_limit(key, active)
        if key.pixel_steps_per_day is not None and not self.keys.use(
            key.id, "day", work, key.pixel_steps_per_day
        ):
            raise TooManyRequests(
                f"API key {key.id} may submit {key.pixel_steps_per_day} pixel-steps a day (UTC); "
                f"this job needs {work}",
                retry_after_s=SECONDS_PER_DAY - int(time.time()) % SECONDS_PER_DAY,
            )


def _running_limit(key: ApiKey, active: int) -> TooManyRequests:
    return TooManyRequests(
        f"API key {key.id} may have {key.max_running} jobs pending or running; {key.owner} has {active}",
        retry_after_s=RUNNING_RETRY_S,
    )


def _platform(built: chains.BuiltChain) -> str | None:
    """The platform a job must run on; None lets any worker take it."""
    return built.platform if built.platform not in (None, "", "any") else None


def _largest_size(images: Iterable[Image.Image]) -> tuple[int, int]:
    """The widest and tallest of the uploads: where a chain that starts from them starts."""
    sizes = [image.size for image in images]
    return (max((w for w, _ in sizes), default=0), max((h for _, h in sizes), default=0))


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
            self.route,
            body,
            request_id=req.context.get("request_id"),
            idempotency_key=key,
            key=req.context.get("key"),
        )
        record = render_job(view.name, view)
        if view.queue_position is not None:
            # onnx-web's submit answer counts the queue from 1 (contract §4.3); its status route
            # from 0, as render_job does.
            record["queue"] = {"current": view.queue_position + 1, "total": view.queue_total}
        resp.media = record
