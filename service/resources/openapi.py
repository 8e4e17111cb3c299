"""``GET /api/openapi.json``: the OpenAPI 3.1 document of this api (``service.openapi``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import falcon

from pipelines.models.registry import ModelRegistry
from service.config import Config
from service.openapi import build_document


class OpenAPIResource:
    """Builds the document from ``app``'s routes on each request, so it lists the models there are now."""

    access = "public"

    def __init__(
        self, app: falcon.App, config: Config, params_doc: Mapping[str, Any], registry: ModelRegistry
    ) -> None:
        self.app = app
        self.config = config
        self.params_doc = params_doc
        self.registry = registry

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.media = build_document(
            self.app, config=self.config, params_doc=self.params_doc, registry=self.registry
        )

    on_head = on_get
