"""The chains the api builds (``service.chains``): the legacy routes' stages, what each img2img and
inpaint stage runs and how, and chain documents' stage params."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from pipelines.context import StageImage
from pipelines.models.registry import ModelRegistry
from pipelines.stages.spec import MAX_TILE
from service.chains import (
    BuiltChain,
    build_chain,
    build_img2img,
    build_inpaint,
    build_txt2img,
    extras_hashes,
    require_runnable,
)
from service.config import Config
from service.errors import InvalidParams
from service.jobrun import complete_metadata
from service.params import ParsedRequest, load_params_doc, parse_request

CONFIG = Config()
MODEL = "stable-diffusion-onnx-v1-5"
UPSCALER = "upscaling-real-esrgan-x4-plus"
SD_UPSCALER = "upscaling-stable-diffusion-x4"
CODEFORMER = "correction-codeformer.onnx"
#: A source three 512-px windows wide.
WIDE = (1024, 512)


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> ModelRegistry:
    root: Path = tmp_path_factory.mktemp("models")
    (root / MODEL).mkdir()
    (root / f"{UPSCALER}.onnx").write_bytes(b"")
    (root / SD_UPSCALER).mkdir()
    (root / CODEFORMER).write_bytes(b"")
    return ModelRegistry(root)


def parsed(registry: ModelRegistry, route: str, **data: Any) -> ParsedRequest:
    """A request to ``route`` with a prompt and ``data``, parsed as the api does."""
    return parse_request(
        route,
        {"prompt": "a coast", **data},
        params_doc=load_params_doc(CONFIG),
        registry=registry,
        config=CONFIG,
        rng=random.Random(7),
    )


def img2img_chain(registry: ModelRegistry, **data: Any) -> BuiltChain:
    return build_img2img(parsed(registry, "img2img", **data), WIDE, image_format="png", thumbnail_size=1024)


def img2img_stages(chain: BuiltChain) -> list[dict[str, Any]]:
    return [entry for entry in chain.chain["stages"] if entry["type"] == "blend-img2img"]


@pytest.mark.parametrize("pipeline", ["panorama", "panorama-sdxl"])
def test_panorama_img2img_and_its_loopbacks_see_the_whole_image(
    registry: ModelRegistry, pipeline: str
) -> None:
    chain = img2img_chain(registry, pipeline=pipeline, loopback=1)
    stages = img2img_stages(chain)
    assert [entry["name"] for entry in stages] == ["img2img", "loopback-0"]
    # MultiDiffusion windows the image itself; the executor must not cut it into tiles first.
    assert all(entry["tiles"] == MAX_TILE and entry["params"]["pipeline"] == pipeline for entry in stages)
    # Other pipelines still run tile by tile, a UNet tile at a time.
    plain = img2img_stages(img2img_chain(registry, loopback=1, unet_tile=256))
    assert all(entry["tiles"] == 256 for entry in plain)


@pytest.mark.parametrize("pipeline", ["panorama", "panorama-sdxl"])
def test_panorama_highres_passes_window_the_whole_enlarged_image(
    registry: ModelRegistry, pipeline: str
) -> None:
    highres = {"highres": True, "highresIterations": 2, "highresScale": 2, "highresMethod": "bilinear"}
    chain = img2img_chain(registry, pipeline=pipeline, unet_tile=256, **highres)
    passes = [entry for entry in img2img_stages(chain) if entry["name"].startswith("highres-img2img")]
    # onnx-web's panorama-highres: MultiDiffusion's views, not tiles painted one by one.
    assert len(passes) == 2 and all(entry["tiles"] == MAX_TILE for entry in passes)
    plain = img2img_stages(img2img_chain(registry, unet_tile=256, **highres))
    assert [entry["tiles"] for entry in plain if entry["name"].startswith("highres-img2img")] == [256, 256]


def test_region_tokens_are_checked_in_panorama_txt2img_only(registry: ModelRegistry) -> None:
    # img2img panorama runs the base windows only (as onnx-web's), whatever size the params name.
    chain = img2img_chain(registry, pipeline="panorama", prompt="a coast <region:0:768:256:1024:4:0:a ship>")
    require_runnable(chain.chain, registry)


@pytest.fixture(scope="module")
def sdxl_registry(tmp_path_factory: pytest.TempPathFactory) -> ModelRegistry:
    """A models folder with one SDXL model (its ``model_index.json`` names the family)."""
    root: Path = tmp_path_factory.mktemp("sdxl-models")
    (root / MODEL).mkdir()
    (root / MODEL / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionXLPipeline"}))
    return ModelRegistry(root)


@pytest.mark.parametrize(
    ("pipeline", "sdxl"),
    [
        ("txt2img", False),
        ("lpw", False),
        ("panorama", False),
        ("txt2img-sdxl", True),
        ("panorama-sdxl", True),
    ],
)
def test_a_reseed_outside_the_image_is_refused_on_every_txt2img_pipeline(
    registry: ModelRegistry, sdxl_registry: ModelRegistry, pipeline: str, sdxl: bool
) -> None:
    # As onnx-web's txt2img stage, every txt2img pipeline reseeds its starting noise: a rectangle
    # that does not fit is a 400 at submit, not a failed job.
    models = sdxl_registry if sdxl else registry
    chain = txt2img_chain(models, pipeline=pipeline, prompt="a coast <reseed:0:0:64:640:3>")
    with pytest.raises(InvalidParams) as caught:
        require_runnable(chain.chain, models)
    assert caught.value.field == "prompt"
    assert caught.value.rule == "reseed 3: the rectangle (0, 0, 64, 640) is outside the 512x512 image"


def test_region_rectangles_are_checked_on_both_panorama_pipelines_and_left_unread_elsewhere(
    registry: ModelRegistry, sdxl_registry: ModelRegistry
) -> None:
    prompt = "a coast <region:0:0:64:640:4:0:a ship>"
    with pytest.raises(InvalidParams, match="outside the 512x512 image"):
        require_runnable(
            txt2img_chain(sdxl_registry, pipeline="panorama-sdxl", prompt=prompt).chain, sdxl_registry
        )
    # Only panoramas read region tokens: plain txt2img leaves them out of the text, as onnx-web does.
    require_runnable(txt2img_chain(registry, pipeline="txt2img", prompt=prompt).chain, registry)


def test_txt2img_sdxl_on_img2img_runs_and_is_recorded_as_img2img_sdxl(registry: ModelRegistry) -> None:
    [stage] = img2img_stages(img2img_chain(registry, pipeline="txt2img-sdxl"))
    assert stage["params"]["pipeline"] == "img2img-sdxl"


def inpaint_chain(registry: ModelRegistry, **data: Any) -> BuiltChain:
    return build_inpaint(parsed(registry, "inpaint", **data), WIDE, image_format="png", thumbnail_size=1024)


@pytest.mark.parametrize("pipeline", ["panorama", "panorama-sdxl"])
def test_panorama_inpaint_sees_the_whole_canvas(registry: ModelRegistry, pipeline: str) -> None:
    chain = inpaint_chain(
        registry, pipeline=pipeline, border={"left": 0, "right": 512, "top": 0, "bottom": 0}
    )
    [stage] = [entry for entry in chain.chain["stages"] if entry["type"] == "upscale-outpaint"]
    # MultiDiffusion windows the grown canvas itself; the executor must not cut it into tiles first.
    assert stage["tiles"] == MAX_TILE and stage["params"]["pipeline"] == pipeline
    [plain] = [
        entry
        for entry in inpaint_chain(registry, unet_tile=256).chain["stages"]
        if entry["type"] == "upscale-outpaint"
    ]
    assert plain["tiles"] == 256


def test_inpaint_refuses_controlnet_which_it_does_not_run(registry: ModelRegistry) -> None:
    request = parsed(registry, "inpaint", pipeline="controlnet")
    with pytest.raises(InvalidParams) as caught:
        build_inpaint(request, (512, 512), image_format="png", thumbnail_size=1024)
    assert caught.value.field == "pipeline"
    assert caught.value.rule == (
        "ControlNet inpainting is not run by this server; inpaint runs: inpaint, lpw, panorama, panorama-sdxl"
    )


def txt2img_chain(registry: ModelRegistry, **data: Any) -> BuiltChain:
    return build_txt2img(parsed(registry, "txt2img", **data), image_format="png", thumbnail_size=1024)


HIGHRES_BY_MODEL = {"highres": True, "highresIterations": 2, "highresScale": 2, "highresMethod": "upscale"}
UPSCALE_4X = {"upscale": True, "upscaling": UPSCALER, "scale": 4, "outscale": 4}


def test_only_the_first_stage_makes_batch_images_each_later_pass_one_per_image(
    registry: ModelRegistry,
) -> None:
    # batch 3 with two highres passes and an upscale: three images, not 3 x 3 x 3 x 3.
    chain = txt2img_chain(registry, batch=3, **HIGHRES_BY_MODEL, **UPSCALE_4X)
    first, *later = chain.chain["stages"]
    assert first["type"] == "source-txt2img" and first["params"]["batch"] == 3
    assert [entry["name"] for entry in later] == [
        "highres-upscale-0",
        "highres-img2img-0",
        "highres-upscale-1",
        "highres-img2img-1",
        "upscale",
        "save",
    ]
    assert all(entry["params"]["batch"] == 1 for entry in later[:-1])
    # img2img: the loopbacks repaint each image once.
    stages = img2img_stages(img2img_chain(registry, batch=2, loopback=2))
    assert [entry["params"]["batch"] for entry in stages] == [2, 1, 1]


def test_a_highres_pass_by_model_enlarges_by_the_highres_scale_not_the_models(
    registry: ModelRegistry,
) -> None:
    chain = txt2img_chain(registry, **HIGHRES_BY_MODEL, **UPSCALE_4X)
    passes = [entry for entry in chain.chain["stages"] if entry["name"].startswith("highres-upscale")]
    # The 4x model runs at its own scale; its result is made 2x the input, as highresScale says.
    assert [
        (entry["params"]["scale"], entry["params"]["outscale"], entry["outscale"]) for entry in passes
    ] == [
        (4, 2, 2),
        (4, 2, 2),
    ]
    # The upscale group's own outscale still applies where it belongs: the final upscale.
    [final] = [entry for entry in chain.chain["stages"] if entry["name"] == "upscale"]
    assert final["params"]["outscale"] == 4


def test_highres_img2img_tiles_overlap_by_vae_overlap(registry: ModelRegistry) -> None:
    highres = {"highres": True, "highresIterations": 1, "highresScale": 2, "highresMethod": "lanczos"}
    chain = txt2img_chain(registry, vae_overlap=0.5, **highres)
    [img2img] = [entry for entry in chain.chain["stages"] if entry["type"] == "blend-img2img"]
    assert img2img["params"]["overlap"] == 0.5


@pytest.mark.parametrize("pipeline", ["panorama", "panorama-sdxl"])
def test_a_panorama_is_denoised_after_it_is_made_as_onnx_web_does(
    registry: ModelRegistry, pipeline: str
) -> None:
    highres = {"highres": True, "highresIterations": 1, "highresScale": 2, "highresMethod": "lanczos"}
    chain = txt2img_chain(registry, pipeline=pipeline, **highres)
    names = [entry["name"] for entry in chain.chain["stages"]]
    assert names[:3] == ["txt2img", "denoise", "highres-resize-0"]
    [denoise] = [entry for entry in chain.chain["stages"] if entry["name"] == "denoise"]
    assert denoise["type"] == "blend-denoise" and denoise["params"]["strength"] == 3
    assert "denoise" not in [entry["name"] for entry in txt2img_chain(registry).chain["stages"]]


def test_highres_by_the_sd_upscaler_finishes_to_the_highres_scale(registry: ModelRegistry) -> None:
    by_sd = {**HIGHRES_BY_MODEL, "upscale": True, "upscaling": SD_UPSCALER}
    chain = txt2img_chain(registry, **by_sd)
    passes = [entry for entry in chain.chain["stages"] if entry["name"].startswith("highres-upscale")]
    # The stage enlarges 4 times and finishes to its outscale, the highres scale (2 here).
    assert [(entry["type"], entry["outscale"]) for entry in passes] == [("upscale-stable-diffusion", 2)] * 2
    assert all(entry["params"]["outscale"] == 2 for entry in passes)


def chain_stages(
    registry: ModelRegistry, *stages: dict[str, Any], defaults: dict[str, Any] | None = None
) -> list[dict[str, Any]]:
    """The resolved stages of a chain document of ``stages`` (each named by its index) and
    ``defaults`` over a prompt and a 128-px size."""

    def parse(route: str, raw: Any) -> ParsedRequest:
        return parse_request(
            route,
            raw,
            params_doc=load_params_doc(CONFIG),
            registry=registry,
            config=CONFIG,
            rng=random.Random(3),
        )

    named = [{"name": f"s{index}", **entry} for index, entry in enumerate(stages)]
    doc = {
        "defaults": {"prompt": "a coast", "width": 128, "height": 128, **(defaults or {})},
        "stages": named,
    }
    built = build_chain(doc, parse, image_format="png", thumbnail_size=1024)
    return list(built.chain["stages"])


def test_codeformer_without_a_model_named_runs_its_own(registry: ModelRegistry) -> None:
    source = {"type": "source-txt2img", "params": {}}
    [_, correct] = chain_stages(registry, source, {"type": "correct-codeformer", "params": {}})
    assert correct["params"]["correction_model"] == "correction-codeformer"
    # GFPGAN has no model of its own: it still needs one named.
    with pytest.raises(InvalidParams) as caught:
        chain_stages(registry, source, {"type": "correct-gfpgan", "params": {}})
    assert caught.value.field == "stages[1].params.correction"


def test_snake_case_upscale_keys_are_read_as_onnx_web_s_stages_read_them(registry: ModelRegistry) -> None:
    source = {"type": "source-txt2img", "params": {}}
    snake = {"correction_model": "correction-codeformer", "face_strength": 0.9, "face_outscale": 2}
    [_, correct] = chain_stages(registry, source, {"type": "correct-codeformer", "params": snake})
    assert (correct["params"]["face_strength"], correct["params"]["face_outscale"]) == (0.9, 2)
    # The flat name wins where both are given; a bad value is named as sent.
    both = {"face_strength": 0.9, "faceStrength": 0.2}
    [_, correct] = chain_stages(registry, source, {"type": "correct-codeformer", "params": both})
    assert correct["params"]["face_strength"] == 0.2
    with pytest.raises(InvalidParams) as caught:
        chain_stages(registry, source, {"type": "upscale-resrgan", "params": {"upscale_model": "nope"}})
    assert caught.value.field == "stages[1].params.upscaling"


def test_a_stage_s_own_value_wins_over_the_defaults_however_either_is_spelt(registry: ModelRegistry) -> None:
    source = {"type": "source-txt2img", "params": {}}
    for defaults_key in ("faceStrength", "face_strength"):
        for stage_key in ("faceStrength", "face_strength"):
            faces = {"type": "correct-codeformer", "params": {stage_key: 0.9}}
            [_, correct] = chain_stages(registry, source, faces, defaults={defaults_key: 0.2})
            assert correct["params"]["face_strength"] == 0.9


def test_an_alternative_that_does_not_parse_is_refused_where_alternatives_cycle(
    registry: ModelRegistry,
) -> None:
    prompt = "a (dark [red|blue] car)"
    with pytest.raises(InvalidParams) as caught:
        txt2img_chain(registry, prompt=prompt)
    assert caught.value.field == "prompt" and "the alternative 'a dark [red'" in caught.value.rule
    # Where (a|b) is text (LPW), the group is one weighted phrase, which parses.
    txt2img_chain(registry, prompt=prompt, pipeline="lpw")


def test_a_seed_of_minus_one_is_a_random_seed_on_every_stage(registry: ModelRegistry) -> None:
    noise = {"type": "source-noise", "params": {"seed": -1}}
    [stage] = chain_stages(registry, noise)
    assert 0 <= stage["params"]["seed"] < 2**32


def test_the_job_carries_the_hashes_the_extras_give_its_models_and_networks(tmp_path: Path) -> None:
    (tmp_path / MODEL).mkdir()
    (tmp_path / MODEL / "hash.txt").write_text("FROMFILE\n")
    (tmp_path / "extras.json").write_text(
        json.dumps(
            {
                "diffusion": [{"name": MODEL, "source": "x.safetensors", "hash": "FROMEXTRAS"}],
                "networks": [{"name": "detail", "type": "lora", "source": "y", "hash": "LORAHASH"}],
            }
        )
    )
    registry = ModelRegistry(tmp_path)
    chain = txt2img_chain(registry, prompt="a coast <lora:detail:0.5> <lora:other:1>").chain
    hashes = extras_hashes(chain, registry)
    assert hashes == {MODEL: "FROMEXTRAS", "detail": "LORAHASH"}
    # The worker lists them over what it found on disk (hash.txt, the LoRA file's own).

    recorded = {
        "params": {"model": MODEL},
        "models": [{"name": MODEL, "hash": "FROMFILE", "weight": 1.0}],
        "loras": [
            {"name": "detail", "hash": "FILEHASH", "weight": 0.5},
            {"name": "other", "hash": "OTHERFILE", "weight": 1.0},
        ],
    }
    metadata = complete_metadata(StageImage(Image.new("RGB", (8, 8)), recorded), "x_0.png", {}, hashes)
    assert metadata["models"][0]["hash"] == "FROMEXTRAS"
    assert [entry["hash"] for entry in metadata["loras"]] == ["LORAHASH", "OTHERFILE"]


@pytest.mark.parametrize(
    ("stage", "params"),
    [
        ("blend-denoise", {"strength": 3}),  # onnx-web's default, beyond img2img's 0-1
        ("upscale-simple", {"method": "lanczos", "scale": 6}),  # beyond the upscale group's 1-4
        ("reduce-crop", {"left": 1500, "top": 0, "width": 100, "height": 100}),  # past a border's 1024
    ],
)
def test_a_stage_s_own_params_are_checked_by_its_declaration_not_as_flat_params(
    registry: ModelRegistry, stage: str, params: dict[str, Any]
) -> None:
    source = {"type": "source-txt2img", "params": {"width": 2048, "height": 2048}}
    [_, built] = chain_stages(registry, source, {"type": stage, "params": params})
    assert all(built["params"][key] == value for key, value in params.items())


def test_an_inpainting_model_runs_only_where_its_mask_is_fed(tmp_path: Path) -> None:
    inpainting = "stable-diffusion-onnx-v1-inpainting"
    for name, channels in ((MODEL, 4), (inpainting, 9)):
        (tmp_path / name / "unet").mkdir(parents=True)
        (tmp_path / name / "unet" / "config.json").write_text(json.dumps({"in_channels": channels}))
    registry = ModelRegistry(tmp_path)
    for route, build in (("txt2img", txt2img_chain), ("img2img", img2img_chain)):
        with pytest.raises(InvalidParams) as caught:
            require_runnable(build(registry, model=inpainting).chain, registry)
        assert caught.value.field == "model" and "is an inpainting model" in caught.value.rule, route
    # The inpaint route runs it; its highres pass (img2img on the same model) cannot.
    highres = {"highres": True, "highresScale": 2, "highresMethod": "bilinear"}
    inpaint = build_inpaint(
        parsed(registry, "inpaint", model=inpainting), WIDE, image_format="png", thumbnail_size=64
    )
    require_runnable(inpaint.chain, registry)
    with pytest.raises(InvalidParams):
        built = build_inpaint(
            parsed(registry, "inpaint", model=inpainting, **highres),
            WIDE,
            image_format="png",
            thumbnail_size=64,
        )
        require_runnable(built.chain, registry)


def test_a_text_prompt_s_remove_tokens_must_be_a_regular_expression(registry: ModelRegistry) -> None:
    stage = {"type": "text-prompt", "params": {"prompt_filter": "demo-gpt2", "remove_tokens": "[("}}
    with pytest.raises(InvalidParams) as caught:
        chain_stages(registry, stage, {"type": "source-txt2img", "params": {}})
    assert caught.value.field == "stages[0].params.remove_tokens"
    assert caught.value.rule.startswith("must be a regular expression")


def test_a_scheduler_is_refused_where_it_cannot_run(tmp_path: Path) -> None:
    velocity = "stable-diffusion-onnx-v2-1"
    for name, prediction in ((MODEL, "epsilon"), (velocity, "v_prediction")):
        (tmp_path / name / "scheduler").mkdir(parents=True)
        config = {"prediction_type": prediction}
        (tmp_path / name / "scheduler" / "scheduler_config.json").write_text(json.dumps(config))
    registry = ModelRegistry(tmp_path)
    require_runnable(txt2img_chain(registry, scheduler="ipndm").chain, registry)
    cases = [
        (txt2img_chain(registry, scheduler="ipndm", model=velocity), "predicts v_prediction"),
        (img2img_chain(registry, scheduler="ipndm"), "cannot start from an image"),
        (
            txt2img_chain(
                registry, scheduler="ipndm", highres=True, highresScale=2, highresMethod="bilinear"
            ),
            "cannot start from an image",
        ),
    ]
    for chain, rule in cases:
        with pytest.raises(InvalidParams) as caught:
            require_runnable(chain.chain, registry)
        assert caught.value.field == "scheduler" and rule in caught.value.rule


def test_an_upscaling_stage_is_refused_a_model_of_the_other_kind(registry: ModelRegistry) -> None:
    source = {"type": "source-txt2img", "params": {}}
    cases = [
        ("upscale-stable-diffusion", UPSCALER, "needs a Stable Diffusion upscaler folder"),
        ("upscale-resrgan", SD_UPSCALER, "needs a super-resolution model"),
    ]
    for stage_type, model, rule in cases:
        built = chain_stages(registry, source, {"type": stage_type, "params": {"upscaling": model}})
        with pytest.raises(InvalidParams) as caught:
            require_runnable({"stages": built}, registry, {entry["name"]: entry["name"] for entry in built})
        assert caught.value.field == "s1.params.upscaling" and rule in caught.value.rule
    # Each with its own kind runs.
    for stage_type, model in (("upscale-stable-diffusion", SD_UPSCALER), ("upscale-resrgan", UPSCALER)):
        built = chain_stages(registry, source, {"type": stage_type, "params": {"upscaling": model}})
        require_runnable({"stages": built}, registry)


def test_a_network_made_for_another_model_family_is_refused(tmp_path: Path) -> None:
    from safetensors.numpy import save_file

    other = "stable-diffusion-onnx-v2-1"
    for name, width in ((MODEL, 32), (other, 48)):
        (tmp_path / name / "unet").mkdir(parents=True)
        (tmp_path / name / "unet" / "config.json").write_text(json.dumps({"cross_attention_dim": width}))
    (tmp_path / "lora").mkdir()
    (tmp_path / "inversion").mkdir()
    lora = {
        "lora_unet_mid_block_attentions_0_transformer_blocks_0_attn2_to_k.lora_down.weight": np.zeros((4, 32))
    }
    save_file(
        {key: value.astype(np.float32) for key, value in lora.items()},
        str(tmp_path / "lora" / "detail.safetensors"),
    )
    save_file(
        {"emb_params": np.zeros((3, 32), np.float32)}, str(tmp_path / "inversion" / "style.safetensors")
    )
    registry = ModelRegistry(tmp_path)
    for prompt in ("a cat <lora:detail:1>", "a cat <inversion:style:1>"):
        require_runnable(txt2img_chain(registry, prompt=prompt).chain, registry)
        with pytest.raises(InvalidParams) as caught:
            require_runnable(txt2img_chain(registry, prompt=prompt, model=other).chain, registry)
        assert caught.value.field == "prompt"
        assert "was made for another model family (text conditioning 32 wide" in caught.value.rule
