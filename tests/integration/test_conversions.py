"""Models as data on real Postgres and S3: ``PUT /api/extras`` starts conversions that workers run.

The api is the whole app (``create_app``); workers are real ``Worker`` loops, in process, with an
empty local models folder and a pull cache, so a converted model reaches a job only through the
store. Sources are files and folders below the import folder, made by the test from the demo
builder's tiny checkpoints; downloads and hub ids have their own tests
(``tests/unit/pipelines/test_model_sources.py``).
"""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import tempfile
import threading
import uuid
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import falcon.testing
import numpy as np
import pytest
import sqlalchemy
import torch
from PIL import Image
from safetensors.torch import save_file

from pipelines.models.convert import convert_diffusers_folder
from pipelines.models.demo import DEMO_MODELS, write_demo_checkpoint
from pipelines.models.demo_controlnets import random_controlnet
from pipelines.models.demo_networks import random_inversion, random_lora
from pipelines.models.registry import ModelRegistry
from pipelines.models.upscalers import DEMO_UPSCALERS, demo_checkpoint
from service.app import create_app
from service.config import Config
from service.jobs.extras import ExtrasRecords
from service.jobs.models import ModelRecords
from service.jobs.states import JobState
from service.jobs.store import JobStore, NewJob
from service.modelstore import ModelCache, describe_model
from service.storage import S3ObjectStore
from tests.fixtures.loopback import FileHandler, HubHandler, LoopbackServer, Route
from tests.fixtures.postgres import job_row
from tests.integration.api import ADMIN_TOKEN
from tests.integration.workers import Workers, cpu_sessions, make_job, run_worker_in_process, wait_until
from tests.unit.pipelines.ldm_checkpoint import sd1_checkpoint

pytestmark = pytest.mark.integration

DEMO = DEMO_MODELS[0].name
ADMIN = {"token": ADMIN_TOKEN}
#: The Real-ESRGAN demo upscaler, a real RRDB network of spandrel's.
UPSCALER = DEMO_UPSCALERS[0]


@pytest.fixture(scope="module")
def sources() -> Iterator[Path]:
    """The import folder: a diffusers folder and the same weights as one file, an upscaler and a
    LoRA (also pickled) as an operator brings them."""
    folder = Path(tempfile.mkdtemp(prefix="onnx-web-test-imports-"))
    try:
        write_demo_checkpoint(folder / "sd-demo")
        save_file(demo_checkpoint(UPSCALER), str(folder / "esrgan.safetensors"))
        parts = _torch_parts(folder / "sd-demo")
        # The same weights as one civitai-style file, in the original LDM key layout.
        single = sd1_checkpoint(parts["unet"], parts["vae"], parts["text_encoder"])
        save_file(single, str(folder / "single.safetensors"))
        lora = {key: value.contiguous() for key, value in random_lora(parts).items()}
        inversion = {key: value.contiguous() for key, value in random_inversion(parts, 2).items()}
        save_file(inversion, str(folder / "style.safetensors"))
        random_controlnet(parts["unet"], 11).save_pretrained(folder / "controlnet")
        _zip_folder(folder / "archive.zip", {"model_index.json": b"{}", "unet/model.onnx": b"graph"})
        _zip_folder(folder / "escape.zip", {"model_index.json": b"{}", "../unet/model.onnx": b"graph"})
        save_file(lora, str(folder / "detail.safetensors"))
        torch.save(lora, folder / "pickled.ckpt")
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _zip_folder(path: Path, members: dict[str, bytes]) -> None:
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in members.items():
            archive.writestr(f"converted/{name}", data)


def _torch_parts(source: Path) -> dict[str, Any]:
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel

    return {
        "unet": UNet2DConditionModel.from_pretrained(source / "unet").eval(),
        "vae": AutoencoderKL.from_pretrained(source / "vae").eval(),
        "text_encoder": CLIPTextModel.from_pretrained(source / "text_encoder").eval(),
    }


@pytest.fixture
def records(engine: sqlalchemy.Engine) -> ModelRecords:
    return ModelRecords(engine)


@pytest.fixture
def local(tmp_path: Path) -> Path:
    """The workers' and api's read-only models folder: empty, so models come from the store."""
    folder = tmp_path / "local"
    folder.mkdir()
    return folder


@pytest.fixture
def client(
    engine: sqlalchemy.Engine,
    job_store: JobStore,
    object_store: S3ObjectStore,
    records: ModelRecords,
    local: Path,
    tmp_path: Path,
) -> falcon.testing.TestClient:
    settings = Config(
        models_path=local,
        bundle_path=tmp_path / "bundle",
        s3_bucket=object_store.bucket,
        admin_token=ADMIN_TOKEN,
    )
    app = create_app(
        settings,
        jobs=job_store,
        store=object_store,
        registry=ModelRegistry(local, ()),
        models=records,
        extras=ExtrasRecords(engine),
    )
    return falcon.testing.TestClient(app)


@pytest.fixture
def convert(
    database_url: str,
    job_store: JobStore,
    object_store: S3ObjectStore,
    records: ModelRecords,
    local: Path,
    sources: Path,
    tmp_path: Path,
) -> Callable[..., None]:
    """Run a worker until it has ended ``max_jobs`` jobs: the empty models folder (or ``models``),
    a pull cache of its own (``tmp_path / cache``), ``sources`` as its import folder."""

    def run(max_jobs: int, *, cache: str, models: Path | None = None, **overrides: Any) -> None:
        sessions = cpu_sessions()
        run_worker_in_process(
            database_url,
            job_store,
            object_store,
            models or local,
            worker_id="convert-worker",
            max_jobs=max_jobs,
            sessions=sessions,
            # As the real worker is wired: a model replaced or evicted drops only its own sessions.
            model_cache=ModelCache(tmp_path / cache, 10**10, object_store, records, on_drop=sessions.drop),
            model_cache_path=tmp_path / cache,
            import_path=sources,
            upload_depth=0,
            **overrides,
        )

    return run


def put_extras(client: falcon.testing.TestClient, document: Any) -> falcon.testing.Result:
    body = document if isinstance(document, str) else json.dumps(document)
    return client.simulate_put("/api/extras", params=ADMIN, body=body)


CATALOGUE = {
    "diffusion": [{"name": "demo-converted", "label": "Demo, converted", "source": "sd-demo"}],
    "upscaling": [
        {"name": "esrgan", "label": "ESRGAN", "source": "esrgan.safetensors", "scale": 4, "model": "resrgan"}
    ],
    "networks": [
        {"name": "detail", "type": "lora", "source": "detail.safetensors", "tokens": ["detailed"]},
    ],
    "sources": [{"name": "detector", "source": "https://example.com/detector.pth"}],
}


def test_a_saved_catalogue_is_converted_published_listed_and_runs_on_a_fresh_worker(
    convert: Callable[..., None],
    engine: sqlalchemy.Engine,
    job_store: JobStore,
    object_store: S3ObjectStore,
    client: falcon.testing.TestClient,
    sources: Path,
    tmp_path: Path,
) -> None:
    saved = put_extras(client, CATALOGUE)

    assert saved.status_code == 200, saved.text
    answer = saved.json
    names = {item["name"]: item for item in answer["conversions"]}
    assert set(names) == {"diffusion-demo-converted", "upscaling-esrgan", "detail"}
    assert answer["successful"] == sorted(names, key=list(names).index)
    assert answer["skipped"] == [{"name": "detector", "reason": answer["skipped"][0]["reason"]}]
    assert json.loads(client.simulate_get("/api/extras", params=ADMIN).text) == CATALOGUE
    pending = client.simulate_get("/api/models", params=ADMIN).json["conversions"]
    assert {item["state"] for item in pending} == {"pending"}

    convert(3, cache="c1")

    overview = client.simulate_get("/api/models", params=ADMIN).json
    states = {item["name"]: (item["state"], item["reason"]) for item in overview["conversions"]}
    assert states == {name: ("success", None) for name in names}, states
    ready = {model["name"]: model for model in overview["models"]}
    assert {name: ready[name]["state"] for name in names} == dict.fromkeys(names, "ready")
    assert ready["diffusion-demo-converted"]["family"] == "sd"
    assert ready["upscaling-esrgan"]["kind"] == "upscaling"
    # The job's output says what was published.
    row = job_row(engine, names["detail"]["job"])
    (output,) = row["outputs"]
    summary = json.loads(object_store.get_bytes(row["output_keys"][output]))
    assert summary["model"] == "detail"
    assert [version["content_hash"] for version in summary["versions"]] == [ready["detail"]["content_hash"]]
    # The api lists them (its registry refreshes from the store every few seconds).
    wait_until(
        lambda: "diffusion-demo-converted" in listed_models(client)["diffusion"],
        timeout_s=15,
        what="the api to list the converted model",
    )
    listed = listed_models(client)
    assert "upscaling-esrgan" in listed["upscaling"]
    assert {"name": "detail", "tokens": ["detailed"], "type": "lora"} in listed["networks"]
    labels = client.simulate_get("/api/settings/strings").json["en"]["translation"]["model"]
    assert labels["diffusion-demo-converted"] == "Demo, converted"

    # A worker that never saw the model pulls it and makes the image the local conversion makes.
    reference = tmp_path / "reference"
    convert_diffusers_folder(sources / "sd-demo", reference / DEMO)
    (reference / "lora").mkdir()
    shutil.copy(sources / "detail.safetensors", reference / "lora")
    prompt = "a red fox in the snow <lora:detail:1.0>"
    local_job = job_store.enqueue(make_job(reference, steps=3, seed=5, prompt=prompt))
    convert(1, cache="c0", models=reference)
    pulled = make_job(reference, steps=3, seed=5, prompt=prompt)
    pulled_job = job_store.enqueue(
        replace(pulled, model="diffusion-demo-converted", chain=_renamed(pulled.chain))
    )
    convert(1, cache="c2")
    first, second = job_row(engine, local_job.name), job_row(engine, pulled_job.name)
    assert second["state"] == JobState.SUCCESS.value, second["errors"]
    assert np.array_equal(_pixels(object_store, first), _pixels(object_store, second))
    cached = tmp_path / "c2"
    assert (cached / "lora" / "detail.safetensors").is_file() and (
        cached / "diffusion-demo-converted"
    ).is_dir()


def listed_models(client: falcon.testing.TestClient) -> dict[str, Any]:
    return client.simulate_get("/api/settings/models").json


def _renamed(chain: dict[str, Any]) -> dict[str, Any]:
    """A txt2img chain naming the converted model instead of the demo one."""
    text = json.dumps(chain).replace(f'"{DEMO}"', '"diffusion-demo-converted"')
    return json.loads(text)


def _pixels(store: S3ObjectStore, row: dict[str, Any]) -> np.ndarray:
    (name,) = row["outputs"]
    return np.asarray(Image.open(io.BytesIO(store.get_bytes(row["output_keys"][name]))))


def test_a_single_file_checkpoint_converts_to_the_graphs_its_diffusers_folder_gives(
    convert: Callable[..., None],
    records: ModelRecords,
    client: falcon.testing.TestClient,
) -> None:
    """The file's own configs are the demo model's (``config``), as a fine-tune's would be."""
    catalogue = {
        "diffusion": [
            {"name": "from-file", "source": "single.safetensors", "config": "sd-demo"},
            {"name": "from-folder", "source": "sd-demo"},
        ]
    }
    assert put_extras(client, catalogue).status_code == 200

    convert(2, cache="c")

    from_file = records.ready_model("diffusion-from-file")
    from_folder = records.ready_model("diffusion-from-folder")
    assert from_file is not None and from_folder is not None
    assert graphs(from_file.files) == graphs(from_folder.files)
    assert len(graphs(from_file.files)) == 4


def test_a_diffusion_model_is_converted_for_cpu_and_cuda_workers_and_each_pulls_its_own(
    convert: Callable[..., None],
    object_store: S3ObjectStore,
    records: ModelRecords,
    client: falcon.testing.TestClient,
    local: Path,
    tmp_path: Path,
) -> None:
    assert put_extras(client, {"diffusion": [{"name": "both", "source": "sd-demo"}]}).status_code == 200

    convert(1, cache="c", convert_variants=("fp32", "cuda"))

    fp32, cuda = records.ready_model("diffusion-both"), records.ready_model("diffusion-both", "cuda")
    assert fp32 is not None and cuda is not None
    assert (fp32.variant, cuda.variant) == ("fp32", "cuda")
    assert "diffusion-both/gpu.json" in {item.path for item in cuda.files}
    assert "diffusion-both/gpu.json" not in {item.path for item in fp32.files}
    listed = [model for model in client.simulate_get("/api/models", params=ADMIN).json["models"]]
    assert sorted(model["variant"] for model in listed if model["name"] == "diffusion-both") == [
        "cuda",
        "fp32",
    ]
    # The api offers the name once; a CUDA worker's cache pulls the fused graphs, a CPU one fp32.
    wait_until(
        lambda: "diffusion-both" in listed_models(client)["diffusion"], timeout_s=15, what="the listing"
    )
    assert listed_models(client)["diffusion"].count("diffusion-both") == 1
    for variant, expected in (("cuda", cuda), ("fp32", fp32)):
        cache = ModelCache(tmp_path / variant, 10**10, object_store, records, variant=variant)
        with cache.prepare(local, ["diffusion-both"]) as folder:
            assert (folder / "diffusion-both" / "gpu.json").is_file() == (variant == "cuda")
        assert cache.cached() == ["diffusion-both"]
        assert json.loads((tmp_path / variant / ".store" / "diffusion-both.json").read_text())[
            "content_hash"
        ] == (expected.content_hash)


def test_downloads_and_hub_repos_convert_like_local_sources(
    convert: Callable[..., None],
    records: ModelRecords,
    client: falcon.testing.TestClient,
    sources: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An upscaler from a download site, sha256-checked, and a diffusers repo from a hub."""
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setenv("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    weights = (sources / "esrgan.safetensors").read_bytes()
    site, hub = LoopbackServer(FileHandler), LoopbackServer(HubHandler)
    site.routes = {"/weights/esrgan.safetensors": Route(weights)}  # type: ignore[attr-defined]
    folder = sources / "sd-demo"
    hub.repos = {  # type: ignore[attr-defined]
        "demo/sd": {
            path.relative_to(folder).as_posix(): path.read_bytes()
            for path in folder.rglob("*")
            if path.is_file()
        }
    }
    try:
        catalogue = {
            "upscaling": [
                {
                    "name": "downloaded",
                    "source": f"{site.root}/weights/esrgan.safetensors?token=secret",
                    "sha256": hashlib.sha256(weights).hexdigest(),
                    "scale": 4,
                }
            ],
            "diffusion": [{"name": "from-hub", "source": "huggingface://demo/sd"}],
        }
        assert put_extras(client, catalogue).status_code == 200
        convert(2, cache="c", hf_endpoint=hub.root)
    finally:
        site.close()
        hub.close()

    downloaded, from_hub = (
        records.ready_model("upscaling-downloaded"),
        records.ready_model("diffusion-from-hub"),
    )
    assert downloaded is not None and from_hub is not None
    assert [request.path for request in site.requests] == ["/weights/esrgan.safetensors?token=secret"]
    assert not [request.path for request in hub.requests if request.path.endswith(".bin")]
    # The same weights as the local folder: the same graphs as converting it locally.
    reference = describe_model(convert_diffusers_folder(folder, tmp_path / "ref" / "diffusion-from-hub"))
    assert graphs(from_hub.files) == graphs(reference.files)


def files_of(folder: Path) -> list[Path]:
    return [path for path in folder.rglob("*") if path.is_file()]


def graphs(files: Any) -> dict[str, str]:
    """A model's ONNX graphs by their path inside the model folder, and their sha256."""
    return {item.path.split("/", 1)[1]: item.sha256 for item in files if item.path.endswith(".onnx")}


def test_archives_inversions_and_controlnets_convert_and_a_zip_slip_does_not(
    convert: Callable[..., None],
    engine: sqlalchemy.Engine,
    records: ModelRecords,
    client: falcon.testing.TestClient,
) -> None:
    catalogue = {
        "diffusion": [
            {"name": "archived", "source": "archive.zip", "pipeline": "archive"},
            {"name": "escaping", "source": "escape.zip", "pipeline": "archive"},
        ],
        "networks": [
            {"name": "style", "type": "inversion", "source": "style.safetensors", "token": "<style>"},
            {"name": "edges", "type": "control", "source": "./controlnet"},
        ],
    }
    jobs = {item["name"]: item["job"] for item in put_extras(client, catalogue).json["conversions"]}

    convert(4, cache="c")

    states = {
        name: (job_row(engine, job)["state"], job_row(engine, job)["reason"]) for name, job in jobs.items()
    }
    assert states == {
        "diffusion-archived": ("success", None),
        "diffusion-escaping": ("failed", "bad_source"),
        "style": ("success", None),
        "edges": ("success", None),
    }
    archived = records.ready_model("diffusion-archived")
    assert archived is not None
    assert sorted(item.path for item in archived.files) == [
        "diffusion-archived/model_index.json",
        "diffusion-archived/unet/model.onnx",
    ]
    assert records.ready_model("style").path == "inversion/style.safetensors"
    assert records.ready_model("edges").path == "control/edges"
    assert "control/edges/model.onnx" in {item.path for item in records.ready_model("edges").files}


def test_saving_again_converts_only_what_changed(
    convert: Callable[..., None],
    client: falcon.testing.TestClient,
) -> None:
    catalogue = {"networks": [{"name": "detail", "type": "lora", "source": "detail.safetensors"}]}
    assert put_extras(client, catalogue).status_code == 200
    convert(1, cache="c")

    relabelled = {"networks": [{**catalogue["networks"][0], "label": "Detail", "tokens": ["sharp"]}]}
    again = put_extras(client, relabelled).json

    assert again["conversions"] == [] and again["unchanged"] == ["detail"]
    changed = {"networks": [{**relabelled["networks"][0], "weight": 0.5}]}
    assert [item["name"] for item in put_extras(client, changed).json["conversions"]] == ["detail"]


def test_entries_the_models_folder_holds_are_not_converted(
    client: falcon.testing.TestClient,
    local: Path,
) -> None:
    (local / "lora").mkdir()
    (local / "lora" / "here.safetensors").write_bytes(b"weights")
    (local / "upscaling-here.onnx").write_bytes(b"graph")
    document = {
        "upscaling": [{"name": "here", "source": "demo", "scale": 4, "hash": "ABC123"}],
        "networks": [
            {"name": "here-too", "type": "lora", "source": "demo"},
            {"name": "here", "type": "lora", "source": "d"},
        ],
    }

    answer = put_extras(client, document).json

    assert [item["name"] for item in answer["conversions"]] == ["here-too"]
    assert [item["name"] for item in answer["skipped"]] == ["upscaling-here", "here"]
    assert "models folder" in answer["skipped"][0]["reason"]


def test_an_invalid_document_is_refused_whole_with_every_problem_named(
    job_store: JobStore,
    client: falcon.testing.TestClient,
) -> None:
    document = {
        "diffusion": [{"name": "a", "source": "../outside"}, {"name": "a", "source": "x/y", "colour": 1}],
        "upscaling": [{"name": "u", "source": "u.pth"}],
        "networks": [{"name": "n", "source": "n.safetensors", "type": "mystery"}],
        "extra": [],
    }

    answer = put_extras(client, document)

    assert answer.status_code == 400
    fields = {problem["field"] for problem in answer.json["errors"]}
    assert {"", "diffusion[1]", "upscaling[0]", "networks[0].type"} <= fields
    assert answer.json["error"]
    assert client.simulate_get("/api/extras", params=ADMIN).text == "{}"
    assert job_store.active_jobs(10) == []
    # The rules past the shape, once the shape is right.
    later = put_extras(
        client,
        {"diffusion": [{"name": "a", "source": "../outside"}, {"name": "diffusion-a", "source": "x/y"}]},
    ).json["errors"]
    assert [problem["field"] for problem in later] == ["diffusion[0].source", "diffusion[1].name"]
    for bad in ("not: [json", "a: &x [1]\nb: *x\n", "[1, 2]"):
        assert put_extras(client, bad).status_code == 400
    assert client.simulate_put("/api/extras", body="{}").status_code == 401


@pytest.mark.parametrize(
    ("body", "field", "rule"),
    [
        (
            '{"networks": [{"name": "d", "type": "lora", "source": "d.safetensors", "weight": NaN}]}',
            "networks[0].weight",
            "finite",
        ),
        (
            '{"diffusion": [{"name": "a", "source": "x/y", "label": "a\\u0000b"}]}',
            "diffusion[0].label",
            "NUL",
        ),
        ('{"strings": {"en": {"k": "\\ud800"}}}', "strings.en.k", "surrogate"),
        ("strings:\n  en:\n    day: 2024-01-02\n", "strings.en.day", "JSON value"),
        ("strings:\n  en:\n    day: 2024-13-45\n", "body", "date"),
        ("strings:\n  en:\n    n: " + "7" * 5000 + "\n", "body", "a number too long"),
        ("strings:\n  en:\n    n: 0x" + "f" * 5000 + "\n", "strings.en.n", "64 bits"),
        ('{"strings": ' * 5000 + "{}" + "}" * 5000, "body", "nested deeper"),
    ],
)
def test_a_document_postgres_cannot_store_is_a_400_naming_the_value(
    job_store: JobStore, client: falcon.testing.TestClient, body: str, field: str, rule: str
) -> None:
    answer = put_extras(client, body)

    assert answer.status_code == 400, answer.text
    assert answer.json["error"].startswith(f"{field}: ") and rule in answer.json["error"]
    assert client.simulate_get("/api/extras", params=ADMIN).text == "{}"
    assert job_store.active_jobs(10) == []


def test_a_changed_entry_waits_for_its_running_conversion_then_goes_through(
    client: falcon.testing.TestClient,
) -> None:
    first = put_extras(client, {"networks": [{"name": "d", "type": "lora", "source": "detail.safetensors"}]})
    (job,) = first.json["conversions"]

    conflict = put_extras(client, {"networks": [{"name": "d", "type": "lora", "source": "pickled.ckpt"}]})

    assert conflict.status_code == 409
    assert conflict.json["conflicts"] == [{"name": "d", "field": "networks[0]", "job": job["job"]}]
    assert json.loads(client.simulate_get("/api/extras", params=ADMIN).text)["networks"][0]["source"] == (
        "detail.safetensors"
    )
    assert client.simulate_put("/api/job/cancel", params={"jobs": job["job"]}).status_code == 200
    retried = put_extras(client, {"networks": [{"name": "d", "type": "lora", "source": "pickled.ckpt"}]})
    assert retried.status_code == 200 and len(retried.json["conversions"]) == 1


@pytest.mark.parametrize(
    ("entry", "reason"),
    [
        ({"name": "p", "type": "lora", "source": "pickled.ckpt"}, "pickle_refused"),
        ({"name": "m", "type": "lora", "source": "missing.safetensors"}, "source_missing"),
        ({"name": "h", "type": "lora", "source": "detail.safetensors", "sha256": "0" * 64}, "hash_mismatch"),
        ({"name": "s", "type": "lora", "source": "esrgan.safetensors", "sha256": None}, None),
    ],
)
def test_a_conversion_that_cannot_work_fails_with_its_reason_and_publishes_nothing(
    convert: Callable[..., None],
    engine: sqlalchemy.Engine,
    object_store: S3ObjectStore,
    records: ModelRecords,
    client: falcon.testing.TestClient,
    entry: dict[str, Any],
    reason: str | None,
) -> None:
    entry = {key: value for key, value in entry.items() if value is not None}
    (job,) = put_extras(client, {"networks": [entry]}).json["conversions"]

    convert(1, cache="c")

    row = job_row(engine, job["job"])
    if reason is None:  # any safetensors file is accepted as a network's weights
        assert row["state"] == JobState.SUCCESS.value, row["errors"]
        return
    assert (row["state"], row["reason"], row["attempt"]) == (JobState.FAILED.value, reason, 1)
    assert records.ready_model(entry["name"]) is None
    assert object_store.list_keys("models/") == []
    status = client.simulate_get("/api/job/status", params={"jobs": job["job"]}).json[0]
    assert status["reason"] == reason


def test_pickles_convert_where_the_worker_allows_them(
    convert: Callable[..., None],
    engine: sqlalchemy.Engine,
    records: ModelRecords,
    client: falcon.testing.TestClient,
) -> None:
    (job,) = put_extras(client, {"networks": [{"name": "p", "type": "lora", "source": "pickled.ckpt"}]}).json[
        "conversions"
    ]

    convert(1, cache="c", allow_pickle=True)

    row = job_row(engine, job["job"])
    assert row["state"] == JobState.SUCCESS.value, row["errors"]
    model = records.ready_model("p")
    assert model is not None and model.path == "lora/p.safetensors"


def test_a_model_is_deleted_only_once_no_job_needs_it(
    convert: Callable[..., None],
    job_store: JobStore,
    object_store: S3ObjectStore,
    records: ModelRecords,
    client: falcon.testing.TestClient,
) -> None:
    put_extras(client, {"upscaling": [{"name": "esrgan", "source": "esrgan.safetensors", "scale": 4}]})
    convert(1, cache="c")
    assert object_store.list_keys("models/upscaling-esrgan/")
    chain = {"stages": [{"name": "up", "type": "upscale-resrgan", "params": {"model": "upscaling-esrgan"}}]}
    job_id = uuid.uuid4()
    job = job_store.enqueue(
        NewJob(
            id=job_id,
            name=f"chain_{job_id.hex}",
            kind="chain",
            chain=chain,
            model=None,
            platform=None,
            max_attempts=1,
        )
    )

    refused = client.simulate_delete("/api/models/upscaling-esrgan", params=ADMIN)

    assert refused.status_code == 409 and "1 waiting or running job" in refused.json["error"]
    assert client.simulate_put("/api/job/cancel", params={"jobs": job.name}).status_code == 200
    deleted = client.simulate_delete("/api/models/upscaling-esrgan", params=ADMIN)
    assert deleted.status_code == 200 and deleted.json == {"name": "upscaling-esrgan", "versions": 1}
    assert object_store.list_keys("models/upscaling-esrgan/") == []
    assert records.ready_model("upscaling-esrgan") is None
    assert client.simulate_delete("/api/models/upscaling-esrgan", params=ADMIN).status_code == 404
    assert client.simulate_delete("/api/models/bad%20name", params=ADMIN).status_code == 400
    assert client.simulate_delete("/api/models/x").status_code == 401


def test_a_running_conversion_is_cancelled_and_publishes_nothing(
    convert: Callable[..., None],
    engine: sqlalchemy.Engine,
    object_store: S3ObjectStore,
    records: ModelRecords,
    client: falcon.testing.TestClient,
) -> None:
    (job,) = put_extras(client, {"diffusion": [{"name": "stopped", "source": "sd-demo"}]}).json["conversions"]

    def converting() -> bool:
        loading = job_row(engine, job["job"])["loading"]
        return bool(loading) and loading.get("stage") == "convert"

    worker = threading.Thread(target=convert, args=(1,), kwargs={"cache": "c"})
    worker.start()
    try:
        wait_until(converting, timeout_s=60, what="the conversion to start converting")
        cancel = client.simulate_put("/api/job/cancel", params={"jobs": job["job"]})
    finally:
        worker.join(timeout=120)
    assert cancel.status_code == 200 and not worker.is_alive()

    row = job_row(engine, job["job"])
    assert row["state"] == JobState.CANCELLED.value
    assert records.ready_model("diffusion-stopped") is None
    assert object_store.list_keys("models/") == []
    conversions = client.simulate_get("/api/models", params=ADMIN).json["conversions"]
    assert [(item["name"], item["state"]) for item in conversions] == [("diffusion-stopped", "cancelled")]


def test_a_download_that_fails_is_retried_and_then_converts(
    convert: Callable[..., None],
    engine: sqlalchemy.Engine,
    records: ModelRecords,
    client: falcon.testing.TestClient,
    sources: Path,
) -> None:
    weights = (sources / "esrgan.safetensors").read_bytes()
    site = LoopbackServer(FileHandler)
    # Every try of the first attempt (three, with backoff) meets a server error.
    site.routes = {"/esrgan.safetensors": Route(weights, fail_statuses=[503, 503, 503])}  # type: ignore[attr-defined]
    try:
        entry = {"name": "flaky", "source": f"{site.root}/esrgan.safetensors", "scale": 4}
        (job,) = put_extras(client, {"upscaling": [entry]}).json["conversions"]
        convert(1, cache="c")
        first = job_row(engine, job["job"])
        convert(1, cache="c")
    finally:
        site.close()

    assert (first["state"], first["attempt"]) == (JobState.PENDING.value, 1)
    assert "download_failed" in json.dumps(first["errors"])
    row = job_row(engine, job["job"])
    assert (row["state"], row["attempt"]) == (JobState.SUCCESS.value, 2)
    assert records.ready_model("upscaling-flaky") is not None


def test_a_conversion_survives_its_worker_being_killed(
    database_url: str,
    engine: sqlalchemy.Engine,
    object_store: S3ObjectStore,
    records: ModelRecords,
    client: falcon.testing.TestClient,
    s3_credentials: Any,
    sources: Path,
    local: Path,
    tmp_path: Path,
) -> None:
    (job,) = put_extras(client, {"diffusion": [{"name": "killed", "source": "sd-demo"}]}).json["conversions"]
    workers = Workers(
        database_url=database_url,
        s3=s3_credentials,
        bucket=object_store.bucket,
        models=local,
        log_dir=tmp_path,
    )
    env = {"ONNX_WEB_IMPORT_PATH": str(sources), "ONNX_WEB_PROGRESS_INTERVAL_S": "0.05"}
    try:
        first = workers.start("w-killed", ONNX_WEB_MODEL_CACHE=str(tmp_path / "c1"), **env)

        def converting() -> bool:
            loading = job_row(engine, job["job"])["loading"]
            return bool(loading) and loading.get("stage") == "convert"

        wait_until(converting, timeout_s=120, what="the conversion to start converting")
        first.kill()
        second = workers.start("w-second", ONNX_WEB_MODEL_CACHE=str(tmp_path / "c2"), **env)
        wait_until(
            lambda: job_row(engine, job["job"])["state"] == JobState.SUCCESS.value,
            timeout_s=240,
            what="the second worker to finish the conversion",
        )
        second.kill()
    finally:
        workers.kill_all()

    row = job_row(engine, job["job"])
    assert row["attempt"] == 2 and row["rescue_count"] == 1
    model = records.ready_model("diffusion-killed")
    assert model is not None and model.family == "sd"
