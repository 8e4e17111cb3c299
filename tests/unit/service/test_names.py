"""Job names (contract §6.2) and query-string name sanitising (§1.6)."""

from __future__ import annotations

import dataclasses
import hashlib
import random
import re
import struct
import uuid
from pathlib import Path
from typing import Any

import pytest

from pipelines.models.registry import ModelRegistry
from service.config import Config
from service.names import job_name, sanitize_name
from service.params import ParsedRequest, load_params_doc, parse_request

JOB_ID = uuid.UUID("12345678-1234-5678-1234-567812345678")
NOW = 1_713_300_000.7


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> ModelRegistry:
    root: Path = tmp_path_factory.mktemp("models")
    (root / "stable-diffusion-onnx-v1-5").mkdir()
    return ModelRegistry(root)


@pytest.fixture(scope="module")
def parse(registry: ModelRegistry) -> Any:
    config = Config()
    doc = load_params_doc(config)

    def parse(route: str, **data: Any) -> ParsedRequest:
        body = {"prompt": "a cat", "seed": 1841935312, **data}
        return parse_request(
            route, body, params_doc=doc, registry=registry, config=config, rng=random.Random(0)
        )  # type: ignore[arg-type]

    return parse


def test_name_shape_and_exact_hash(parse: Any) -> None:
    request = parse("txt2img", negativePrompt="blurry")
    sha = hashlib.sha256()
    for part in (b"txt2img", b"stable-diffusion-onnx-v1-5", b"txt2img", b"euler-a", b"a cat", b"blurry"):
        sha.update(part)
    sha.update(struct.pack("!f", 6.0) + struct.pack("!I", 1841935312) + struct.pack("!I", 25))
    sha.update(struct.pack("!f", 0.0) + struct.pack("!III", 1, 512, 512))
    sha.update(JOB_ID.bytes)

    name = job_name("txt2img", request, JOB_ID, now=NOW)

    assert name == f"txt2img_1841935312_{sha.hexdigest()}_1713300000"


def test_a_missing_negative_prompt_is_not_hashed(parse: Any) -> None:
    request = parse("txt2img")
    sha = hashlib.sha256()
    for part in (b"txt2img", b"stable-diffusion-onnx-v1-5", b"txt2img", b"euler-a", b"a cat"):
        sha.update(part)
    sha.update(struct.pack("!fII", 6.0, 1841935312, 25) + struct.pack("!fIII", 0.0, 1, 512, 512))
    sha.update(JOB_ID.bytes)

    assert job_name("txt2img", request, JOB_ID, now=NOW).split("_")[2] == sha.hexdigest()


def test_the_current_time_is_used_by_default(parse: Any) -> None:
    name = job_name("chain", parse("txt2img"), JOB_ID)

    assert re.fullmatch(r"chain_1841935312_[0-9a-f]{64}_\d{10}", name)


def test_identical_requests_get_distinct_names_through_the_job_id(parse: Any) -> None:
    request = parse("txt2img")

    assert job_name("txt2img", request, JOB_ID, now=NOW) == job_name("txt2img", request, JOB_ID, now=NOW)
    assert job_name("txt2img", request, JOB_ID, now=NOW) != job_name(
        "txt2img", request, uuid.uuid4(), now=NOW
    )


@pytest.mark.parametrize(
    "change",
    [
        {"model": "diffusion/other"},
        {"pipeline": "lpw"},
        {"scheduler": "ddim"},
        {"prompt": "a dog"},
        {"negative_prompt": "ugly"},
        {"cfg": 7.0},
        {"seed": 1},
        {"steps": 30},
        {"eta": 0.5},
        {"batch": 2},
        {"width": 768},
        {"height": 768},
    ],
)
def test_every_hashed_image_field_changes_the_hash(parse: Any, change: dict[str, Any]) -> None:
    request = parse("txt2img")
    changed = dataclasses.replace(request, image=dataclasses.replace(request.image, **change))

    assert job_name("txt2img", changed, JOB_ID, now=NOW) != job_name("txt2img", request, JOB_ID, now=NOW)


@pytest.mark.parametrize("change", [{"tiled_vae": True}, {"vae_tile": 256}, {"input_prompt": "a __pet__"}])
def test_fields_outside_the_hash_do_not_change_it(parse: Any, change: dict[str, Any]) -> None:
    request = parse("txt2img")
    changed = dataclasses.replace(request, image=dataclasses.replace(request.image, **change))

    assert job_name("txt2img", changed, JOB_ID, now=NOW) == job_name("txt2img", request, JOB_ID, now=NOW)


def test_the_mode_is_the_prefix_and_is_hashed(parse: Any) -> None:
    request = parse("txt2img")

    chain = job_name("chain", request, JOB_ID, now=NOW)
    txt2img = job_name("txt2img", request, JOB_ID, now=NOW)

    assert chain.startswith("chain_") and chain.split("_")[2] != txt2img.split("_")[2]


def test_img2img_hashes_the_strength(parse: Any) -> None:
    names = {job_name("img2img", parse("img2img", strength=value), JOB_ID, now=NOW) for value in (0.5, 0.6)}

    assert len(names) == 2


@pytest.mark.parametrize(
    "change",
    [
        {"left": 8},
        {"bottom": 8},
        {"fillColor": "red"},
        {"tileOrder": "grid"},
        {"filter": "gaussian-screen"},
        {"noise": "normal"},
    ],
)
def test_inpaint_hashes_border_and_fill_settings(parse: Any, change: dict[str, Any]) -> None:
    base = job_name("inpaint", parse("inpaint"), JOB_ID, now=NOW)

    assert job_name("inpaint", parse("inpaint", **change), JOB_ID, now=NOW) != base


def test_the_hashed_size_can_be_the_source_size(parse: Any) -> None:
    request = parse("inpaint")

    assert job_name("inpaint", request, JOB_ID, size=(512, 512), now=NOW) == job_name(
        "inpaint", request, JOB_ID, now=NOW
    )
    assert job_name("inpaint", request, JOB_ID, size=(640, 480), now=NOW) != job_name(
        "inpaint", request, JOB_ID, now=NOW
    )


@pytest.mark.parametrize(
    ("raw", "clean"),
    [
        ("txt2img_1_abc_2", "txt2img_1_abc_2"),
        ("../etc/passwd", "..etcpasswd"),
        ("a b;c<d>\x00e", "abcde"),
        ("café-名前.png", "café-名前.png"),
        ("", ""),
    ],
)
def test_sanitize_name(raw: str, clean: str) -> None:
    assert sanitize_name(raw) == clean
