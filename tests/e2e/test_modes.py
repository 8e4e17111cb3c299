"""Every image mode through the running stack: the legacy routes and chains of each stage family."""

from __future__ import annotations

import io
import json
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.e2e.conftest import finished, wait_for
from tests.e2e.images import gradient, half_mask, png

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def run_job(
    client: httpx.Client, path: str, *, params: dict[str, Any], files: dict[str, bytes]
) -> dict[str, Any]:
    """Submit the GUI's way (multipart: a ``json`` field plus image parts) and wait for the end."""
    parts: dict[str, Any] = {"json": (None, json.dumps(params))}
    parts.update({name: (name, data, "image/png") for name, data in files.items()})
    response = client.post(path, files=parts)
    assert response.status_code == 200, response.text
    record = wait_for(client, response.json()["name"], until=finished)[-1]
    assert record["status"] == "success", record
    assert_contract_metadata(record)
    return record


def output(client: httpx.Client, name: str) -> Image.Image:
    response = client.get(f"/output/{name}")
    assert response.status_code == 200
    return Image.open(io.BytesIO(response.content)).convert("RGB")


BASE = {"params": {"prompt": "a test", "steps": 3, "seed": 11, "cfg": 5.0, "scheduler": "ddim"}}


def test_img2img_with_a_source_filter_returns_the_result_and_the_filtered_source(
    client: httpx.Client,
) -> None:
    params = {**BASE, "params": {**BASE["params"], "strength": 0.5, "sourceFilter": "canny"}}
    record = run_job(client, "/api/img2img", params=params, files={"source": png(gradient())})
    assert len(record["outputs"]) == 2, "the canny-filtered source comes back as an extra output"
    result, edges = (output(client, name) for name in record["outputs"])
    assert result.size == (128, 96)
    assert set(np.unique(np.asarray(edges))) <= {0, 255}, "the extra output is the edge map"
    assert record["metadata"][0]["input_size"] == {"width": 128, "height": 96}
    assert record["steps"]["total"] == 1 + 1 + 1  # filter, int(3 * 0.5) img2img steps, save


def test_pix2pix_edits_the_source_with_its_demo_model_over_every_step(client: httpx.Client) -> None:
    model = "stable-diffusion-onnx-instruct-pix2pix"
    params = {"params": {**BASE["params"], "model": model, "pipeline": "pix2pix", "strength": 1.0}}
    record = run_job(client, "/api/img2img", params=params, files={"source": png(gradient())})
    assert output(client, record["outputs"][0]).size == (128, 96)
    assert record["metadata"][0]["params"]["pipeline"] == "pix2pix"
    assert record["steps"]["total"] == 3 + 1  # strength guides pix2pix, it does not shorten it; save
    # The plain demo model has no InstructPix2Pix UNet: refused at submission.
    params["params"]["model"] = "stable-diffusion-onnx-v1-5"
    response = client.post(
        "/api/img2img", files={"json": (None, json.dumps(params)), "source": png(gradient())}
    )
    assert response.status_code == 400 and "needs an InstructPix2Pix model" in response.text


def test_panorama_sdxl_on_the_sdxl_demo(client: httpx.Client) -> None:
    wide = {"model": "diffusion-sdxl-demo", "pipeline": "panorama-sdxl", "width": 256, "height": 128}
    params = {"params": {**BASE["params"], **wide, "unet_tile": 128}}
    record = run_job(client, "/api/txt2img", params=params, files={})
    assert output(client, record["outputs"][0]).size == (256, 128)
    assert record["metadata"][0]["params"]["pipeline"] == "panorama-sdxl"


def test_img2img_with_a_controlnet_returns_the_generation_and_its_control_image(client: httpx.Client) -> None:
    image = {"pipeline": "controlnet", "control": "demo-control", "strength": 0.8, "sourceFilter": "canny"}
    params = {**BASE, "params": {**BASE["params"], **image}}
    record = run_job(client, "/api/img2img", params=params, files={"source": png(gradient())})
    assert len(record["outputs"]) == 2, "the canny control image comes back as an extra output"
    result, edges = (output(client, name) for name in record["outputs"])
    assert result.size == edges.size == (128, 96)
    assert set(np.unique(np.asarray(edges))) <= {0, 255}, "the extra output is the edge map"
    recorded = record["metadata"][0]["params"]
    assert (recorded["pipeline"], recorded["control"]) == ("controlnet", "demo-control")
    assert record["steps"]["total"] == 1 + 3 + 1  # filter, every step (from noise), save


def test_img2img_with_a_model_based_source_filter_runs_its_annotator(client: httpx.Client) -> None:
    params = {**BASE, "params": {**BASE["params"], "strength": 0.5, "sourceFilter": "hed"}}
    record = run_job(client, "/api/img2img", params=params, files={"source": png(gradient())})
    assert len(record["outputs"]) == 2, "the HED edge map comes back as an extra output"
    result, edges = (np.asarray(output(client, name)) for name in record["outputs"])
    assert result.shape == edges.shape == (96, 128, 3)
    assert (edges[..., 0] == edges[..., 1]).all() and (edges[..., 1] == edges[..., 2]).all(), "grey edges"
    assert len(np.unique(edges)) > 2, "an edge probability, not a binary map"


def test_inpaint_keeps_the_black_half_of_the_mask(client: httpx.Client) -> None:
    source = gradient()
    params = {**BASE, "params": {**BASE["params"], "noise": "fill-mask", "fillColor": "white"}}
    record = run_job(
        client, "/api/inpaint", params=params, files={"source": png(source), "mask": png(half_mask())}
    )
    result = np.asarray(output(client, record["outputs"][0])).astype(int)
    kept = np.abs(result[:, :48] - np.asarray(source)[:, :48]).max()
    assert kept <= 8, f"the kept (black) side changed by {kept} levels"


def test_outpaint_grows_the_canvas_by_the_border(client: httpx.Client) -> None:
    params = {**BASE, "border": {"left": 32, "right": 0, "top": 16, "bottom": 8}}
    mask = Image.new("RGB", (128, 96), "black")
    record = run_job(
        client, "/api/inpaint", params=params, files={"source": png(gradient()), "mask": png(mask)}
    )
    assert output(client, record["outputs"][0]).size == (128 + 32, 96 + 16 + 8)
    assert record["metadata"][0]["border"] == {"left": 32, "right": 0, "top": 16, "bottom": 8}


def test_panorama_outpaint_paints_a_wide_border_window_by_window(client: httpx.Client) -> None:
    # onnx-web's panorama outpaint: the canvas doubles in width; 128-px windows paint it whole.
    image = {"model": "stable-diffusion-onnx-v1-inpainting", "pipeline": "panorama", "unet_tile": 128}
    params = {
        "params": {**BASE["params"], **image},
        "border": {"left": 0, "right": 128, "top": 0, "bottom": 0},
    }
    source = gradient()
    mask = Image.new("RGB", (128, 96), "black")
    record = run_job(client, "/api/inpaint", params=params, files={"source": png(source), "mask": png(mask)})
    result = np.asarray(output(client, record["outputs"][0])).astype(int)
    assert result.shape == (96, 256, 3)
    assert record["metadata"][0]["params"]["pipeline"] == "panorama"
    kept = np.abs(result[:, :120] - np.asarray(source)[:, :120]).max()
    assert kept <= 8, f"the source's side changed by {kept} levels"


def test_upscale_with_a_model_and_outscale(client: httpx.Client) -> None:
    params = {
        "params": {"upscaling": "upscaling-real-esrgan-x4-plus"},
        "upscale": {"enabled": True, "scale": 4, "outscale": 2},
    }
    record = run_job(client, "/api/upscale", params=params, files={"source": png(gradient(64, 48))})
    assert output(client, record["outputs"][0]).size == (128, 96)
    assert_gui_readable(record["metadata"][0])


def test_blend_takes_the_second_source_where_the_mask_is_white(client: httpx.Client) -> None:
    red, blue = Image.new("RGB", (128, 96), "red"), Image.new("RGB", (128, 96), "blue")
    record = run_job(
        client,
        "/api/blend",
        params={},
        files={"source:0": png(red), "source:1": png(blue), "mask": png(half_mask())},
    )
    result = np.asarray(output(client, record["outputs"][0]))
    assert tuple(result[48, 10]) == (255, 0, 0) and tuple(result[48, 120]) == (0, 0, 255)
    assert_gui_readable(record["metadata"][0])


#: Contract §7.3: what every output's metadata holds, whatever the route.
ALWAYS_PRESENT = {"input_size", "outputs", "params", "inversions", "loras", "models", "size"}


def assert_contract_metadata(record: dict[str, Any]) -> None:
    """Every output of a finished job has metadata in contract §7.3's shape, naming that output."""
    assert len(record["metadata"]) == len(record["outputs"]), record
    for name, metadata in zip(record["outputs"], record["metadata"], strict=True):
        assert set(metadata) >= ALWAYS_PRESENT, (name, sorted(metadata))
        assert metadata["outputs"] == [name], (name, metadata["outputs"])
        assert isinstance(metadata["inversions"], list) and isinstance(metadata["loras"], list)
        base = metadata["models"][0]
        assert isinstance(base["name"], str) and isinstance(base["hash"], str) and base["weight"] == 1.0
        for size in ("input_size", "size"):
            assert all(isinstance(metadata[size][axis], int) for axis in ("width", "height")), metadata
        assert_gui_readable(metadata)


def assert_gui_readable(metadata: dict[str, Any]) -> None:
    """What onnx-web's GUI reads of any result without a guard (contract §7.3) is there."""
    assert metadata["models"] and isinstance(metadata["models"][0]["name"], str), metadata
    for key in ("prompt", "scheduler", "seed", "cfg", "steps"):
        assert metadata["params"].get(key) is not None, (key, metadata["params"])
    assert set(metadata["size"]) == {"width", "height"}


def test_blend_without_both_sources_is_a_400(client: httpx.Client) -> None:
    response = client.post("/api/blend", files={"mask": ("mask", png(half_mask()), "image/png")})
    assert response.status_code == 400 and response.json()["error"].startswith("source:0")


def test_grid_chain_as_the_gui_sends_it(client: httpx.Client) -> None:
    cell = {"prompt": "a cell", "steps": 2, "width": 128, "height": 128, "tiles": 8192}
    doc = {
        "defaults": {"seed": 42, "scheduler": "euler-a"},
        "stages": [
            {"name": "cell-0", "type": "source-txt2img", "params": {**cell, "prompt": "a red cell"}},
            {"name": "cell-1", "type": "source-txt2img", "params": {**cell, "prompt": "a blue cell"}},
            {"name": "grid", "type": "blend-grid", "params": {"width": 2, "height": 1, "tiles": 8192}},
            {"name": "save", "type": "persist-disk", "params": {"tiles": 8192}},
        ],
        "platform": "any",
    }
    response = client.post("/api/job", json=doc)
    assert response.status_code == 200, response.text
    record = wait_for(client, response.json()["name"], until=finished)[-1]
    assert record["status"] == "success", record
    assert len(record["outputs"]) == 3
    assert output(client, record["outputs"][2]).size == (256, 128)
    assert_contract_metadata(record)


def test_chain_with_an_upload_an_upscaler_and_no_persist_stage(client: httpx.Client) -> None:
    doc = {
        "stages": [
            {
                "name": "refine",
                "type": "blend-img2img",
                "params": {"prompt": "x", "steps": 2, "strength": 0.5},
            },
            {"name": "mix", "type": "blend-linear", "params": {"alpha": 0.5}},
            {
                "name": "big",
                "type": "upscale-resrgan",
                "params": {"upscaling": "upscaling-real-esrgan-x4-v3", "outscale": 4},
            },
        ]
    }
    files = {
        "chain": (None, json.dumps(doc)),
        "source:refine": ("a", png(gradient(64, 64)), "image/png"),
        "source:mix": ("b", png(Image.new("RGB", (64, 64), "white")), "image/png"),
    }
    response = client.post("/api/chain", files=files)
    assert response.status_code == 200, response.text
    record = wait_for(client, response.json()["name"], until=finished)[-1]
    assert record["status"] == "success", record
    assert output(client, record["outputs"][0]).size == (256, 256), (
        "no persist stage: the final images are kept"
    )


def test_bad_chain_documents_name_the_field(client: httpx.Client) -> None:
    cases = [
        (
            {"stages": [{"name": "a", "type": "upscale-simple", "params": {"method": "cubic"}}]},
            "stages[0].params.method",
        ),
        ({"stages": [{"name": "a", "type": "blend-linear", "params": {}}]}, "stages[0]"),
        (
            {"stages": [{"name": "a", "type": "blend-grid", "params": {"width": 2}}]},
            "stages[0].params.height",
        ),
        ({"stages": [], "defaults": {}}, "stages"),
        ({"stages": [{"name": "a", "type": "source-txt2img", "params": {}}], "extra": 1}, "chain"),
    ]
    for doc, field in cases:
        response = client.post("/api/job", json=doc)
        assert response.status_code == 400, (doc, response.text)
        assert response.json()["error"].startswith(field), (field, response.json())


def test_source_s3_continues_from_a_previous_output_and_refuses_other_keys(client: httpx.Client) -> None:
    first = client.post(
        "/api/txt2img", params={"prompt": "a seed image", "steps": 2, "width": 128, "height": 128}
    )
    done = wait_for(client, first.json()["name"], until=finished)[-1]
    assert done["status"] == "success", done
    chain = {
        "stages": [
            {
                "name": "load",
                "type": "source-s3",
                "params": {"bucket": "onnx-web", "source_keys": done["outputs"][0]},
            },
            {"name": "grow", "type": "upscale-simple", "params": {"method": "bilinear", "scale": 2}},
        ]
    }
    response = client.post("/api/job", json=chain)
    assert response.status_code == 200, response.text
    record = wait_for(client, response.json()["name"], until=finished)[-1]
    assert record["status"] == "success", record
    assert output(client, record["outputs"][0]).size == (256, 256)

    chain["stages"][0]["params"]["source_keys"] = "inputs/someone-else/source.png"
    refused = wait_for(client, client.post("/api/job", json=chain).json()["name"], until=finished)[-1]
    assert refused["status"] == "failed" and refused["reason"] == "source_s3_refused", refused


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:5000/x.png",
        "http://169.254.169.254/latest/meta-data/",
        "file:///etc/passwd",
        "http://[::1]/x.png",
    ],
)
def test_source_url_to_private_addresses_is_refused_at_submission(client: httpx.Client, url: str) -> None:
    chain = {"stages": [{"name": "fetch", "type": "source-url", "params": {"source_urls": url}}]}
    response = client.post("/api/job", json=chain)
    assert response.status_code == 400, response.text
    assert response.json()["error"].startswith("stages[0].params.source_urls")


def test_txt2img_with_highres_and_the_upscale_highres_stage(client: httpx.Client) -> None:
    params = {
        "prompt": "a castle || a detailed castle",
        "steps": 4,
        "width": 128,
        "height": 128,
        "highres": True,
        "highresIterations": 2,
        "highresScale": 2,
        "highresStrength": 0.5,
        "highresMethod": "bilinear",
    }
    response = client.post("/api/txt2img", json=params)
    assert response.status_code == 200, response.text
    record = wait_for(client, response.json()["name"], until=finished)[-1]
    assert record["status"] == "success", record
    assert output(client, record["outputs"][0]).size == (512, 512)
    # txt2img, then per iteration a resize and an img2img pass, then the save.
    assert record["stages"]["total"] == 1 + 2 * 2 + 1
    assert record["metadata"][0]["highres"]["iterations"] == 2

    chain = {
        "stages": [
            {
                "name": "start",
                "type": "source-txt2img",
                "params": {"prompt": "x", "steps": 2, "width": 128, "height": 128},
            },
            {
                "name": "hires",
                "type": "upscale-highres",
                "params": {"highresScale": 2, "highresStrength": 0.5, "highresMethod": "lanczos", "steps": 2},
            },
        ]
    }
    response = client.post("/api/job", json=chain)
    assert response.status_code == 200, response.text
    record = wait_for(client, response.json()["name"], until=finished)[-1]
    assert record["status"] == "success", record
    assert output(client, record["outputs"][0]).size == (256, 256)


def test_upscaled_outputs_list_the_upscaling_model_with_its_hash(client: httpx.Client) -> None:
    params = {
        "params": {"upscaling": "upscaling-real-esrgan-x4-v3"},
        "upscale": {"enabled": True, "outscale": 4},
    }
    record = run_job(client, "/api/upscale", params=params, files={"source": png(gradient(32, 32))})
    models = {entry["name"]: entry["hash"] for entry in record["metadata"][0]["models"]}
    assert "upscaling-real-esrgan-x4-v3" in models and models["upscaling-real-esrgan-x4-v3"] != "unknown"


def test_upscaling_an_output_keeps_the_params_it_was_made_with(client: httpx.Client) -> None:
    from pipelines.imageops.metadata import encode_image

    made = {
        "params": {"model": "stable-diffusion-onnx-v1-5", "prompt": "a lighthouse", "seed": 1234, "steps": 7},
        "models": [{"name": "stable-diffusion-onnx-v1-5", "hash": "ORIGINAL", "weight": 1.0}],
        "input_size": {"width": 32, "height": 32},
        "size": {"width": 32, "height": 32},
    }
    source = encode_image(gradient(32, 32), made, fmt="png", server_version="v0")
    params = {
        "params": {"upscaling": "upscaling-real-esrgan-x4-v3"},
        "upscale": {"enabled": True, "outscale": 2},
    }
    record = run_job(client, "/api/upscale", params=params, files={"source": source})
    [metadata] = record["metadata"]
    # As onnx-web's upscale route: the card shows the prompt and seed the image was made with.
    assert (metadata["params"]["prompt"], metadata["params"]["seed"]) == ("a lighthouse", 1234)
    names = [entry["name"] for entry in metadata["models"]]
    assert names[0] == "stable-diffusion-onnx-v1-5" and "upscaling-real-esrgan-x4-v3" in names
    assert metadata["size"] == {"width": 64, "height": 64}


def test_sd_x4_upscaler_through_the_upscale_route(client: httpx.Client) -> None:
    params = {
        "params": {"upscaling": "upscaling-stable-diffusion-x4", "prompt": "sharp", "steps": 2},
        "upscale": {"enabled": True, "scale": 4, "outscale": 4, "denoise": 0.2},
    }
    record = run_job(client, "/api/upscale", params=params, files={"source": png(gradient(64, 48))})
    assert output(client, record["outputs"][0]).size == (256, 192)
