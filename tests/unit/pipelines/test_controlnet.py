"""ControlNet against diffusers' PyTorch ControlNet pipelines on the same weights (SD 1.5 and SDXL).

The demo ControlNets are random and tiny, their zero convolutions made random so the control
image really steers the result: what matters is that the ``cnet`` UNet adds exactly the residuals
diffusers' UNet adds, from the ControlNet run on exactly diffusers' inputs.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from PIL import Image, ImageDraw

from pipelines.context import StageContext, StageImage
from pipelines.diffusion.controlnet import controlnet_txt2img, load_controlnet, residual_inputs
from pipelines.diffusion.model import DiffusionModel, Generation, Run, load_model
from pipelines.diffusion.sdxl import SdxlRun, txt2img_sdxl
from pipelines.diffusion.txt2img import txt2img
from pipelines.imageops.filters import apply_source_filter
from pipelines.models.cli import add_convert_arguments, run_convert
from pipelines.models.controlnets import CNET_COMPONENT, controlnet_family, has_cnet
from pipelines.models.demo import DEMO_MODELS, DEMO_SD21, DEMO_SDXL
from pipelines.models.demo_controlnets import controlnet_source_path
from pipelines.models.sessions import SessionCache
from pipelines.stages import blend_img2img
from tests.unit.pipelines.images import pixels
from tests.unit.pipelines.reference import (
    NO_SAFETY_CHECKER,
    assert_matches,
    demo_generation,
    from_our_noise,
    run_diffusers,
)
from tests.unit.pipelines.resolved import RESOLVED, run_stage

SD_CONTROL = "demo-control"
SDXL_CONTROL = "demo-control-sdxl"
SDXL_BASE = demo_generation(model=DEMO_SDXL, prompt="a painting of a house", negative_prompt="blurry", seed=5)


def shapes(width: int = 64, height: int = 48) -> Image.Image:
    """Flat shapes on a background: an image whose Canny edges are lines a ControlNet can follow."""
    image = Image.new("RGB", (width, height), (40, 90, 160))
    draw = ImageDraw.Draw(image)
    draw.rectangle((6, 5, 30, 40), fill=(230, 200, 40))
    draw.ellipse((28, 10, 58, 38), fill=(200, 40, 60))
    return image


def canny(width: int = 64, height: int = 48) -> Image.Image:
    """The control image: ``shapes`` through our ``canny`` source filter."""
    return apply_source_filter("canny", shapes(width, height), np.random.default_rng(0))


@pytest.fixture(scope="module")
def sdxl_model(models_path: Path, sessions: SessionCache) -> DiffusionModel:
    return load_model(models_path, DEMO_SDXL, sessions)


def torch_controlnet(models_path: Path, name: str) -> Any:
    from diffusers import ControlNetModel

    return ControlNetModel.from_pretrained(controlnet_source_path(models_path, name)).eval()


def sd_reference(
    parts: dict[str, Any], controlnet: Any, model: DiffusionModel, gen: Generation, scale: float
) -> np.ndarray:
    from diffusers import StableDiffusionControlNetPipeline

    components = {**NO_SAFETY_CHECKER, "controlnet": controlnet}
    return run_diffusers(
        StableDiffusionControlNetPipeline,
        parts,
        model,
        gen,
        components,
        image=canny(gen.width, gen.height),
        controlnet_conditioning_scale=scale,
        **from_our_noise(gen),
    )


@pytest.mark.parametrize(
    ("scheduler", "batch", "scale", "negative"),
    [("ddim", 1, 1.0, "blurry, lowres"), ("euler-a", 2, 0.6, None), ("dpm-multi", 1, 0.8, "lowres")],
)
def test_controlnet_matches_diffusers_torch_pipeline(
    demo_model: DiffusionModel,
    models_path: Path,
    sessions: SessionCache,
    torch_parts: Callable[[str], dict[str, Any]],
    scheduler: str,
    batch: int,
    scale: float,
    negative: str | None,
) -> None:
    gen = demo_generation(scheduler=scheduler, batch=batch, negative_prompt=negative)
    controlnet = torch_controlnet(models_path, SD_CONTROL)
    reference = sd_reference(torch_parts(DEMO_MODELS[0].name), controlnet, demo_model, gen, scale)
    session = load_controlnet(models_path, SD_CONTROL, sessions)
    ours = pixels(controlnet_txt2img(Run(demo_model, gen), canny(), scale, controlnet=session))
    assert_matches(ours, reference, (batch, 48, 64, 3))


def test_guidance_off_runs_the_controlnet_once_per_step(
    demo_model: DiffusionModel,
    models_path: Path,
    sessions: SessionCache,
    torch_parts: Callable[[str], dict[str, Any]],
) -> None:
    gen = demo_generation(cfg=1.0, scheduler="euler")
    controlnet = torch_controlnet(models_path, SD_CONTROL)
    reference = sd_reference(torch_parts(DEMO_MODELS[0].name), controlnet, demo_model, gen, 1.0)
    session = load_controlnet(models_path, SD_CONTROL, sessions)
    ours = pixels(controlnet_txt2img(Run(demo_model, gen), canny(), 1.0, controlnet=session))
    assert_matches(ours, reference, (1, 48, 64, 3))


@pytest.mark.parametrize(("scheduler", "batch"), [("euler", 1), ("ddim", 2)])
def test_sdxl_controlnet_matches_diffusers_torch_pipeline(
    sdxl_model: DiffusionModel,
    models_path: Path,
    sessions: SessionCache,
    torch_parts: Callable[[str], dict[str, Any]],
    scheduler: str,
    batch: int,
) -> None:
    from diffusers import StableDiffusionXLControlNetPipeline

    gen = dataclasses.replace(SDXL_BASE, scheduler=scheduler, batch=batch)
    components = {"controlnet": torch_controlnet(models_path, SDXL_CONTROL), "add_watermarker": False}
    reference = run_diffusers(
        StableDiffusionXLControlNetPipeline,
        torch_parts(DEMO_SDXL),
        sdxl_model,
        gen,
        components,
        image=canny(),
        controlnet_conditioning_scale=0.9,
        **from_our_noise(gen),
    )
    session = load_controlnet(models_path, SDXL_CONTROL, sessions)
    ours = pixels(controlnet_txt2img(SdxlRun(sdxl_model, gen), canny(), 0.9, controlnet=session))
    assert_matches(ours, reference, (batch, 48, 64, 3))


@pytest.mark.parametrize(("model", "control"), [(DEMO_MODELS[0].name, SD_CONTROL), (DEMO_SDXL, SDXL_CONTROL)])
def test_cnet_unet_with_zero_residuals_is_the_plain_unet(
    models_path: Path, sessions: SessionCache, model: str, control: str
) -> None:
    diffusion = load_model(models_path, model, sessions)
    unet, cnet = diffusion.session("unet"), diffusion.session(CNET_COMPONENT)
    # The ControlNet's outputs are exactly the residuals the cnet UNet takes, by name.
    assert residual_inputs(cnet) == residual_inputs(load_controlnet(models_path, control, sessions))
    rng = np.random.default_rng(0)
    feeds: dict[str, np.ndarray] = {}
    for item in unet.get_inputs():
        shape = {"sample": (2, 4, 8, 8), "timestep": (2,), "time_ids": (2, 6)}.get(item.name)
        if item.name == "encoder_hidden_states":
            shape = (2, 77, item.shape[2])
        elif item.name == "text_embeds":
            shape = (2, item.shape[1])
        assert shape is not None, item.name
        feeds[item.name] = (rng.standard_normal(shape) * (300 if item.name == "timestep" else 1)).astype(
            np.float32
        )
    residual_shapes = {item.name: item for item in cnet.get_inputs() if item.name not in feeds}
    assert len(residual_shapes) >= 2
    # Each residual's channels are fixed; its size follows the sample's, halved with the block.
    residuals = {
        name: np.zeros((2, item.shape[1], *sized(item, feeds["sample"])), np.float32)
        for name, item in residual_shapes.items()
    }
    plain = unet.run(None, feeds)[0]
    ours = cnet.run(None, {**feeds, **residuals})[0]
    assert np.abs(ours - plain).max() < 1e-5


def test_cnet_unet_and_controlnet_layout(models_path: Path, tmp_path: Path) -> None:
    sd_folder = models_path / DEMO_MODELS[0].name
    graph = onnx.load(str(sd_folder / CNET_COMPONENT / "model.onnx"), load_external_data=False).graph
    residuals = [
        "down_block_0",
        "down_block_1",
        "down_block_2",
        "down_block_3",
        "mid_block_additional_residual",
    ]
    assert [item.name for item in graph.input] == ["sample", "timestep", "encoder_hidden_states", *residuals]
    assert [item.name for item in graph.output] == ["out_sample"]
    sdxl_graph = onnx.load(str(models_path / DEMO_SDXL / CNET_COMPONENT / "model.onnx")).graph
    assert [item.name for item in sdxl_graph.input][3:5] == ["text_embeds", "time_ids"]
    # Plain conversion is unchanged: no cnet UNet unless asked for.
    assert not has_cnet(models_path / DEMO_MODELS[1].name) and has_cnet(sd_folder)
    # ``onnx-web convert controlnet`` exports a diffusers ControlNet folder into control/<name>.
    args = parse_convert(
        [
            "convert",
            "controlnet",
            str(controlnet_source_path(models_path, SD_CONTROL)),
            "edges",
            "--models",
            str(tmp_path),
        ]
    )
    assert run_convert(args) == 0
    converted = onnx.load(str(tmp_path / "control" / "edges" / "model.onnx")).graph
    assert [item.name for item in converted.input] == [
        "sample",
        "timestep",
        "encoder_hidden_states",
        "controlnet_cond",
    ]
    assert [item.name for item in converted.output] == residuals
    assert (
        controlnet_family(tmp_path, "edges") == "sd"
        and controlnet_family(models_path, SDXL_CONTROL) == "sdxl"
    )


def parse_convert(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_convert_arguments(parser.add_subparsers(dest="command"))
    return parser.parse_args(argv)


def sized(item: Any, sample: np.ndarray) -> tuple[int, int]:
    """The spatial size of residual input ``item`` for ``sample``: from its dynamic axis name's halvings."""
    halvings = int(str(item.shape[2]).rsplit("_", 1)[1])
    return sample.shape[2] >> halvings, sample.shape[3] >> halvings


@pytest.mark.parametrize("sdxl", [False, True])
def test_conditioning_scale_zero_is_plain_txt2img_and_the_control_image_steers(
    demo_model: DiffusionModel,
    sdxl_model: DiffusionModel,
    models_path: Path,
    sessions: SessionCache,
    sdxl: bool,
) -> None:
    if sdxl:
        gen, run_class, generate, control = SDXL_BASE, SdxlRun, txt2img_sdxl, SDXL_CONTROL
        model = sdxl_model
    else:
        gen, run_class, generate, control = demo_generation(), Run, txt2img, SD_CONTROL
        model = demo_model
    session = load_controlnet(models_path, control, sessions)
    plain = pixels(generate(run_class(model, gen)))
    unscaled = pixels(controlnet_txt2img(run_class(model, gen), canny(), 0.0, controlnet=session))
    # Zero residuals added: exactly txt2img.
    assert np.array_equal(unscaled, plain)
    controlled = pixels(controlnet_txt2img(run_class(model, gen), canny(), 1.0, controlnet=session))
    assert np.abs(controlled - plain).mean() > 3, "the demo ControlNet should visibly change the image"


def test_a_lora_is_blended_into_the_cnet_unet_as_into_the_unet(
    demo_model: DiffusionModel, models_path: Path, sessions: SessionCache
) -> None:
    gen = demo_generation(prompt="a red chair <lora:demo-detail:0.8>")
    session = load_controlnet(models_path, SD_CONTROL, sessions)
    plain = pixels(txt2img(Run(demo_model, gen)))
    assert not np.array_equal(plain, pixels(txt2img(Run(demo_model, demo_generation(prompt="a red chair")))))
    unscaled = pixels(controlnet_txt2img(Run(demo_model, gen), canny(), 0.0, controlnet=session))
    assert np.array_equal(unscaled, plain)


def controlnet_params(**changes: Any) -> dict[str, Any]:
    params: dict[str, Any] = {
        **RESOLVED,
        "pipeline": "controlnet",
        "control": SD_CONTROL,
        "scheduler": "ddim",
        "prompt": "a red door",
        "seed": 3,
        "steps": 3,
        "strength": 0.7,
        "stage_name": "stage",
    }
    return {**params, **changes}


def test_img2img_stage_runs_the_controlnet_on_its_input_over_every_step(
    demo_model: DiffusionModel, models_path: Path, sessions: SessionCache
) -> None:
    counted: list[int] = []
    ctx = StageContext(models_path=models_path, sessions=sessions, on_step=counted.append)
    params = controlnet_params()
    results = run_stage(blend_img2img.STAGE, ctx, params, [StageImage(canny(), {})])
    assert sum(counted) == 3 == blend_img2img.STAGE.estimate(params)
    gen = demo_generation(prompt="a red door", negative_prompt=None, seed=3, steps=3, height=64)
    session = load_controlnet(models_path, SD_CONTROL, sessions)
    # The stage pads 48 rows to the UNet's 64 (repeating the edge) and crops back.
    padded = Image.new("RGB", (64, 64))
    padded.paste(canny(64, 48))
    padded.paste(canny(64, 48).crop((0, 47, 64, 48)).resize((64, 16)), (0, 48))
    direct = controlnet_txt2img(Run(demo_model, gen), padded, 0.7, controlnet=session)[0].crop((0, 0, 64, 48))
    assert np.array_equal(np.asarray(direct), np.asarray(results[0].image))
    recorded = results[0].metadata["params"]
    assert (recorded["pipeline"], recorded["control"], recorded["strength"]) == (
        "controlnet",
        SD_CONTROL,
        0.7,
    )


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"control": ""}, "pipeline controlnet needs control"),
        ({"control": "missing"}, "no ControlNet named 'missing'"),
        ({"model": DEMO_SD21}, f"{DEMO_SD21} has no ControlNet UNet (cnet/)"),
        ({"model": DEMO_SDXL}, "does not fit diffusion-sdxl-demo's UNet (encoder_hidden_states"),
    ],
)
def test_img2img_stage_names_what_a_controlnet_run_lacks(
    models_path: Path, sessions: SessionCache, changes: dict[str, Any], reason: str
) -> None:
    ctx = StageContext(models_path=models_path, sessions=sessions)
    with pytest.raises((ValueError, FileNotFoundError), match=reason.replace("(", r"\(").replace(")", r"\)")):
        run_stage(blend_img2img.STAGE, ctx, controlnet_params(**changes), [StageImage(canny(), {})])
