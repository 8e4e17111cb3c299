"""The model store on real Postgres and a real S3 server: publish, pull, verify, evict, list.

A worker runs in process (``Worker.run(max_jobs=1)``) on an empty local models folder, so every
model it runs comes from the store through its ``ModelCache``. Cache behaviour that needs no ONNX
model (eviction, hash checks, coalescing) runs on small folders of random bytes published the same
way a converted model is.
"""

from __future__ import annotations

import functools
import io
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import falcon.testing
import numpy as np
import pytest
import sqlalchemy
from PIL import Image

from pipelines.models.convert import convert_diffusers_folder
from pipelines.models.demo import DEMO_MODELS, torch_source_path, write_demo_checkpoint
from pipelines.models.registry import ModelRegistry
from service.app import create_app
from service.config import Config
from service.jobs.keys import KeyStore
from service.jobs.models import ModelRecords, ModelState
from service.jobs.states import JobState
from service.jobs.store import JobStore
from service.modelstore import ModelCache, ModelCacheFull, ModelCorrupt, ModelUnavailable, publish, withdraw
from service.resources.jobs import render_job
from service.stack import S3Credentials
from service.storage import ObjectStream, S3ObjectStore, model_key, model_prefix, parse_endpoint
from tests.fixtures.postgres import job_row
from tests.integration.api import ADMIN_TOKEN
from tests.integration.workers import Workers, make_job, run_worker_in_process, wait_until

pytestmark = pytest.mark.integration

DEMO = DEMO_MODELS[0].name
STEPS = 3


@pytest.fixture(scope="module")
def models() -> Iterator[Path]:
    """Only the txt2img demo model, built as ``build_demo_models`` builds it."""
    folder = Path(tempfile.mkdtemp(prefix="onnx-web-test-store-"))
    try:
        write_demo_checkpoint(torch_source_path(folder, DEMO))
        convert_diffusers_folder(torch_source_path(folder, DEMO), folder / DEMO)
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def records(engine: sqlalchemy.Engine) -> ModelRecords:
    return ModelRecords(engine)


class WatchedRecords(ModelRecords):
    """The registry, keeping what each job's status said while its model was being pulled."""

    def __init__(self, engine: sqlalchemy.Engine, jobs: JobStore) -> None:
        super().__init__(engine)
        self.jobs = jobs
        self.seen: list[dict[str, Any]] = []

    def record_loading(self, job_id: Any, worker_id: str, attempt: int, loading: Any) -> bool:
        written = super().record_loading(job_id, worker_id, attempt, loading)
        if loading is not None:
            (view,) = (v for v in self.jobs.get_many(self.running_names()).values() if v.id == job_id)
            self.seen.append(render_job(view.name, view))
        return written

    def running_names(self) -> list[str]:
        return [name for name, state, _ in self.jobs.active_jobs(10) if state == JobState.RUNNING]


def fake_model(root: Path, name: str, size: int, *, seed: int = 0) -> Path:
    """A model folder of two files of random bytes (``size`` bytes in all)."""
    folder = root / name
    (folder / "unet").mkdir(parents=True)
    rng = np.random.default_rng(seed)
    (folder / "unet" / "model.onnx").write_bytes(rng.bytes(size - 16))
    (folder / "config.bin").write_bytes(rng.bytes(16))
    return folder


#: This module's in-process worker; each test names the jobs it runs and the cache it pulls through.
run_worker = functools.partial(run_worker_in_process, worker_id="store-worker", upload_depth=0)


def output_pixels(store: S3ObjectStore, row: dict[str, Any]) -> np.ndarray:
    (name,) = row["outputs"]
    return np.asarray(Image.open(io.BytesIO(store.get_bytes(row["output_keys"][name]))))


# -- publish and pull a real model --------------------------------------------------------------


def test_a_fresh_worker_pulls_the_published_demo_model_and_makes_the_same_image(
    database_url: str,
    job_store: JobStore,
    object_store: S3ObjectStore,
    records: ModelRecords,
    models: Path,
    tmp_path: Path,
) -> None:
    published = publish(models / DEMO, object_store, records)
    assert published.uploaded
    ready = records.ready_model(DEMO)
    assert ready is not None and ready.state == ModelState.READY
    assert replace(ready, created_at=None, state=ModelState.PUBLISHING) == published.model
    # The same job run from the local folder, then by a worker whose folder is empty.
    local_job = job_store.enqueue(make_job(models, steps=STEPS, seed=11))
    run_worker(database_url, job_store, object_store, models, max_jobs=1)
    empty = tmp_path / "empty"
    empty.mkdir()
    watched = WatchedRecords(job_store_engine(job_store), job_store)
    cache = ModelCache(tmp_path / "cache", 10**9, object_store, watched)
    pulled_job = job_store.enqueue(make_job(models, steps=STEPS, seed=11))
    run_worker(database_url, job_store, object_store, empty, max_jobs=1, model_cache=cache)

    local_row = job_row(job_store_engine(job_store), local_job.name)
    pulled_row = job_row(job_store_engine(job_store), pulled_job.name)
    assert pulled_row["state"] == JobState.SUCCESS.value, pulled_row["errors"]
    assert pulled_row["loading"] is None
    # The job's status showed the pull, from 0 to every byte, before its first step.
    loading = [record["loading"] for record in watched.seen]
    assert loading[0] == {"model": DEMO, "current": 0, "total": published.model.size_bytes}
    assert loading[-1]["current"] == loading[-1]["total"] == published.model.size_bytes
    assert all(record["steps"]["current"] == 0 for record in watched.seen)
    assert cache.downloads == len(published.model.files)
    assert cache.cached() == [DEMO]
    assert (tmp_path / "cache" / DEMO / "unet" / "model.onnx").is_file()
    assert np.array_equal(output_pixels(object_store, local_row), output_pixels(object_store, pulled_row))


def test_jobs_of_a_store_model_run_batched_once_it_is_cached(
    database_url: str,
    job_store: JobStore,
    object_store: S3ObjectStore,
    records: ModelRecords,
    models: Path,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    publish(models / DEMO, object_store, records)
    empty = tmp_path / "empty"
    empty.mkdir()
    cache = ModelCache(tmp_path / "cache", 10**9, object_store, records)
    first = [job_store.enqueue(make_job(models, steps=STEPS, seed=seed)) for seed in (1, 2, 3)]

    with caplog.at_level(logging.INFO, logger="service.jobrun"):
        run_worker(database_url, job_store, object_store, empty, max_jobs=3, model_cache=cache, batch_max=3)
        later = [job_store.enqueue(make_job(models, steps=STEPS, seed=seed)) for seed in (4, 5, 6)]
        run_worker(database_url, job_store, object_store, empty, max_jobs=3, model_cache=cache, batch_max=3)

    engine = job_store_engine(job_store)
    assert all(job_row(engine, job.name)["state"] == JobState.SUCCESS.value for job in first + later)
    summaries = [record for record in caplog.records if getattr(record, "action", None) == "job_summary"]
    # The first job pulls alone; its mates wait for the next claim, then run as one batch from the
    # cache, as do later jobs of the model.
    assert [getattr(record, "batch", None) for record in summaries] == [None, 2, 2, 3, 3, 3]
    assert cache.downloads == len(records.ready_model(DEMO).files)


def job_store_engine(jobs: JobStore) -> sqlalchemy.Engine:
    return jobs._engine


def test_republishing_the_same_content_uploads_nothing_and_new_content_replaces_the_old(
    object_store: S3ObjectStore, records: ModelRecords, tmp_path: Path
) -> None:
    folder = fake_model(tmp_path / "models", "diffusion-fake", 4096)
    first = publish(folder, object_store, records)
    keys = object_store.list_keys("models/")

    again = publish(folder, object_store, records)

    assert not again.uploaded and again.model.content_hash == first.model.content_hash
    assert object_store.list_keys("models/") == keys
    (folder / "unet" / "model.onnx").write_bytes(b"changed")
    replaced = publish(folder, object_store, records)
    assert replaced.retired == (first.model.content_hash,)
    assert object_store.list_keys(model_prefix("diffusion-fake", first.model.content_hash)) == []
    assert records.version("diffusion-fake", first.model.content_hash) is None
    assert records.ready_model("diffusion-fake").content_hash == replaced.model.content_hash


def test_a_version_is_offered_only_once_every_file_is_up(
    object_store: S3ObjectStore, records: ModelRecords, tmp_path: Path
) -> None:
    folder = fake_model(tmp_path / "models", "diffusion-half", 2048)
    seen: list[Any] = []

    def progress(done: int, total: int) -> None:
        seen.append((done, total, records.ready_model("diffusion-half")))

    publish(folder, object_store, records, progress=progress)

    assert [entry[2] for entry in seen] == [None, None, None]  # before and after each of 2 files
    assert seen[-1][:2] == (2048, 2048)
    assert records.ready_model("diffusion-half") is not None


# -- the cache ----------------------------------------------------------------------------------


def publish_fake(
    store: S3ObjectStore, records: ModelRecords, root: Path, name: str, size: int, seed: int = 0
) -> Any:
    return publish(fake_model(root, name, size, seed=seed), store, records).model


def test_the_cache_evicts_the_least_recently_used_model_it_does_not_hold(
    object_store: S3ObjectStore, records: ModelRecords, tmp_path: Path
) -> None:
    source = tmp_path / "models"
    a, b, c = (
        publish_fake(object_store, records, source, f"diffusion-{n}", 1000, i) for i, n in enumerate("abc")
    )
    cache = ModelCache(tmp_path / "cache", 2500, object_store, records)
    assert cache.ensure(a) and cache.ensure(b)
    past = time.time() - 60
    os.utime(tmp_path / "cache" / ".store" / "diffusion-a.json", (past, past))
    os.utime(tmp_path / "cache" / ".store" / "diffusion-b.json", (past - 60, past - 60))
    assert not cache.ensure(a)  # a use: a is now the most recent

    cache.ensure(c)

    assert cache.cached() == ["diffusion-c", "diffusion-a"]
    assert not (tmp_path / "cache" / "diffusion-b").exists()


def test_a_model_in_use_is_never_evicted(
    object_store: S3ObjectStore, records: ModelRecords, tmp_path: Path
) -> None:
    source = tmp_path / "models"
    a, b = (
        publish_fake(object_store, records, source, f"diffusion-{n}", 1000, i) for i, n in enumerate("ab")
    )
    cache = ModelCache(tmp_path / "cache", 1500, object_store, records)
    empty = tmp_path / "empty"
    empty.mkdir()

    with cache.prepare(empty, [a.name]), pytest.raises(ModelCacheFull, match="in use"):
        cache.ensure(b)

    assert cache.cached() == [a.name]
    with pytest.raises(ModelCacheFull, match="larger than the model cache"):
        ModelCache(tmp_path / "small", 999, object_store, records).ensure(a)


def test_a_corrupted_object_fails_its_check_and_leaves_nothing(
    object_store: S3ObjectStore, records: ModelRecords, tmp_path: Path
) -> None:
    model = publish_fake(object_store, records, tmp_path / "models", "diffusion-bad", 3000)
    unet = next(item for item in model.files if item.path.endswith("model.onnx"))
    object_store.put_bytes(
        model_key(model.name, model.content_hash, unet.path), b"x" * unet.size, "application/octet-stream"
    )
    cache = ModelCache(tmp_path / "cache", 10**6, object_store, records)

    with pytest.raises(ModelCorrupt, match=r"diffusion-bad/unet/model.onnx failed its check"):
        cache.ensure(model)

    assert cache.cached() == []
    assert not (tmp_path / "cache" / "diffusion-bad").exists()
    leftovers = [p for p in (tmp_path / "cache" / ".partial").rglob("*") if p.is_file()]
    assert [p.name for p in leftovers] == ["config.bin"]  # the good file waits for a retry


def test_a_job_whose_pulled_file_fails_its_check_fails_saying_so(
    database_url: str,
    job_store: JobStore,
    object_store: S3ObjectStore,
    records: ModelRecords,
    models: Path,
    tmp_path: Path,
) -> None:
    model = publish(models / DEMO, object_store, records).model
    index = next(item for item in model.files if item.path.endswith("model_index.json"))
    object_store.put_bytes(model_key(DEMO, model.content_hash, index.path), b"{}", "application/json")
    empty = tmp_path / "empty"
    empty.mkdir()
    cache = ModelCache(tmp_path / "cache", 10**9, object_store, records)
    job = job_store.enqueue(make_job(models, steps=STEPS))

    run_worker(database_url, job_store, object_store, empty, max_jobs=1, model_cache=cache)

    row = job_row(job_store_engine(job_store), job.name)
    assert row["state"] == JobState.FAILED.value and row["reason"] == "model_corrupt"
    assert f"{DEMO}/model_index.json failed its check" in row["errors"][-1]["message"]
    assert cache.cached() == [] and not (tmp_path / "cache" / DEMO).exists()


class SlowStore(S3ObjectStore):
    """The real store, counting the objects it opens and slowing each one down."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.opened = 0
        self._count = threading.Lock()

    def get_stream(self, key: str) -> ObjectStream:
        with self._count:
            self.opened += 1
        time.sleep(0.2)
        return super().get_stream(key)


def test_two_concurrent_pulls_of_one_model_download_it_once(
    s3_credentials: S3Credentials, object_store: S3ObjectStore, records: ModelRecords, tmp_path: Path
) -> None:
    model = publish_fake(object_store, records, tmp_path / "models", "diffusion-shared", 5000)
    endpoint, secure = parse_endpoint(s3_credentials.endpoint)
    slow = SlowStore(
        endpoint, s3_credentials.access_key, s3_credentials.secret_key, object_store.bucket, secure=secure
    )
    # Two workers sharing one cache folder, as two GPUs of one machine may.
    caches = [ModelCache(tmp_path / "cache", 10**6, slow, records) for _ in range(2)]
    start = threading.Barrier(2)
    results: list[bool] = []

    def pull(cache: ModelCache) -> None:
        start.wait()
        results.append(cache.ensure(model))

    threads = [threading.Thread(target=pull, args=(cache,)) for cache in caches]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)

    assert sorted(results) == [False, True]
    assert slow.opened == len(model.files)
    assert caches[0].cached() == caches[1].cached() == ["diffusion-shared"]


def test_a_model_withdrawn_while_cached_is_dropped_at_next_use(
    object_store: S3ObjectStore, records: ModelRecords, tmp_path: Path
) -> None:
    model = publish_fake(object_store, records, tmp_path / "models", "diffusion-gone", 1000)
    dropped: list[Path] = []
    cache = ModelCache(tmp_path / "cache", 10**6, object_store, records, on_drop=dropped.append)
    empty = tmp_path / "empty"
    empty.mkdir()
    with cache.prepare(empty, [model.name]) as folder:
        assert folder == cache.root and (folder / model.name / "unet" / "model.onnx").is_file()

    assert withdraw(model.name, object_store, records) == 1
    with (
        pytest.raises(ModelUnavailable, match="neither in the models folder nor in the model store"),
        cache.prepare(empty, [model.name]),
    ):
        pass

    assert cache.cached() == [] and dropped == [cache.root / model.name]
    assert object_store.list_keys("models/") == []


def test_the_local_folder_is_looked_in_first_and_linked_beside_pulled_models(
    object_store: S3ObjectStore, records: ModelRecords, tmp_path: Path
) -> None:
    model = publish_fake(object_store, records, tmp_path / "models", "diffusion-remote", 1000)
    local = tmp_path / "local"
    fake_model(local, "diffusion-local", 100)
    (local / "lora").mkdir()
    (local / "lora" / "style.safetensors").write_bytes(b"lora")
    cache = ModelCache(tmp_path / "cache", 10**6, object_store, records)

    with cache.prepare(local, ["diffusion-local"]) as folder:
        assert folder == local
    with cache.prepare(local, ["diffusion-remote", "diffusion-local"]) as folder:
        assert (folder / "lora" / "style.safetensors").read_bytes() == b"lora"
        assert (folder / "diffusion-local").resolve() == (local / "diffusion-local").resolve()
    assert cache.cached() == [model.name] and cache.downloads == 2


# -- the api ------------------------------------------------------------------------------------


def api(
    job_store: JobStore,
    object_store: S3ObjectStore,
    records: ModelRecords,
    local: Path,
    tmp_path: Path,
    keys: KeyStore | None = None,
) -> falcon.testing.TestClient:
    """The whole api on these parts, with the model store's registry."""
    settings = Config(
        models_path=local,
        bundle_path=tmp_path / "bundle",
        s3_bucket=object_store.bucket,
        admin_token=ADMIN_TOKEN,
        auth="off" if keys is None else "keys",
    )
    app = create_app(
        settings,
        jobs=job_store,
        store=object_store,
        registry=ModelRegistry(local, ()),
        models=records,
        keys=keys,
    )
    return falcon.testing.TestClient(app)


def test_settings_list_published_models_beside_the_folder_and_jobs_may_name_them(
    job_store: JobStore, object_store: S3ObjectStore, records: ModelRecords, models: Path, tmp_path: Path
) -> None:
    local = tmp_path / "local"
    local.mkdir()
    (local / "upscaling-local.onnx").write_bytes(b"")
    publish(models / DEMO, object_store, records)
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "upscaling-remote.onnx").write_bytes(b"weights")
    publish(tmp_path / "src" / "upscaling-remote.onnx", object_store, records)
    client = api(job_store, object_store, records, local, tmp_path)

    listed = client.simulate_get("/api/settings/models").json

    assert listed["diffusion"] == [DEMO]
    assert listed["upscaling"] == ["upscaling-local", "upscaling-remote"]
    submitted = client.simulate_post(
        "/api/txt2img",
        params={"prompt": "a fox", "model": DEMO, "steps": "3", "width": "128", "height": "128"},
    )
    assert submitted.status_code == 200, submitted.text
    (row,) = job_store.get_many([submitted.json["name"]]).values()
    assert row.model == DEMO


def test_worker_status_lists_cached_models_and_needs_an_admin_key(
    job_store: JobStore,
    object_store: S3ObjectStore,
    records: ModelRecords,
    engine: sqlalchemy.Engine,
    tmp_path: Path,
) -> None:
    local = tmp_path / "local"
    local.mkdir()
    job_store.announce_worker(
        "w1", platform="cpu", providers=["CPUExecutionProvider"], models=[], version="v", jobs_done=0
    )
    records.record_worker_cache("w1", ["diffusion-a", "diffusion-b"])
    keys = KeyStore(engine)
    _, user = keys.create("someone")
    _, admin = keys.create("root", admin=True)
    client = api(job_store, object_store, records, local, tmp_path, keys)

    assert client.simulate_get("/api/worker/status").status_code == 401
    assert (
        client.simulate_get("/api/worker/status", headers={"Authorization": f"Bearer {user}"}).status_code
        == 403
    )
    answer = client.simulate_get("/api/worker/status", headers={"Authorization": f"Bearer {admin}"})

    assert answer.status_code == 200
    (detail,) = answer.json["details"]
    assert detail["cached_models"] == ["diffusion-a", "diffusion-b"]
    assert detail["job"] is None and 0 <= detail["heartbeat_age_s"] < 5
    assert json.dumps(answer.json)  # plain JSON throughout


def test_an_onnx_web_worker_process_with_an_empty_models_folder_runs_a_published_model(
    database_url: str,
    job_store: JobStore,
    object_store: S3ObjectStore,
    records: ModelRecords,
    s3_credentials: S3Credentials,
    models: Path,
    tmp_path: Path,
) -> None:
    publish(models / DEMO, object_store, records)
    empty = tmp_path / "empty"
    empty.mkdir()
    workers = Workers(
        database_url=database_url,
        s3=s3_credentials,
        bucket=object_store.bucket,
        models=empty,
        log_dir=tmp_path,
    )
    job = job_store.enqueue(make_job(models, steps=STEPS))
    try:
        worker = workers.start(
            "fresh", ONNX_WEB_MODEL_CACHE=str(tmp_path / "cache"), ONNX_WEB_MODEL_CACHE_BYTES="1G"
        )
        summary = worker.wait_for_log(action="job_summary", job=job.name)
        assert summary["outcome"] == "success", worker.tail()
        assert "pull_models" in summary["phases_ms"]
        pulled = worker.wait_for_log(action="model_pull", model=DEMO)
        assert pulled["bytes"] == records.ready_model(DEMO).size_bytes
        # The next announcement lists the pulled model as cached.
        (status,) = wait_until(
            lambda: [found for found in records.worker_status(60) if found.cached_models == (DEMO,)],
            timeout_s=30,
            what="the cached model announced",
        )
        assert status.id == "fresh"
    finally:
        workers.kill_all()


def test_the_models_command_publishes_once_and_convert_publishes_what_it_made(
    database_url: str,
    object_store: S3ObjectStore,
    records: ModelRecords,
    s3_credentials: S3Credentials,
    models: Path,
    tmp_path: Path,
) -> None:
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("ONNX_WEB_", "S3_"))},
        "DATABASE_URL": database_url,
        "S3_ENDPOINT": s3_credentials.endpoint,
        "S3_ACCESS_KEY": s3_credentials.access_key,
        "S3_SECRET_KEY": s3_credentials.secret_key,
        "S3_BUCKET": object_store.bucket,
    }
    folder = fake_model(tmp_path / "models", "diffusion-cli", 2000)

    def onnx_web(*args: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "service.cli", *args]
        return subprocess.run(command, env=env, capture_output=True, text=True, timeout=300, check=False)

    first, second = onnx_web("models", "publish", str(folder)), onnx_web("models", "publish", str(folder))
    converted = onnx_web(
        "convert",
        "diffusers",
        str(torch_source_path(models, DEMO)),
        "cli-demo",
        "--models",
        str(tmp_path),
        "--publish",
    )

    assert first.returncode == 0 and first.stdout.startswith("published diffusion-cli "), first.stderr
    assert second.stdout.startswith("already published diffusion-cli "), second.stderr
    assert "publish diffusion-cli" in first.stderr  # the progress bar
    assert converted.returncode == 0, converted.stderr
    assert converted.stdout.splitlines()[-1].startswith("published cli-demo ")
    assert {model.name for model in records.ready()} == {"diffusion-cli", "cli-demo"}
    assert "cli-demo" in onnx_web("models", "list").stdout
    (tmp_path / "mystery").mkdir()
    (tmp_path / "mystery" / "weights.bin").write_bytes(b"?")
    refused = onnx_web("models", "publish", str(tmp_path / "mystery"))
    assert refused.returncode == 2 and "cannot tell the kind of model 'mystery'" in refused.stderr


def test_a_pull_stopped_midway_leaves_no_partial_file_and_the_next_one_finishes_it(
    object_store: S3ObjectStore, records: ModelRecords, tmp_path: Path
) -> None:
    # 200 KB: the unet file arrives in several chunks, so the stop lands inside it.
    model = publish_fake(object_store, records, tmp_path / "models", "diffusion-stop", 200_000)
    cache = ModelCache(tmp_path / "cache", 10**6, object_store, records)

    def stop_inside_the_unet(name: str, done: int, total: int) -> None:
        if 16 < done < total:
            raise RuntimeError("cancelled")

    with pytest.raises(RuntimeError, match="cancelled"):
        cache.ensure(model, stop_inside_the_unet)

    partial = tmp_path / "cache" / ".partial"
    assert [p.name for p in partial.rglob("*") if p.is_file()] == ["config.bin"]  # kept; no .tmp left
    assert cache.cached() == []
    assert cache.ensure(model) and cache.downloads == 2  # config.bin was not fetched again
    assert not list(partial.iterdir())
