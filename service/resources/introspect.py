"""``GET /api``: the route list (contract §4.2)."""

from __future__ import annotations

import re
from collections.abc import Sequence

import falcon

_PARAM = re.compile(r"\{(\w+)(?::[^}]*)?\}")


class IntrospectResource:
    """Lists every route with its methods; path parameters written ``:name`` as Flask did."""

    #: Open without an API key, also in keys mode.
    access = "public"

    def __init__(self, routes: Sequence[tuple[str, Sequence[str]]]) -> None:
        self.routes = [
            {"path": _PARAM.sub(r":\1", path), "methods": sorted({*methods, "OPTIONS"})}
            for path, methods in routes
        ]

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.media = {"name": "onnx-web", "routes": self.routes}

    on_head = on_get
