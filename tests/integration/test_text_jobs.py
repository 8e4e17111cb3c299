"""The text models end to end: txt2txt (the api queues the job, a worker generates the text on the
demo GPT-2, the text is the job's output ``<job>_0.txt`` and part of its status metadata), and a
chain whose ``text-prompt`` lengthens the prompt of the image it makes and whose ``edit-safety``
hides that image."""

from __future__ import annotations

import io
import shutil
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy
from PIL import Image

from pipelines.models.convert import convert_diffusers_folder
from pipelines.models.demo import DEMO_MODELS, torch_source_path
from pipelines.text.demo import DEMO_TEXT_MODEL, build_demo_text_models
from service.config import Config
from service.jobs.notify import Notifier
from service.jobs.store import JobStore
from service.storage import ObjectStore
from service.worker import Worker, worker_sessions
from tests.integration.api import api_client, error_of, make_models
from tests.integration.workers import job_row

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def text_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The api's listing models plus the demo text and safety models (no diffusion weights)."""
    root = make_models(tmp_path_factory.mktemp("txt2txt-models"))
    build_demo_text_models(root)
    return root


@pytest.fixture(scope="module")
def chain_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo text and safety models and the SD 1.5 demo, for a chain that makes an image."""
    root = tmp_path_factory.mktemp("text-chain-models")
    demo = DEMO_MODELS[0]
    source = torch_source_path(root, demo.name)
    demo.write_checkpoint(source)
    convert_diffusers_folder(source, root / demo.name)
    build_demo_text_models(root)
    return root


def run_one_job(database_url: str, job_store: JobStore, object_store: ObjectStore, models: Path) -> None:
    """Run one queued job on an in-process worker."""
    config = Config(
        database_url=database_url,
        models_path=models,
        s3_bucket=object_store.bucket,
        worker_id="w-text",
        heartbeat_s=0.05,
        poll_interval_s=0.05,
    )
    with closing(Notifier(database_url)) as notifier:
        worker = Worker(
            config, jobs=job_store, store=object_store, sessions=worker_sessions(config), notifier=notifier
        )
        worker.run(max_jobs=1)


def test_a_txt2txt_job_stores_its_text_as_output_and_metadata(
    database_url: str, job_store: JobStore, object_store: ObjectStore, text_models: Path, tmp_path: Path
) -> None:
    client = api_client(job_store, object_store, text_models, tmp_path)
    body = {
        "prompt": "a castle on a hill",
        "model": "demo-gpt2",
        "maxTokens": 12,
        "temperature": 0.7,
        "topK": 20,
        "topP": 0.9,
        "seed": 42,
    }
    submitted = client.simulate_post("/api/txt2txt", json=body)
    assert submitted.status_code == 200, submitted.text
    name = submitted.json["name"]
    assert name.startswith("txt2txt_42_")
    run_one_job(database_url, job_store, object_store, text_models)
    (status,) = client.simulate_get("/api/job/status", params={"jobs": name}).json
    assert status["status"] == "success", status
    assert status["outputs"] == [f"{name}_0.txt"] and not status.get("thumbnails")
    (metadata,) = status["metadata"]
    # Contract §7.3's keys, every one, plus the text.
    assert {"input_size", "outputs", "params", "inversions", "loras", "models", "size"} <= set(metadata)
    assert metadata["params"]["model"] == DEMO_TEXT_MODEL and metadata["params"]["seed"] == 42
    assert metadata["params"]["max_tokens"] == 12 and metadata["params"]["top_p"] == 0.9
    assert metadata["models"][0]["name"] == DEMO_TEXT_MODEL
    assert 0 < metadata["generation"]["new_tokens"] <= 12
    served = client.simulate_get(f"/output/{name}_0.txt")
    assert served.status_code == 200 and served.headers["content-type"].startswith("text/plain")
    assert served.text == metadata["text"] and served.text.startswith("a castle on a hill")
    sidecar = client.simulate_get(f"/output/{name}_0.txt.json")
    assert sidecar.json["text"] == served.text
    assert status["steps"]["current"] >= metadata["generation"]["new_tokens"]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"maxTokens": 0}, "maxTokens"),
        ({"maxTokens": 5000}, "maxTokens"),
        ({"temperature": -1}, "temperature"),
        ({"topK": "many"}, "topK"),
        ({"topP": 1.5}, "topP"),
        ({"model": "no-such-model"}, "model"),
        ({"seed": -2}, "seed"),
    ],
)
def test_bad_txt2txt_parameters_are_400s_naming_the_field(
    job_store: JobStore,
    object_store: ObjectStore,
    text_models: Path,
    tmp_path: Path,
    body: dict[str, object],
    field: str,
) -> None:
    client = api_client(job_store, object_store, text_models, tmp_path)
    result = client.simulate_post("/api/txt2txt", json={"prompt": "x", **body})
    assert result.status_code == 400
    assert field in error_of(result)


def test_txt2txt_without_a_text_model_is_a_400(
    job_store: JobStore, object_store: ObjectStore, tmp_path: Path
) -> None:
    client = api_client(job_store, object_store, make_models(tmp_path / "models"), tmp_path)
    result = client.simulate_post("/api/txt2txt", params={"prompt": "x"})
    assert result.status_code == 400 and "no text model" in error_of(result)


def test_a_chain_expands_its_prompt_makes_the_image_and_hides_it_when_flagged(
    database_url: str, job_store: JobStore, object_store: ObjectStore, chain_models: Path, tmp_path: Path
) -> None:
    client = api_client(job_store, object_store, chain_models, tmp_path)
    document = {
        "defaults": {"prompt": "a red fox", "width": 128, "height": 128, "steps": 2, "seed": 11},
        "stages": [
            {
                "name": "expand",
                "type": "text-prompt",
                "params": {"prompt_filter": "AUTOMATIC/demo-gpt2", "min_length": 40, "add_suffix": "4k"},
            },
            {"name": "make", "type": "source-txt2img", "params": {}},
            {
                "name": "check",
                "type": "edit-safety",
                "params": {"safety_model": "demo-safety", "threshold": 0},
            },
        ],
    }
    submitted = client.simulate_post("/api/chain", json=document)
    assert submitted.status_code == 200, submitted.text
    name = submitted.json["name"]
    run_one_job(database_url, job_store, object_store, chain_models)
    (status,) = client.simulate_get("/api/job/status", params={"jobs": name}).json
    assert status["status"] == "success", status
    (metadata,) = status["metadata"]
    prompt = metadata["params"]["prompt"]
    # The image was made from the expanded prompt; the prompt as sent is kept beside it.
    assert prompt.startswith("a red fox") and prompt.endswith(", 4k") and len(prompt) >= 40 + len(", 4k")
    assert metadata["params"]["input_prompt"] == "a red fox"
    assert metadata["safety"] == {
        "model": "safety/demo-safety",
        "label": "nsfw",
        "score": metadata["safety"]["score"],
        "threshold": 0.0,
        "flagged": True,
        "action": "black",
    }
    image = Image.open(io.BytesIO(client.simulate_get(f"/output/{status['outputs'][0]}").content))
    assert image.size == (128, 128) and image.convert("RGB").getextrema() == ((0, 0),) * 3


@pytest.mark.parametrize(
    ("stage", "error"),
    [
        (
            {"type": "text-prompt", "params": {"prompt_filter": "AUTOMATIC/promptgen-lexart"}},
            "prompt_filter: no text model 'AUTOMATIC/promptgen-lexart'; available: demo-gpt2",
        ),
        ({"type": "text-prompt", "params": {}}, "stages[0].params.prompt_filter: is required by text-prompt"),
        (
            {"type": "edit-safety", "params": {"safety_model": "demo-safety", "threshold": 2}},
            "stages[1].params.threshold: must be a number from 0 to 1",
        ),
        ({"type": "edit-safety", "params": {"safety_model": "demo-gpt2"}}, "no safety model 'demo-gpt2'"),
        ({"type": "text-generate", "params": {}}, "stages[0].type: must be one of"),
    ],
)
def test_bad_text_and_safety_stages_are_400s_naming_the_field(
    job_store: JobStore,
    object_store: ObjectStore,
    text_models: Path,
    tmp_path: Path,
    stage: dict[str, object],
    error: str,
) -> None:
    client = api_client(job_store, object_store, text_models, tmp_path)
    stages = [{"name": "a", **stage}]
    if stage["type"] == "edit-safety":
        # It checks images: a chain must make one first.
        stages.insert(0, {"name": "make", "type": "source-noise", "params": {}})
    result = client.simulate_post("/api/chain", json={"stages": stages})
    assert result.status_code == 400, result.text
    assert error in error_of(result)
    assert job_store.queue_depth() == 0


def test_feature_flags_add_the_prompt_filter_and_the_safety_check_to_legacy_routes(
    job_store: JobStore,
    object_store: ObjectStore,
    engine: sqlalchemy.Engine,
    text_models: Path,
    tmp_path: Path,
) -> None:
    models = tmp_path / "models"
    shutil.copytree(text_models, models)
    # A converted promptgen model, as the GUI's prompt filters name them (here: the demo's weights).
    shutil.copytree(models / DEMO_TEXT_MODEL, models / "text" / "promptgen-lexart")
    editing = {
        "enabled": True,
        "promptFilter": "AUTOMATIC/promptgen-lexart",
        "minLength": 50,
        "addSuffix": "hd",
    }
    body = {"prompt": "a cat", "steps": 3, "experimental": {"promptEditing": editing}}

    def stages(*flags: str, request: dict[str, object] = body) -> list[dict[str, Any]]:
        client = api_client(job_store, object_store, models, tmp_path, feature_flags=flags)
        submitted = client.simulate_post("/api/txt2img", json=request)
        assert submitted.status_code == 200, submitted.text
        return list(job_row(engine, submitted.json["name"])["chain"]["stages"])

    def types(entries: list[dict[str, Any]]) -> list[str]:
        return [entry["type"] for entry in entries]

    assert types(stages()) == ["source-txt2img", "persist-disk"]
    assert types(stages("horde-safety-nsfw")) == ["source-txt2img", "persist-disk"]  # only with horde-safety
    filtered = stages("prompt-filter", "horde-safety")
    assert types(filtered) == ["text-prompt", "source-txt2img", "edit-safety", "persist-disk"]
    assert filtered[0]["params"]["prompt_filter"] == "text/promptgen-lexart"
    assert filtered[0]["params"]["min_length"] == 50 and filtered[0]["params"]["add_suffix"] == "hd"
    assert filtered[2]["params"]["action"] == "mark"  # horde-safety alone records, fails csam
    (safety,) = [
        entry for entry in stages("horde-safety", "horde-safety-nsfw") if entry["type"] == "edit-safety"
    ]
    assert safety["params"] == {**safety["params"], "action": "black", "safety_model": "safety/demo-safety"}
    client = api_client(job_store, object_store, models, tmp_path, feature_flags=("prompt-filter",))
    other = {**editing, "promptFilter": "Gustavosta/MagicPrompt-Stable-Diffusion"}
    result = client.simulate_post("/api/txt2img", json={**body, "experimental": {"promptEditing": other}})
    assert result.status_code == 400
    assert error_of(result).startswith("promptEditing.promptFilter: no text model 'Gustavosta/MagicPrompt")


def test_the_openapi_document_describes_txt2txt_keys_with_the_stage_ranges(
    job_store: JobStore, object_store: ObjectStore, text_models: Path, tmp_path: Path
) -> None:
    client = api_client(job_store, object_store, text_models, tmp_path)
    document = client.simulate_get("/api/openapi.json").json
    operation = document["paths"]["/api/txt2txt"]["post"]
    query = {entry["name"]: entry["schema"] for entry in operation["parameters"] if "name" in entry}
    assert query["maxTokens"] == {"type": "integer", "minimum": 1, "maximum": 1024, "default": 64}
    assert query["topP"] == {"type": "number", "minimum": 0, "maximum": 1, "default": 1.0}
    assert query["model"]["enum"] == ["demo-gpt2", ""]  # a text model here, not a diffusion one
    assert operation["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/TextRequest"
    }
    body = document["components"]["schemas"]["TextRequest"]["properties"]
    assert body["model"] == body["params"]["properties"]["model"] == query["model"]
    assert body["temperature"]["maximum"] == 5 and "steps" in body  # the image keys are still read
    assert "501" not in operation["responses"]
    txt2img = document["paths"]["/api/txt2img"]["post"]
    assert "maxTokens" not in {entry.get("name") for entry in txt2img["parameters"]}


def test_txt2txt_needs_no_default_diffusion_model(
    job_store: JobStore, object_store: ObjectStore, text_models: Path, tmp_path: Path
) -> None:
    """The image group is checked against whatever diffusion model is there, not params.json's default."""
    models = tmp_path / "models"
    shutil.copytree(text_models, models)
    (models / "stable-diffusion-onnx-v1-5").rename(models / "diffusion-other")
    client = api_client(job_store, object_store, models, tmp_path)
    assert client.simulate_post("/api/txt2img", json={"prompt": "x"}).status_code == 400
    result = client.simulate_post("/api/txt2txt", json={"prompt": "x", "steps": 3})
    assert result.status_code == 200, result.text
    assert client.simulate_post("/api/txt2txt", json={"prompt": "x", "steps": 0}).status_code == 400
