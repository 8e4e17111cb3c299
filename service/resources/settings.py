"""``GET /api/settings/*``: what the GUI needs to draw its forms (contract §5).

Every route answers ``GET`` and ``HEAD`` with JSON; OPTIONS is left to Falcon and the CORS
middleware. The lists are those the request parser accepts (``service.params``), so the GUI never
offers a value the api would refuse. In particular ``filters.source`` lists only the source filters
our workers run (``canny``, ``gaussian``, ``noise``, ``none``) rather than onnx-web's twelve;
``filters.mask`` and ``filters.prompt`` are onnx-web's lists.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import falcon

from pipelines.diffusion.schedulers import SCHEDULER_NAMES
from pipelines.models.registry import ModelRegistry
from pipelines.stages import stage_catalogue
from service.config import Config
from service.images import MAX_UPLOAD_SIDE
from service.params import AVAILABLE_PIPELINES, MASK_FILTERS, NOISE_SOURCES, PROMPT_FILTERS, source_filters

PREFIX = "/api/settings"
#: Route suffixes, in onnx-web's registration order (contract §2).
SUFFIXES = (
    "filters",
    "masks",
    "models",
    "noises",
    "params",
    "pipelines",
    "platforms",
    "schedulers",
    "strings",
    "wildcards",
    # Ours: the chain language's stage types, generated from their declarations.
    "stages",
    # Ours: the sizes past which a submission is refused, for a client to check before sending.
    "limits",
)
METHODS = ("GET", "HEAD")


class SettingsResources:
    """One Falcon resource serving every settings route through responder suffixes."""

    #: Open without an API key, also in keys mode.
    access = "public"

    def __init__(
        self,
        config: Config,
        registry: ModelRegistry,
        params_doc: Mapping[str, Any],
        platforms: Callable[[], list[str]],
    ) -> None:
        """Serve ``params_doc`` as loaded, and the registry's and ``platforms()``'s lists as they are now.

        Args:
            config: the service configuration.
            registry: the models folder's contents; ``PUT /api/extras`` reloads it, and these
                routes then answer with the new lists.
            params_doc: the ``params.json`` document from ``service.params.load_params_doc``.
            platforms: the platform names to list, e.g. ``["any", "cpu"]``.
        """
        self.config = config
        self.registry = registry
        self.params_doc = params_doc
        self.platforms = platforms

    def register(self, app: falcon.App) -> None:
        """Add every settings route to ``app``."""
        for suffix in SUFFIXES:
            app.add_route(f"{PREFIX}/{suffix}", self, suffix=suffix)

    def routes(self) -> list[tuple[str, list[str]]]:
        """``(path, methods)`` of every route ``register`` adds, for ``GET /api``."""
        return [(f"{PREFIX}/{suffix}", list(METHODS)) for suffix in SUFFIXES]

    def on_get_filters(self, req: falcon.Request, resp: falcon.Response) -> None:
        """Mask, prompt and source filter names (source: only those that run with the installed models)."""
        resp.media = {
            "mask": list(MASK_FILTERS),
            "prompt": list(PROMPT_FILTERS),
            "source": list(source_filters(self.registry)),
        }

    def on_get_limits(self, req: falcon.Request, resp: falcon.Response) -> None:
        """The limits a submission is checked against: a client can refuse an upload before sending it.

        ``maxBodyBytes`` bounds the whole request (413 past it); ``maxImagePixels`` each uploaded
        image (413) and the width times height asked for (400); ``maxImageSide`` an upload's longer
        side (400); ``maxOutputPixels`` every image a job makes at any stage (400). Kept out of
        ``params``, whose shape onnx-web's clients read.
        """
        resp.media = upload_limits(self.config)

    def on_get_masks(self, req: falcon.Request, resp: falcon.Response) -> None:
        """Mask filter names (deprecated: the same as ``filters.mask``)."""
        resp.media = list(MASK_FILTERS)

    def on_get_models(self, req: falcon.Request, resp: falcon.Response) -> None:
        """Correction, diffusion and upscaling models and networks."""
        resp.media = self.registry.models()

    def on_get_noises(self, req: falcon.Request, resp: falcon.Response) -> None:
        """Noise source names."""
        resp.media = list(NOISE_SOURCES)

    def on_get_params(self, req: falcon.Request, resp: falcon.Response) -> None:
        """The ``params.json`` document."""
        resp.media = self.params_doc

    def on_get_pipelines(self, req: falcon.Request, resp: falcon.Response) -> None:
        """Diffusion pipeline names."""
        resp.media = list(AVAILABLE_PIPELINES)

    def on_get_platforms(self, req: falcon.Request, resp: falcon.Response) -> None:
        """Platform names."""
        resp.media = list(self.platforms())

    def on_get_schedulers(self, req: falcon.Request, resp: falcon.Response) -> None:
        """Scheduler names."""
        resp.media = list(SCHEDULER_NAMES)

    def on_get_stages(self, req: falcon.Request, resp: falcon.Response) -> None:
        """Every stage type of the chain language, from its declaration (``pipelines.stages``)."""
        resp.media = stage_catalogue()

    def on_get_strings(self, req: falcon.Request, resp: falcon.Response) -> None:
        """Localised strings and model labels."""
        resp.media = self.registry.strings()

    def on_get_wildcards(self, req: falcon.Request, resp: falcon.Response) -> None:
        """Wildcard names."""
        resp.media = list(self.registry.wildcards())

    # HEAD answers as GET does; Falcon sends no body for it.
    on_head_filters = on_get_filters
    on_head_masks = on_get_masks
    on_head_models = on_get_models
    on_head_noises = on_get_noises
    on_head_params = on_get_params
    on_head_pipelines = on_get_pipelines
    on_head_platforms = on_get_platforms
    on_head_schedulers = on_get_schedulers
    on_head_stages = on_get_stages
    on_head_strings = on_get_strings
    on_head_wildcards = on_get_wildcards


def upload_limits(config: Config) -> dict[str, int]:
    """``GET /api/settings/limits``: this api's bounds on a submission, by their camelCase names."""
    return {
        "maxBodyBytes": config.max_body_bytes,
        "maxImagePixels": config.max_image_pixels,
        "maxImageSide": MAX_UPLOAD_SIDE,
        "maxOutputPixels": config.max_output_pixels,
    }
