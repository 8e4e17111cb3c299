"""``GET /output/<name>``: an output image, thumbnail or metadata sidecar, read from the object store.

The name must match the allowlist pattern of the files this service writes; the job row, not
the bucket, says which object holds it (only a succeeded job's recorded keys are ever served).
No request path ever becomes a storage key.
"""

from __future__ import annotations

import falcon

from service.auth import owner_filter
from service.errors import NotFound
from service.jobs.store import JobStore
from service.output_names import recorded_key
from service.storage import ObjectStore


class OutputResource:
    """Streams an output through the api, or redirects to a presigned URL."""

    def __init__(self, jobs: JobStore, store: ObjectStore, *, presign: bool, presign_expiry_s: int) -> None:
        self.jobs = jobs
        self.store = store
        self.presign = presign
        self.presign_expiry_s = presign_expiry_s

    def _key(self, req: falcon.Request, filename: str) -> str:
        key = recorded_key(self.jobs, filename, owner=owner_filter(req))
        if key is None:
            raise NotFound("no such output")
        return key

    def on_get(self, req: falcon.Request, resp: falcon.Response, filename: str) -> None:
        key = self._key(req, filename)
        if self.presign:
            raise falcon.HTTPTemporaryRedirect(self.store.presign_get(key, self.presign_expiry_s))
        obj = self.store.get_stream(key)
        resp.etag = obj.etag
        # Committed outputs never change: clients may cache them for good.
        resp.cache_control = ["private", "max-age=31536000", "immutable"]
        if req.if_none_match and any(tag == obj.etag or tag == "*" for tag in req.if_none_match):
            obj.close()
            resp.status = falcon.HTTP_304
            return
        resp.content_type = "application/json" if filename.endswith(".json") else obj.content_type
        resp.content_length = obj.size
        resp.stream = obj

    def on_head(self, req: falcon.Request, resp: falcon.Response, filename: str) -> None:
        key = self._key(req, filename)
        stat = self.store.stat(key)
        resp.etag = stat.etag
        resp.content_type = "application/json" if filename.endswith(".json") else stat.content_type
        resp.content_length = stat.size
