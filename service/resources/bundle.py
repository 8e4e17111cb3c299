"""``GET /`` and ``GET /<path>``: the GUI bundle, served from a folder (contract §4.1); and
``GET /api/docs``, the API reference page built into the bundle's ``api-docs/``."""

from __future__ import annotations

import mimetypes
import os
import re
from pathlib import Path

import falcon

from service.errors import NotFound

#: Control characters and characters no bundle file name contains (after Falcon's StaticRoute).
_DISALLOWED = re.compile(r"[\x00-\x1f\x7f-\x9f\ufffd~?<>:*|'\"\\]")
MAX_PATH_LENGTH = 256
PLACEHOLDER = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>onnx-web</title>
<meta name="viewport" content="width=device-width, initial-scale=1"></head>
<body style="font-family: system-ui, sans-serif; max-width: 40rem; margin: 3rem auto; line-height: 1.5">
<h1>onnx-web</h1>
<p>The API is running, but the web GUI has not been built into <code>{bundle}</code>.
Build it with <code>make gui</code>, or point <code>ONNX_WEB_BUNDLE_PATH</code> at a built bundle.</p>
<p>The API answers at <a href="/api">/api</a>; settings at
<a href="/api/settings/params">/api/settings/params</a>.</p>
</body></html>
"""

DOCS_PLACEHOLDER = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>onnx-web API</title></head>
<body style="font-family: system-ui, sans-serif; max-width: 40rem; margin: 3rem auto; line-height: 1.5">
<h1>onnx-web API</h1>
<p>The rendered reference comes with the web GUI, which has not been built (<code>make gui</code>).
The OpenAPI document itself is at <a href="openapi.json">/api/openapi.json</a>.</p>
</body></html>
"""


def safe_join(root: Path, relative: str) -> Path:
    """Join ``relative`` onto ``root``, refusing anything that could leave it."""
    if (
        not relative
        or len(relative) > MAX_PATH_LENGTH
        or _DISALLOWED.search(relative)
        or relative.startswith("/")
        or any(part in ("", ".", "..") or part.endswith((" ", ".")) for part in relative.split("/"))
    ):
        raise NotFound(f"no such file: {relative[:64]}")
    resolved = (root / os.path.normpath(relative)).resolve()
    if not resolved.is_relative_to(root.resolve()):
        raise NotFound(f"no such file: {relative[:64]}")
    return resolved


#: The GUI's pages: its own scripts and styles only, never framed by another site. ``connect-src``
#: and ``img-src`` stay open, since ``?api=`` points the GUI at another server.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src * data: blob:; "
    "connect-src *; font-src 'self' data:; object-src 'none'; base-uri 'self'; form-action 'self'; "
    "frame-ancestors 'none'"
)


class BundleResource:
    """Serves ``index.html`` at ``/`` and any bundle file below it."""

    #: Open without an API key, also in keys mode.
    access = "public"

    def __init__(self, root: Path) -> None:
        self.root = root

    def on_get(self, req: falcon.Request, resp: falcon.Response, filename: str | None = None) -> None:
        resp.set_header("Content-Security-Policy", CONTENT_SECURITY_POLICY)
        if filename is None:
            index = self.root / "index.html"
            if not index.is_file():
                resp.content_type = falcon.MEDIA_HTML
                resp.text = PLACEHOLDER.format(bundle=self.root)
                return
            send_file(resp, index)
            return
        path = safe_join(self.root, filename)
        if not path.is_file():
            raise NotFound(f"no such file: {filename[:64]}")
        send_file(resp, path)

    on_head = on_get


class ApiDocsResource:
    """The API reference: Swagger UI, bundled with the GUI (no CDN), reading ``/api/openapi.json``."""

    #: Documentation only; the document it reads is public too.
    access = "public"

    def __init__(self, root: Path) -> None:
        self.page = root / "api-docs" / "index.html"

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.set_header("Content-Security-Policy", CONTENT_SECURITY_POLICY)
        if not self.page.is_file():
            resp.content_type = falcon.MEDIA_HTML
            resp.text = DOCS_PLACEHOLDER
            return
        send_file(resp, self.page)

    on_head = on_get


def send_file(resp: falcon.Response, path: Path) -> None:
    """Stream one bundle file with its type and a cache policy that suits it."""
    resp.content_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    resp.content_length = path.stat().st_size
    # index.html and config.json must be fresh after a deploy; hashed assets can be cached.
    fresh = path.name in ("index.html", "config.json")
    resp.cache_control = ["no-cache"] if fresh else ["public", "max-age=86400"]
    resp.stream = path.open("rb")
