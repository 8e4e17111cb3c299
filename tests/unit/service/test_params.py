"""Request parsing: layouts (contract §3.1), every parameter's rules (§3.2-§3.4), params.json."""

from __future__ import annotations

import json
import math
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipelines.diffusion.schedulers import SCHEDULER_NAMES
from pipelines.models.registry import ModelRegistry
from service.config import Config
from service.errors import ConfigError, InvalidParams
from service.inputs import load_json_or_yaml
from service.params import (
    AVAILABLE_PIPELINES,
    HIGHRES_METHODS,
    MASK_FILTERS,
    NOISE_SOURCES,
    PIPELINES,
    PROMPT_FILTERS,
    ROUTE_PIPELINE_ALIASES,
    ROUTE_PIPELINE_CHOICES,
    SOURCE_FILTERS,
    TILE_ORDERS,
    UPSCALE_ORDERS,
    ParsedRequest,
    check_route_pipeline,
    load_params_doc,
    parse_request,
    request_data,
)

CONFIG = Config()
DOC = load_params_doc(CONFIG)
SEED = 1234


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> ModelRegistry:
    root: Path = tmp_path_factory.mktemp("models")
    for entry in ("stable-diffusion-onnx-v1-5", "diffusion/anime", "control", "wildcard"):
        (root / entry).mkdir(parents=True)
    for entry in ("upscaling-x4.onnx", "correction-gfpgan.onnx", "control/canny.onnx"):
        (root / entry).write_text("")
    (root / "wildcard" / "color.txt").write_text("red\ngreen\n")
    return ModelRegistry(root)


Parse = Callable[..., ParsedRequest]


@pytest.fixture(scope="module")
def parse(registry: ModelRegistry) -> Parse:
    def parse(data: dict[str, Any], route: str = "txt2img", config: Config = CONFIG) -> ParsedRequest:
        return parse_request(
            route, data, params_doc=DOC, registry=registry, config=config, rng=random.Random(SEED)
        )  # type: ignore[arg-type]

    return parse


def rejects(parse: Parse, data: dict[str, Any], field: str, route: str = "txt2img", match: str = "") -> str:
    """Parse ``data`` expecting an ``InvalidParams`` for ``field``; return its rule."""
    with pytest.raises(InvalidParams) as caught:
        parse(data, route)
    assert caught.value.field == field
    assert match in caught.value.rule
    return caught.value.rule


# --- where the parameters come from --------------------------------------------------------------


def test_a_json_document_is_the_request_data() -> None:
    assert request_data({"steps": 3}, {"steps": "9"}) == {"steps": 3}


@pytest.mark.parametrize("document", [{}, None, [], 0, ""])
def test_an_empty_document_falls_back_to_the_query(document: Any) -> None:
    assert request_data(document, {"steps": "9"}) == {"steps": "9"}


def test_a_multipart_json_field_may_be_yaml() -> None:
    document = load_json_or_yaml("params:\n  steps: 3\n", "json")

    assert request_data(document, {}, "json") == {"params": {"steps": 3}}


def test_repeated_query_names_take_the_first_value() -> None:
    assert request_data(None, {"prompt": ["a", "b"]}) == {"prompt": "a"}


@pytest.mark.parametrize(
    ("text", "field"),
    [('{"a": [1]}', None), ("[1, 2]", "json"), ("just text", "json"), ("7", "json")],
)
def test_request_data_that_is_not_an_object_is_refused(text: str, field: str | None) -> None:
    document = load_json_or_yaml(text, "json")
    if field is None:
        assert request_data(document, {}, "json") == {"a": [1]}
        return
    with pytest.raises(InvalidParams) as caught:
        request_data(document, {}, "json")
    assert caught.value.field == field


GUI_REQUEST = {
    "device": {"platform": "cpu"},
    "params": {
        "model": "stable-diffusion-onnx-v1-5",
        "pipeline": "",
        "scheduler": "ddim",
        "prompt": "a __color__ cat",
        "negativePrompt": "blurry",
        "batch": 2,
        "cfg": 7.5,
        "eta": 0.1,
        "steps": 30,
        "seed": 42,
        "tiled_vae": True,
        "unet_tile": 256,
        "unet_overlap": 0.5,
        "vae_tile": 256,
        "vae_overlap": 0.5,
        "upscaling": "upscaling-x4",
        "correction": "correction-gfpgan",
        "control": "",
        "width": 768,
        "height": 640,
        "strength": 0.4,
        "sourceFilter": "",
    },
    "border": {"left": 8, "right": 16, "top": 24, "bottom": 32},
    "upscale": {
        "enabled": True,
        "upscaleOrder": "correction-last",
        "denoise": 0.25,
        "scale": 4,
        "outscale": 2,
        "faces": True,
        "faceOutscale": 2,
        "faceStrength": 0.75,
    },
    "highres": {
        "highres": True,
        "highresIterations": 2,
        "highresMethod": "bilinear",
        "highresScale": 2,
        "highresSteps": 40,
        "highresStrength": 0.3,
    },
    "experimental": {
        "latentSymmetry": {"enabled": True, "gradientStart": 0.1, "gradientEnd": 0.3, "lineOfSymmetry": 0.4},
        "promptEditing": {
            "enabled": True,
            "promptFilter": "AUTOMATIC/promptgen-lexart",
            "addSuffix": "hd",
            "minLength": 100,
            "removeTokens": "bad.*",
        },
    },
}
#: The same request as the GUI's, flat and as strings, as a legacy query-string client sends it.
QUERY_REQUEST = {
    "platform": "cpu",
    "model": "stable-diffusion-onnx-v1-5",
    "scheduler": "ddim",
    "prompt": "a __color__ cat",
    "negativePrompt": "blurry",
    "batch": "2",
    "cfg": "7.50",
    "eta": "0.10",
    "steps": "30.00",
    "seed": "42",
    "tiled_vae": "true",
    "unet_tile": "256",
    "unet_overlap": "0.50",
    "vae_tile": "256",
    "vae_overlap": "0.5",
    "upscaling": "upscaling-x4",
    "correction": "correction-gfpgan",
    "width": "768",
    "height": "640",
    "strength": "0.4",
    "left": "8",
    "right": "16",
    "top": "24",
    "bottom": "32",
    "upscale": "yes",
    "upscaleOrder": "correction-last",
    "denoise": "0.25",
    "scale": "4",
    "outscale": "2",
    "faces": "1",
    "faceOutscale": "2",
    "faceStrength": "0.75",
    "highres": "T",
    "highresIterations": "2",
    "highresMethod": "bilinear",
    "highresScale": "2",
    "highresSteps": "40",
    "highresStrength": "0.3",
}


@pytest.mark.parametrize("route", ["txt2img", "img2img"])
def test_the_three_layouts_parse_alike(parse: Parse, route: str) -> None:
    nested = parse(request_data(load_json_or_yaml(json.dumps(GUI_REQUEST), "json"), {}, "json"), route)
    query = parse(request_data(None, QUERY_REQUEST), route)
    flat_json = {key: value for group in GUI_REQUEST.values() for key, value in group.items()}
    flat_json.update(upscale=True, faces=True, latentSymmetry=GUI_REQUEST["experimental"]["latentSymmetry"])
    flat_json["promptEditing"] = GUI_REQUEST["experimental"]["promptEditing"]
    flat = parse(request_data(flat_json, {}), route)

    assert nested.image == query.image == flat.image
    assert nested.border == query.border == flat.border
    assert nested.upscale == query.upscale == flat.upscale
    assert nested.highres == query.highres == flat.highres
    assert nested.device == query.device == flat.device
    assert nested.img2img == query.img2img == flat.img2img
    assert nested.experimental == flat.experimental


def test_the_gui_request_in_full(parse: Parse) -> None:
    parsed = parse(GUI_REQUEST, "img2img")

    assert parsed.device.to_dict() == {"platform": "cpu"}
    assert parsed.image.to_dict() == {
        "model": "stable-diffusion-onnx-v1-5",
        "pipeline": "img2img",
        "scheduler": "ddim",
        "prompt": parsed.image.prompt,
        "negative_prompt": "blurry",
        "cfg": 7.5,
        "seed": 42,
        "steps": 30,
        "eta": 0.1,
        "batch": 2,
        "control": "",
        "input_prompt": "a __color__ cat",
        "input_negative_prompt": "blurry",
        "loopback": 0,
        "tiled_vae": True,
        "unet_overlap": 0.5,
        "unet_tile": 256,
        "vae_overlap": 0.5,
        "vae_tile": 256,
        "denoise": 3,
        "thumbnail": True,
    }
    assert parsed.image.prompt in ("a red cat", "a green cat")
    assert (parsed.image.width, parsed.image.height) == (768, 640)
    assert parsed.border.to_dict() == {"left": 8, "right": 16, "top": 24, "bottom": 32}
    assert parsed.upscale.to_dict() == {
        "upscale_model": "upscaling-x4",
        "correction_model": "correction-gfpgan",
        "denoise": 0.25,
        "upscale": True,
        "faces": True,
        "face_outscale": 2,
        "face_strength": 0.75,
        "outscale": 2,
        "pre_pad": 0,
        "scale": 4,
        "tile_pad": 10,
        "upscale_order": "correction-last",
    }
    assert parsed.highres is not None
    assert parsed.highres.to_dict() == {
        "enabled": True,
        "iterations": 2,
        "method": "bilinear",
        "scale": 2,
        "steps": 40,
        "strength": 0.3,
    }
    assert parsed.experimental.to_dict() == {
        "latent_symmetry": {
            "enabled": True,
            "gradient_start": 0.1,
            "gradient_end": 0.3,
            "line_of_symmetry": 0.4,
        },
        "prompt_editing": {
            "enabled": True,
            "filter": "AUTOMATIC/promptgen-lexart",
            "remove_tokens": "bad.*",
            "add_suffix": "hd",
            "min_length": 100,
        },
    }
    assert parsed.img2img is not None
    assert parsed.img2img.to_dict() == {"strength": 0.4, "source_filter": "none"}
    assert parsed.inpaint is None


def test_defaults_come_from_params_json(parse: Parse) -> None:
    parsed = parse({}, "inpaint")

    image = parsed.image
    assert (image.model, image.pipeline, image.scheduler, image.prompt, image.negative_prompt) == (
        "stable-diffusion-onnx-v1-5",
        "inpaint",
        "euler-a",
        "",
        None,
    )
    assert (image.batch, image.cfg, image.eta, image.steps, image.loopback) == (1, 6.0, 0.0, 25, 0)
    assert (image.width, image.height, image.unet_tile, image.vae_tile, image.control) == (
        512,
        512,
        512,
        512,
        None,
    )
    assert (image.tiled_vae, image.thumbnail) == (False, True)
    assert 0 <= image.seed < 2**31 - 1
    assert parsed.device.platform is None
    assert parsed.highres is not None
    assert (parsed.highres.enabled, parsed.highres.method, parsed.highres.steps) == (False, "lanczos", 25)
    assert (parsed.upscale.upscale, parsed.upscale.faces, parsed.upscale.upscale_model) == (
        False,
        False,
        None,
    )
    assert parsed.upscale.upscale_order == "correction-first"
    assert parsed.inpaint is not None
    assert parsed.inpaint.to_dict() == {
        "fill_color": "white",
        "mask_filter": "none",
        "noise_source": "histogram",
        "tile_order": "spiral",
        "fullres_inpaint": True,
        "fullres_inpaint_padding": 1.2,
    }
    assert parsed.experimental.prompt_editing.enabled is False
    assert parsed.experimental.prompt_editing.filter == "none"


@pytest.mark.parametrize("route", ["txt2img", "img2img", "inpaint"])
def test_each_route_takes_the_pipelines_it_runs_and_refuses_unknown_names(parse: Parse, route: str) -> None:
    # Parsing takes every pipeline that runs here (img2img's txt2img-sdxl as what it maps to); which
    # route runs which is the chain builder's check.
    for pipeline in AVAILABLE_PIPELINES:
        mapped = ROUTE_PIPELINE_ALIASES.get(route, {}).get(pipeline, pipeline)
        assert parse({"pipeline": pipeline}, route).image.pipeline == mapped
    rule = rejects(parse, {"pipeline": "bogus"}, "pipeline", route=route)
    assert rule == f'must be one of {", ".join(PIPELINES)}; got "bogus"'


@pytest.mark.parametrize(
    ("route", "pipeline"), [("txt2img", "txt2img"), ("upscale", "upscale"), ("blend", "txt2img")]
)
@pytest.mark.parametrize("given", [{}, {"pipeline": ""}, {"pipeline": None}])
def test_a_missing_pipeline_is_the_routes_own(
    parse: Parse, route: str, pipeline: str, given: dict[str, Any]
) -> None:
    assert parse(given, route).image.pipeline == pipeline


def test_img2img_source_filter_defaults_to_none(parse: Parse) -> None:
    parsed = parse({"sourceFilter": ""}, "img2img")

    assert parsed.img2img is not None and parsed.img2img.source_filter == "none"


def test_blend_has_no_highres_and_no_wildcards(parse: Parse) -> None:
    parsed = parse({"prompt": "__color__", "highres": {"highresScale": 2, "highresSteps": 10}}, "blend")

    assert parsed.highres is None
    assert parsed.image.prompt == "__color__"


@pytest.mark.parametrize(
    ("route", "data", "field"),
    [
        ("txt2img", {"strength": 1e9}, "strength"),
        ("blend", {"highresSteps": "NaN"}, "highresSteps"),
        ("blend", {"highres": {"highresScale": "bad"}}, "highresScale"),
        ("txt2img", {"fillColor": "not a colour"}, "fillColor"),
        ("upscale", {"tileOrder": "zigzag"}, "tileOrder"),
    ],
)
def test_every_known_parameter_is_checked_on_every_route(
    parse: Parse, route: str, data: dict[str, Any], field: str
) -> None:
    rejects(parse, data, field, route)


def test_valid_values_a_route_does_not_use_are_accepted_and_ignored(parse: Parse) -> None:
    parsed = parse({"strength": 0.3, "fillColor": "#ff0000", "highresSteps": 12}, "txt2img")

    assert parsed.img2img is None and parsed.inpaint is None


def test_an_unknown_route_is_a_programming_error(parse: Parse) -> None:
    with pytest.raises(ValueError, match="not an image route"):
        parse({}, "chain")


# --- group lookup ---------------------------------------------------------------------------------


@pytest.mark.parametrize("group", ["device", "params"])
@pytest.mark.parametrize("value", ["cpu", 3, None, [1]])
def test_device_and_params_must_be_objects_when_present(parse: Parse, group: str, value: Any) -> None:
    rejects(parse, {group: value}, group, match="must be an object")


@pytest.mark.parametrize("group", ["border", "upscale", "highres", "experimental"])
def test_other_groups_are_read_flat_unless_an_object(parse: Parse, group: str) -> None:
    # ``upscale`` and ``highres`` double as the flat layout's switches, so they hold booleans there.
    value = False if group in ("upscale", "highres") else 5
    flat = parse({group: value, "left": 8, "highresScale": 3, "denoise": 0.2})

    assert (flat.border.left, flat.upscale.denoise) == (8, 0.2)
    assert flat.highres is not None and flat.highres.scale == 3


def test_nested_groups_ignore_flat_keys(parse: Parse) -> None:
    parsed = parse({"border": {"top": 8}, "left": 16, "highres": {}, "highresScale": 3})

    assert (parsed.border.top, parsed.border.left) == (8, 0)
    assert parsed.highres is not None and parsed.highres.scale == 1


def test_image_params_come_from_params_not_the_top(parse: Parse) -> None:
    assert parse({"params": {"steps": 5}, "steps": 9}).image.steps == 5


@pytest.mark.parametrize("key", ["latentSymmetry", "promptEditing"])
def test_experimental_sub_objects_must_be_objects(parse: Parse, key: str) -> None:
    rejects(parse, {"experimental": {key: True}}, key, match="must be an object")


# --- the GUI's upscale layout (contract §14 item 1) -------------------------------------------------


def test_upscale_enabled_is_an_alias_and_models_fall_back_to_params(parse: Parse) -> None:
    parsed = parse({"params": {"upscaling": "upscaling-x4"}, "upscale": {"enabled": True}})

    assert parsed.upscale.upscale is True
    assert parsed.upscale.upscale_model == "upscaling-x4"


def test_upscale_upscale_wins_over_enabled(parse: Parse) -> None:
    assert (
        parse(
            {"params": {"upscaling": "upscaling-x4"}, "upscale": {"upscale": False, "enabled": True}}
        ).upscale.upscale
        is False
    )


def test_enabled_is_not_an_alias_at_the_top_level(parse: Parse) -> None:
    assert parse({"enabled": True}).upscale.upscale is False


def test_upscale_group_model_names_win_over_params(parse: Parse, registry: ModelRegistry) -> None:
    parsed = parse({"params": {"correction": "nope"}, "upscale": {"correction": "correction-gfpgan"}})

    assert parsed.upscale.correction_model == "correction-gfpgan"


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"upscale": True}, "upscaling"),
        ({"faces": True}, "correction"),
        ({"highres": True, "highresMethod": "upscale"}, "upscaling"),
    ],
)
def test_a_switched_on_stage_needs_its_model(parse: Parse, data: dict[str, Any], field: str) -> None:
    rejects(parse, data, field, match="is on but no")


@pytest.mark.parametrize("field", ["upscaling", "correction"])
def test_unknown_upscale_models_are_refused_with_the_list(parse: Parse, field: str) -> None:
    rule = rejects(parse, {"params": {field: "missing"}}, field)

    assert rule.endswith("upscaling-x4" if field == "upscaling" else "correction-gfpgan")


# --- models ---------------------------------------------------------------------------------------


def test_an_unknown_model_is_refused_with_the_list(parse: Parse) -> None:
    rule = rejects(parse, {"model": "nope"}, "model")

    assert rule == 'no diffusion model "nope"; available: stable-diffusion-onnx-v1-5, anime'


@pytest.mark.parametrize("name", ["anime", "diffusion/anime"])
def test_sub_folder_models_resolve_either_way(parse: Parse, name: str) -> None:
    parsed = parse({"model": name})

    assert parsed.image.model == "diffusion/anime"
    assert parsed.image.to_dict()["model"] == "diffusion/anime"


@pytest.mark.parametrize("name", ["../stable-diffusion-onnx-v1-5", "/etc", "stable-diffusion-onnx-v1-5/.."])
def test_traversal_model_names_are_refused(parse: Parse, name: str) -> None:
    rejects(parse, {"model": name}, "model")


def test_control_must_be_a_controlnet(parse: Parse) -> None:
    # The control network is checked (and recorded) whatever the pipeline.
    assert parse({"control": "canny"}, "img2img").image.control == "canny"
    rejects(parse, {"control": "lineart"}, "control", match="available: canny")


@pytest.mark.parametrize(
    ("pipeline", "routes"),
    [
        ("panorama-sdxl", {"txt2img", "img2img", "inpaint"}),
        ("panorama", {"txt2img", "img2img", "inpaint"}),
        ("pix2pix", {"img2img"}),
    ],
)
def test_panorama_and_pix2pix_run_on_their_routes_only(parse: Parse, pipeline: str, routes: set[str]) -> None:
    for route in routes:
        assert parse({"pipeline": pipeline}, route).image.pipeline == pipeline
        check_route_pipeline(route, pipeline)
    for other in {"txt2img", "img2img", "inpaint"} - routes:
        with pytest.raises(InvalidParams, match=f"{pipeline} .*not run"):
            check_route_pipeline(other, pipeline)


def test_txt2img_sdxl_on_img2img_is_recorded_as_img2img_sdxl(parse: Parse) -> None:
    # onnx-web maps it so (contract §8.6); the job records and runs what it maps to.
    parsed = parse({"pipeline": "txt2img-sdxl"}, "img2img")
    assert parsed.image.pipeline == "img2img-sdxl"
    assert parsed.image.to_dict()["pipeline"] == "img2img-sdxl"
    check_route_pipeline("img2img", parsed.image.pipeline)
    # Only there: txt2img keeps it, and inpaint refuses it.
    assert parse({"pipeline": "txt2img-sdxl"}).image.pipeline == "txt2img-sdxl"
    assert parse({"pipeline": "txt2img-sdxl"}, "inpaint").image.pipeline == "txt2img-sdxl"
    with pytest.raises(InvalidParams, match="txt2img-sdxl does not run on inpaint"):
        check_route_pipeline("inpaint", "txt2img-sdxl")


def test_inpaint_refuses_controlnet_which_onnx_web_accepts_there_saying_so() -> None:
    with pytest.raises(InvalidParams) as caught:
        check_route_pipeline("inpaint", "controlnet")
    assert caught.value.field == "pipeline"
    assert caught.value.rule == (
        "ControlNet inpainting is not run by this server; inpaint runs: inpaint, lpw, panorama, panorama-sdxl"
    )


@pytest.mark.parametrize(
    ("route", "pipeline"),
    [
        ("txt2img", "img2img"),
        ("txt2img", "inpaint"),
        ("img2img", "txt2img"),
        ("inpaint", "txt2img-sdxl"),
        ("inpaint", "pix2pix"),
        ("inpaint", "img2img"),
        ("inpaint", "img2img-sdxl"),
        ("txt2img", "img2img-sdxl"),
    ],
)
def test_a_pipeline_of_another_route_is_refused_naming_what_the_route_runs(route: str, pipeline: str) -> None:
    with pytest.raises(InvalidParams) as caught:
        check_route_pipeline(route, pipeline)
    runs = ", ".join(ROUTE_PIPELINE_CHOICES[route])
    assert caught.value.field == "pipeline"
    assert caught.value.rule == f"{pipeline} does not run on {route}; {route} runs: {runs}"
    for allowed in ROUTE_PIPELINE_CHOICES[route]:
        check_route_pipeline(route, allowed)
    # The routes without a pipeline choice are not checked by route (nor are chain stages).
    check_route_pipeline("upscale", pipeline)


# --- choices --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "allowed", "route", "group"),
    [
        ("scheduler", SCHEDULER_NAMES, "txt2img", "params"),
        ("sourceFilter", SOURCE_FILTERS, "img2img", "params"),
        ("filter", MASK_FILTERS, "inpaint", "params"),
        ("noise", NOISE_SOURCES, "inpaint", "params"),
        ("tileOrder", TILE_ORDERS, "inpaint", "params"),
        ("highresMethod", HIGHRES_METHODS, "txt2img", "highres"),
        ("upscaleOrder", UPSCALE_ORDERS, "txt2img", "upscale"),
    ],
)
def test_unknown_choices_are_refused_with_the_allowed_list(
    parse: Parse, key: str, allowed: tuple[str, ...], route: str, group: str
) -> None:
    for value in allowed:
        # The controlnet pipeline needs a ControlNet named; it is ignored by the other pipelines.
        assert getattr_path(parse({group: {key: value, "control": "canny"}}, route), key) == value
    rule = rejects(parse, {group: {key: "bogus"}}, key, route=route)

    assert rule == f'must be one of {", ".join(allowed)}; got "bogus"'
    rejects(parse, {group: {key: 3}}, key, route=route, match="must be a string")


CHOICE_ATTRIBUTES = {
    "scheduler": "image.scheduler",
    "pipeline": "image.pipeline",
    "sourceFilter": "img2img.source_filter",
    "filter": "inpaint.mask_filter",
    "noise": "inpaint.noise_source",
    "tileOrder": "inpaint.tile_order",
    "highresMethod": "highres.method",
    "upscaleOrder": "upscale.upscale_order",
}


def getattr_path(parsed: ParsedRequest, key: str) -> Any:
    value: Any = parsed
    for name in CHOICE_ATTRIBUTES[key].split("."):
        value = getattr(value, name)
    return value


@pytest.mark.parametrize("group", ["params", None])
def test_deis_is_taken_as_deis_multi_and_recorded_so(parse: Parse, group: str | None) -> None:
    # onnx-web's GUI profiles send "deis", which onnx-web's list does not have (it runs ddim).
    data = {group: {"scheduler": "deis"}} if group else {"scheduler": "deis"}
    parsed = parse(data, "img2img")
    assert parsed.image.scheduler == "deis-multi"
    assert parsed.image.to_dict()["scheduler"] == "deis-multi"
    assert "deis" not in SCHEDULER_NAMES
    # The alias is exact: other near names are still refused, naming the list.
    rejects(parse, {"scheduler": "DEIS"}, "scheduler", match="must be one of ddim, ddpm, deis-multi")
    rejects(parse, {"pipeline": "deis"}, "pipeline")


def test_kernel_tile_order_is_refused(parse: Parse) -> None:
    rejects(parse, {"tileOrder": "kernel"}, "tileOrder", route="inpaint")


def test_prompt_filter_choices(parse: Parse) -> None:
    for name in ("none", *PROMPT_FILTERS):
        assert (
            parse(
                {"experimental": {"promptEditing": {"promptFilter": name}}}
            ).experimental.prompt_editing.filter
            == name
        )
    rejects(parse, {"experimental": {"promptEditing": {"promptFilter": "gpt"}}}, "promptEditing.promptFilter")


def test_remove_tokens_must_be_a_regular_expression(parse: Parse) -> None:
    rejects(parse, {"experimental": {"promptEditing": {"removeTokens": "("}}}, "promptEditing.removeTokens")


@pytest.mark.parametrize("colour", ["red", "#ff0000", "#f00", "rgb(1, 2, 3)", "White"])
def test_fill_colours(parse: Parse, colour: str) -> None:
    parsed = parse({"fillColor": colour}, "inpaint")

    assert parsed.inpaint is not None and parsed.inpaint.fill_color == colour


@pytest.mark.parametrize("colour", ["reddish", "#12", "#" + "f" * 100, 12])
def test_bad_fill_colours_are_refused(parse: Parse, colour: Any) -> None:
    rejects(parse, {"fillColor": colour}, "fillColor", route="inpaint")


@pytest.mark.parametrize(
    ("platform", "expected"), [("cpu", "cpu"), ("cuda", "cuda"), ("any", None), ("", None)]
)
def test_platforms(parse: Parse, platform: str, expected: str | None) -> None:
    assert parse({"device": {"platform": platform}}).device.platform == expected


def test_unknown_and_blocked_platforms_are_refused(parse: Parse, registry: ModelRegistry) -> None:
    rejects(parse, {"platform": "amd"}, "platform", match="must be one of any, cpu, cuda")
    blocked = Config(block_platforms=("cuda",))
    with pytest.raises(InvalidParams, match="platform: must be one of any, cpu, directml"):
        parse({"platform": "cuda"}, config=blocked)


# --- numbers and booleans -------------------------------------------------------------------------

#: (request key, group, how to read the parsed value, is it an integer)
RANGED: list[tuple[str, str, Callable[[ParsedRequest], Any], bool]] = [
    ("batch", "params", lambda p: p.image.batch, True),
    ("cfg", "params", lambda p: p.image.cfg, False),
    ("eta", "params", lambda p: p.image.eta, False),
    ("loopback", "params", lambda p: p.image.loopback, True),
    ("steps", "params", lambda p: p.image.steps, True),
    ("unet_tile", "params", lambda p: p.image.unet_tile, True),
    ("unet_overlap", "params", lambda p: p.image.unet_overlap, False),
    ("vae_tile", "params", lambda p: p.image.vae_tile, True),
    ("vae_overlap", "params", lambda p: p.image.vae_overlap, False),
    ("width", "params", lambda p: p.image.width, True),
    ("height", "params", lambda p: p.image.height, True),
    ("strength", "params", lambda p: p.img2img.strength, False),
    ("fullresInpaintPadding", "params", lambda p: p.inpaint.fullres_inpaint_padding, False),
    ("left", "border", lambda p: p.border.left, True),
    ("right", "border", lambda p: p.border.right, True),
    ("top", "border", lambda p: p.border.top, True),
    ("bottom", "border", lambda p: p.border.bottom, True),
    ("denoise", "upscale", lambda p: p.upscale.denoise, False),
    ("scale", "upscale", lambda p: p.upscale.scale, True),
    ("outscale", "upscale", lambda p: p.upscale.outscale, True),
    ("faceOutscale", "upscale", lambda p: p.upscale.face_outscale, True),
    ("faceStrength", "upscale", lambda p: p.upscale.face_strength, False),
    ("highresIterations", "highres", lambda p: p.highres.iterations, True),
    ("highresScale", "highres", lambda p: p.highres.scale, True),
    ("highresSteps", "highres", lambda p: p.highres.steps, True),
    ("highresStrength", "highres", lambda p: p.highres.strength, False),
    (
        "latentSymmetry.gradientStart",
        "experimental",
        lambda p: p.experimental.latent_symmetry.gradient_start,
        False,
    ),
    (
        "latentSymmetry.gradientEnd",
        "experimental",
        lambda p: p.experimental.latent_symmetry.gradient_end,
        False,
    ),
    (
        "latentSymmetry.lineOfSymmetry",
        "experimental",
        lambda p: p.experimental.latent_symmetry.line_of_symmetry,
        False,
    ),
    ("promptEditing.minLength", "experimental", lambda p: p.experimental.prompt_editing.min_length, True),
]
ROUTE_OF = {"strength": "img2img", "fullresInpaintPadding": "inpaint"}


def nested(group: str, key: str, value: Any) -> dict[str, Any]:
    """A request setting ``key`` (dotted below ``experimental``) in ``group``."""
    for part in reversed(key.split(".")):
        value = {part: value}
    return {group: value}


def entry(key: str) -> dict[str, Any]:
    node: Any = DOC
    for part in key.split("."):
        node = node[part]
    return node


@pytest.mark.parametrize(("key", "group", "read", "integer"), RANGED, ids=[row[0] for row in RANGED])
def test_range_edges(
    parse: Parse, key: str, group: str, read: Callable[[ParsedRequest], Any], integer: bool
) -> None:
    low, high = entry(key)["min"], entry(key)["max"]
    step = SIZE_STEP if key in ("width", "height") else 1 if integer else 0.01
    route = ROUTE_OF.get(key, "txt2img")

    for value in (low, high):
        parsed = read(parse(nested(group, key, value), route))
        assert parsed == value and isinstance(parsed, int if integer else float)
    for value in (low - step, high + step):
        kind = "an integer" if integer else "a number"
        rules = rejects(parse, nested(group, key, value), key, route=route)
        assert rules == f"must be {kind} from {low} to {high}, got {json.dumps(value)}"


SIZE_STEP = 8
INTEGER_FIELDS = [row for row in RANGED if row[3]]
FLOAT_FIELDS = [row for row in RANGED if not row[3]]


@pytest.mark.parametrize(
    ("raw", "expected"), [(3.0, 3), ("3", 3), (" 3 ", 3), ("3.00", 3), ("+3", 3), ("3e0", 3)]
)
def test_integer_coercions_accepted(parse: Parse, raw: Any, expected: int) -> None:
    assert parse({"steps": raw}).image.steps == expected


@pytest.mark.parametrize(
    "raw",
    [
        7.5,
        "7.5",
        "abc",
        None,
        True,
        False,
        "",
        "0x10",
        "١٢",
        "1_0",
        float("nan"),
        float("inf"),
        [3],
        {"a": 3},
        "3" * 100,
    ],
)
@pytest.mark.parametrize(
    ("key", "group", "read", "integer"), INTEGER_FIELDS[:5], ids=[row[0] for row in INTEGER_FIELDS[:5]]
)
def test_integer_coercions_refused(
    parse: Parse, raw: Any, key: str, group: str, read: Any, integer: bool
) -> None:
    rule = rejects(parse, nested(group, key, raw), key, route=ROUTE_OF.get(key, "txt2img"))

    assert rule.startswith("must be an integer from")


@pytest.mark.parametrize(("raw", "expected"), [(1, 1.0), ("0.5", 0.5), (".5", 0.5), ("1e-1", 0.1), (0, 0.0)])
def test_float_coercions_accepted(parse: Parse, raw: Any, expected: float) -> None:
    assert parse({"eta": raw}).image.eta == expected


@pytest.mark.parametrize(
    "raw", ["nan", "inf", "-inf", float("nan"), float("inf"), None, True, "", "abc", "1,5", 10**400, [0.5]]
)
def test_float_coercions_refused(parse: Parse, raw: Any) -> None:
    rule = rejects(parse, {"eta": raw}, "eta")

    assert rule.startswith("must be a number from 0 to 1, got")


TRUE_WORDS = ["1", "t", "true", "y", "yes", "TRUE", "Yes", "T"]
FALSE_WORDS = ["0", "f", "false", "n", "no", "FALSE", "No", "F"]
BOOLEANS: list[tuple[str, str, Callable[[ParsedRequest], bool]]] = [
    ("tiled_vae", "params", lambda p: p.image.tiled_vae),
    ("thumbnail", "params", lambda p: p.image.thumbnail),
    ("fullresInpaint", "params", lambda p: p.inpaint.fullres_inpaint),
    ("faces", "upscale", lambda p: p.upscale.faces),
    ("highres", "highres", lambda p: p.highres.enabled),
    ("latentSymmetry.enabled", "experimental", lambda p: p.experimental.latent_symmetry.enabled),
    ("promptEditing.enabled", "experimental", lambda p: p.experimental.prompt_editing.enabled),
]


@pytest.mark.parametrize(("key", "group", "read"), BOOLEANS, ids=[row[0] for row in BOOLEANS])
def test_booleans(parse: Parse, key: str, group: str, read: Callable[[ParsedRequest], bool]) -> None:
    base = {"params": {"correction": "correction-gfpgan"}}
    for value, expected in [
        (True, True),
        (False, False),
        *((w, True) for w in TRUE_WORDS),
        *((w, False) for w in FALSE_WORDS),
    ]:
        assert read(parse({**base, **nested(group, key, value)}, "inpaint")) is expected
    for value in (1, 0, None, "", "maybe", "on", [True]):
        rejects(
            parse, {**base, **nested(group, key, value)}, key, route="inpaint", match="must be true or false"
        )


# --- seed, size and prompt ------------------------------------------------------------------------


@pytest.mark.parametrize(("raw", "expected"), [(0, 0), (2**32 - 1, 2**32 - 1), ("77", 77), (5.0, 5)])
def test_seeds_accepted(parse: Parse, raw: Any, expected: int) -> None:
    assert parse({"seed": raw}).image.seed == expected


@pytest.mark.parametrize("raw", [-1, "-1", -1.0])
def test_random_seed_is_drawn_from_the_rng(parse: Parse, raw: Any) -> None:
    assert parse({"seed": raw}).image.seed == random.Random(SEED).randrange(2**31 - 1)


@pytest.mark.parametrize("raw", [-2, 2**32, "abc", None, True, 1.5])
def test_seeds_refused(parse: Parse, raw: Any) -> None:
    rejects(parse, {"seed": raw}, "seed", match="must be -1 (random) or an integer from 0 to 4294967295")


@pytest.mark.parametrize("key", ["width", "height"])
@pytest.mark.parametrize("value", [132, 516, 8188])
def test_sizes_must_be_multiples_of_8(parse: Parse, key: str, value: int) -> None:
    assert rejects(parse, {key: value}, key) == f"must be a multiple of 8, got {value}"


def test_the_pixel_limit_names_width_and_height(parse: Parse, registry: ModelRegistry) -> None:
    small = Config(max_image_pixels=512 * 512)
    parse({"width": 512, "height": 512}, config=small)

    with pytest.raises(InvalidParams) as caught:
        parse({"width": 512, "height": 520}, config=small)
    assert caught.value.field == "width/height"
    assert caught.value.rule == "must be at most 262144 pixels together, got 512x520 = 266240"


def test_prompt_length_limit(parse: Parse) -> None:
    assert len(parse({"prompt": "x" * 20_000}).image.prompt) == 20_000
    rejects(parse, {"prompt": "x" * 20_001}, "prompt", match="at most 20000 characters")
    rejects(parse, {"negativePrompt": "x" * 20_001}, "negativePrompt", match="at most 20000 characters")


@pytest.mark.parametrize("raw", [None, 3, ["a"], {"a": 1}, True])
def test_prompts_must_be_strings(parse: Parse, raw: Any) -> None:
    rejects(parse, {"prompt": raw}, "prompt", match="must be a string")


@pytest.mark.parametrize(("raw", "expected"), [("", None), ("   ", None), (None, None), (" ugly ", " ugly ")])
def test_blank_negative_prompts_are_none(parse: Parse, raw: Any, expected: str | None) -> None:
    parsed = parse({"negativePrompt": raw})

    assert parsed.image.negative_prompt == parsed.image.input_negative_prompt == expected


def test_wildcards_expand_in_both_prompts_with_the_seed(parse: Parse) -> None:
    parsed = parse({"prompt": "a __color__ cat", "negativePrompt": "__color__ __missing__", "seed": 3})

    assert parsed.image.input_prompt == "a __color__ cat"
    assert parsed.image.input_negative_prompt == "__color__ __missing__"
    assert parsed.image.prompt in ("a red cat", "a green cat")
    assert parsed.image.negative_prompt in ("red ", "green ")
    assert parse({"prompt": "a __color__ cat", "seed": 3}).image.prompt == parsed.image.prompt


def test_exhausting_a_wildcard_is_a_prompt_error(parse: Parse) -> None:
    rejects(
        parse, {"prompt": "__color__ __color__ __color__"}, "prompt", match="__color__ is used more often"
    )


# --- params.json ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "names"),
    [
        ("pipeline", PIPELINES),
        ("scheduler", SCHEDULER_NAMES),
        ("noise", NOISE_SOURCES),
        ("filter", MASK_FILTERS),
        ("sourceFilter", SOURCE_FILTERS),
        ("tileOrder", TILE_ORDERS),
        ("highresMethod", HIGHRES_METHODS),
        ("upscaleOrder", UPSCALE_ORDERS),
    ],
)
def test_params_json_keys_list_what_the_parser_accepts(key: str, names: tuple[str, ...]) -> None:
    assert DOC[key]["keys"] == list(names)


def test_params_json_promises_the_gui_needs() -> None:
    assert [int(part) for part in DOC["version"].split(".")] >= [0, 10, 0]
    assert DOC["promptEditing"]["filter"]["keys"] == ["none", *PROMPT_FILTERS]
    for key, value in DOC.items():
        if isinstance(value, dict) and "min" in value:
            assert value["min"] <= value["default"] <= value["max"], key


def test_params_override_file_or_folder_and_default_platform(tmp_path: Path) -> None:
    (tmp_path / "params.json").write_text(
        json.dumps({"version": "0.14.0", "steps": {"default": 9, "min": 1, "max": 10, "step": 1}})
    )

    for path in (tmp_path, tmp_path / "params.json"):
        doc = load_params_doc(Config(params_path=path, default_platform="cuda"))
        assert doc["version"] == "0.14.0"
        assert doc["steps"]["max"] == 10
        assert doc["cfg"] == DOC["cfg"]  # entries the override lacks stay built in
        assert doc["platform"] == {"default": "cuda", "keys": []}


@pytest.mark.parametrize(
    "content",
    [
        "{broken",
        "[1]",
        json.dumps({"highresSteps": {"default": 0, "min": 1, "max": 500}}),
        json.dumps({"latentSymmetry": {"gradientEnd": {"default": 0.9, "min": 0, "max": 0.5}}}),
        json.dumps({"steps": {"default": "25", "min": 1, "max": 300}}),
        json.dumps({"steps": {"default": 25}}),
        json.dumps({"steps": 25}),
        json.dumps({"platform": "cpu"}),
        json.dumps({"promptEditing": {"default": False, "minLength": {"default": 80}}}),
    ],
)
def test_bad_params_files_stop_the_start(tmp_path: Path, content: str) -> None:
    (tmp_path / "params.json").write_text(content)

    with pytest.raises(ConfigError):
        load_params_doc(Config(params_path=tmp_path))


def test_a_yaml_alias_bomb_is_refused_quickly() -> None:
    """Nine aliases of nine aliases …: small as text, 9^9 items if anything walked it."""
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 9)]
    with pytest.raises(InvalidParams, match="must not use YAML aliases") as caught:
        load_json_or_yaml("\n".join([*lines, "steps: *a8"]), "json")
    assert caught.value.field == "json"


def test_a_missing_params_file_stops_the_start(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_params_doc(Config(params_path=tmp_path / "absent.json"))


# --- properties: arbitrary input is either valid or refused with InvalidParams ---------------------

JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=30),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=10), children, max_size=3)
    ),
    max_leaves=8,
)
REQUEST_KEYS = sorted(
    {key.split(".")[-1] for key, *_ in RANGED}
    | {key.split(".")[-1] for key, *_ in BOOLEANS}
    | {
        "platform",
        "model",
        "pipeline",
        "scheduler",
        "prompt",
        "negativePrompt",
        "seed",
        "control",
        "upscaling",
        "correction",
        "upscale",
        "enabled",
        "upscaleOrder",
        "highresMethod",
        "sourceFilter",
        "fillColor",
        "filter",
        "noise",
        "tileOrder",
        "promptFilter",
        "addSuffix",
        "removeTokens",
        "device",
        "params",
        "border",
        "highres",
        "experimental",
        "latentSymmetry",
        "promptEditing",
    }
)
ROUTES = ["txt2img", "img2img", "inpaint", "upscale", "blend", "txt2txt"]
HYPOTHESIS = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


def check(parse: Parse, data: dict[str, Any], route: str) -> None:
    """Parse ``data``: an ``InvalidParams`` is fine, any other exception fails; results are in range."""
    try:
        parsed = parse(data, route)
    except InvalidParams as err:
        assert err.rule
        return
    image = parsed.image
    assert 1 <= image.steps <= 300 and 1 <= image.batch <= 5
    assert image.width % 8 == 0 and image.height % 8 == 0
    assert image.width * image.height <= CONFIG.max_image_pixels
    assert 0 <= image.seed <= 2**32 - 1
    assert math.isfinite(image.cfg) and 0 <= image.cfg <= 30
    assert image.scheduler in SCHEDULER_NAMES and image.pipeline in PIPELINES
    assert isinstance(image.prompt, str) and len(image.input_prompt) <= 20_000


@HYPOTHESIS
@given(
    key=st.sampled_from(REQUEST_KEYS),
    value=JSON_VALUES,
    route=st.sampled_from(ROUTES),
    layout=st.sampled_from(
        ["flat", "params", "upscale", "highres", "experimental", "latentSymmetry", "promptEditing"]
    ),
)
def test_any_value_of_any_field_is_valid_or_refused(
    parse: Parse, key: str, value: Any, route: str, layout: str
) -> None:
    data: dict[str, Any] = {key: value}
    if layout in ("latentSymmetry", "promptEditing"):
        data = {"experimental": {layout: data}}
    elif layout != "flat":
        data = {layout: data}
    check(parse, data, route)


@HYPOTHESIS
@given(
    data=st.dictionaries(st.sampled_from(REQUEST_KEYS), JSON_VALUES, max_size=6),
    route=st.sampled_from(ROUTES),
)
def test_any_combination_is_valid_or_refused(parse: Parse, data: dict[str, Any], route: str) -> None:
    check(parse, data, route)


@HYPOTHESIS
@given(
    text=st.text(max_size=60),
    query=st.dictionaries(st.sampled_from(REQUEST_KEYS), st.text(max_size=12), max_size=6),
)
def test_any_form_text_and_query_are_valid_or_refused(parse: Parse, text: str, query: dict[str, str]) -> None:
    try:
        data = request_data(load_json_or_yaml(text, "json"), query, "json")
    except InvalidParams:
        return
    assert isinstance(data, dict)
    check(parse, data, "inpaint")
