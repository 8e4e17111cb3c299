"""Cross-job batching on a real Postgres with the tiny demo model: what is claimed together, and
that nothing about a job's result depends on what it was batched with.

Workers run in process (``Worker.run(max_jobs=...)``) on an in-memory object store; a ``JobStore``
subclass sees every progress write, so a test can act at an exact step of one job (cancel it,
take its lease away) without sleeping.
"""

from __future__ import annotations

import functools
import io
import logging
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any
from uuid import UUID

import numpy as np
import pytest
import sqlalchemy
from PIL import Image

from pipelines.models.convert import convert_diffusers_folder
from pipelines.models.demo import (
    DEMO_MODELS,
    DEMO_SDXL,
    torch_source_path,
    write_demo_checkpoint,
    write_demo_sdxl_checkpoint,
)
from pipelines.models.sessions import SessionCache
from service.jobs.states import JobState
from service.jobs.store import ClaimedJob, CounterPair, Heartbeat, JobStore, NewJob
from service.storage import MemoryObjectStore
from tests.fixtures.postgres import TEST_AFFINITY_WINDOW_S, TEST_LEASE_S, job_row, shift_time
from tests.integration.workers import cpu_sessions, make_job, run_worker_in_process

pytestmark = pytest.mark.integration

#: Pixel levels a job may differ by batched or alone: a larger UNet batch may round its matrix
#: products differently (``tests/unit/pipelines/test_gpu_batch.py``).
TOLERANCE = 1
STEPS = 4
BATCH = 4
CPU: dict[str, Any] = {"platform": "cpu", "held_models": ()}
#: Long enough for anything a test waits on in process.
WAIT_S = 30.0

#: Called with ``(store, job id, steps written)`` on every progress write, before it is made.
ProgressHook = Callable[["HookedStore", UUID, int], None]


class HookedStore(JobStore):
    """The queue, recording every progress write and letting a test act at an exact step."""

    def __init__(self, engine: sqlalchemy.Engine, hook: ProgressHook | None = None) -> None:
        super().__init__(engine, lease_s=TEST_LEASE_S, affinity_window_s=TEST_AFFINITY_WINDOW_S)
        self.hook = hook
        self.writes: dict[UUID, list[tuple[int, int]]] = {}
        #: One release per heartbeat that carried a cancel request, by job.
        self.cancel_seen: dict[UUID, threading.Semaphore] = {}

    def progress(
        self,
        job_id: UUID,
        worker_id: str,
        attempt: int,
        steps: CounterPair,
        stages: CounterPair,
        tiles: CounterPair,
    ) -> Heartbeat:
        if self.hook is not None:
            self.hook(self, job_id, steps[0])
        self.writes.setdefault(job_id, []).append((attempt, steps[0]))
        return super().progress(job_id, worker_id, attempt, steps, stages, tiles)

    def heartbeat(self, job_id: UUID, worker_id: str, attempt: int) -> Any:
        beat = super().heartbeat(job_id, worker_id, attempt)
        if beat.cancel_requested:
            self.cancel_seen.setdefault(job_id, threading.Semaphore(0)).release()
        return beat

    def wait_for_cancel_seen(self, job_id: UUID) -> None:
        """Return once the lease thread has surely flagged the job cancelled.

        A second heartbeat with the request starts only after the lease thread acted on the first.
        """
        seen = self.cancel_seen.setdefault(job_id, threading.Semaphore(0))
        assert seen.acquire(timeout=WAIT_S) and seen.acquire(timeout=WAIT_S)


@pytest.fixture(scope="module")
def models() -> Iterator[Path]:
    """Only the txt2img demo model (the others would double the module's time)."""
    folder = Path(tempfile.mkdtemp(prefix="onnx-web-test-batch-"))
    name = DEMO_MODELS[0].name
    try:
        write_demo_checkpoint(torch_source_path(folder, name))
        convert_diffusers_folder(torch_source_path(folder, name), folder / name)
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="module")
def sessions() -> SessionCache:
    """One session cache for every worker of the module, as one process keeps one."""
    return cpu_sessions()


def plain_job(
    models: Path,
    seed: int,
    *,
    prompt: str = "a red fox in the snow",
    size: int = 64,
    steps: int = STEPS,
    platform: str | None = None,
    **params: Any,
) -> NewJob:
    """A txt2img job as the api builds it, with ``params`` changed in its source-txt2img stage."""
    job = make_job(models, steps=steps, size=size, seed=seed, platform=platform, prompt=prompt)
    job.chain["stages"][0]["params"].update(params)
    return replace(job, model=params.get("model", job.model))


#: The module's in-process workers, both on the module's ``sessions``: one claims up to ``BATCH``
#: jobs at once, the other runs each job alone.
run_batched = functools.partial(run_worker_in_process, worker_id=f"batch-{BATCH}", batch_max=BATCH)
run_alone = functools.partial(run_worker_in_process, worker_id="batch-1", batch_max=1)


def pixels(store: MemoryObjectStore, row: dict[str, Any]) -> np.ndarray:
    """The job's one output image as int16 pixels."""
    (name,) = row["outputs"]
    return np.asarray(Image.open(io.BytesIO(store.get_bytes(row["output_keys"][name]))), dtype=np.int16)


def four_jobs(models: Path) -> list[NewJob]:
    """Four compatible jobs that differ in all a batch must keep apart: seed, prompt, guidance."""
    return [
        plain_job(models, 1, prompt="a red house", cfg=4.0),
        plain_job(models, 42),
        plain_job(models, 7, prompt="a dog", negative_prompt="blurry", cfg=9.0),
        plain_job(models, 42, prompt="a cat", cfg=1.0),
    ]


# -- (a) the claim -------------------------------------------------------------------------------


def test_the_claim_takes_the_head_job_and_only_compatible_mates(
    job_store: JobStore, engine: sqlalchemy.Engine, models: Path
) -> None:
    head = job_store.enqueue(plain_job(models, 1))
    nonplain = plain_job(models, 2)
    nonplain.chain["stages"].insert(
        1,
        {
            "name": "resize",
            "type": "upscale-simple",
            "tiles": 512,
            "outscale": 1,
            "params": {"method": "lanczos", "scale": 2},
        },
    )
    left_pending = [
        job_store.enqueue(job).name
        for job in (
            plain_job(models, 3, size=128),
            plain_job(models, 4, scheduler="ddim"),
            plain_job(models, 5, steps=STEPS + 1),
            plain_job(models, 6, model="another-model"),
            plain_job(models, 7, platform="cuda"),
            nonplain,
            plain_job(models, 8, batch=2),
            plain_job(models, 9, tiled_vae=True),
            plain_job(models, 10, pipeline="txt2img-sdxl"),
        )
    ]
    compatible = [
        job_store.enqueue(plain_job(models, seed, platform="cpu")).name for seed in (11, 12, 13, 14)
    ]

    claimed = job_store.claim_batch("w1", **CPU, batch_max=BATCH)

    assert [job.name for job in claimed] == [head.name, *compatible[:3]]
    assert {(job.attempt, len(job.chain["stages"])) for job in claimed} == {(1, 2)}
    rows = [job_row(engine, job.name) for job in claimed]
    assert {(row["state"], row["worker_id"]) for row in rows} == {(JobState.RUNNING, "w1")}
    assert all(row["lease_expires_at"] is not None for row in rows)
    # Claimed in one statement: one transaction, one now().
    assert len({row["started_at"] for row in rows}) == 1
    for name in [*left_pending, compatible[3]]:
        assert job_row(engine, name)["state"] == JobState.PENDING, name


@pytest.mark.parametrize(
    "change",
    [
        {"batch": 2},
        {"tiled_vae": True},
        {"upscale": True},
        # A LoRA is blended into the UNet the batch would share (migration 0009).
        {"prompt": "a cat <lora:details:0.5>"},
        {"negative_prompt": "blurry <lora:details:-1>"},
    ],
    ids=["own-batch", "tiled-vae", "not-plain", "lora", "negative-lora"],
)
def test_a_job_that_cannot_share_a_batch_is_claimed_alone(
    job_store: JobStore, models: Path, change: dict[str, Any]
) -> None:
    head = plain_job(models, 1, **{k: v for k, v in change.items() if k != "upscale"})
    if change.get("upscale"):
        head.chain["stages"].insert(
            1,
            {
                "name": "resize",
                "type": "upscale-simple",
                "tiles": 512,
                "outscale": 1,
                "params": {"method": "lanczos", "scale": 2},
            },
        )
    job_store.enqueue(head)
    waiting = [job_store.enqueue(plain_job(models, seed)).name for seed in (2, 3)]

    assert [job.name for job in job_store.claim_batch("w1", **CPU, batch_max=BATCH)] == [head.name]
    assert [job.name for job in job_store.claim_batch("w2", **CPU, batch_max=BATCH)] == waiting


def test_txt2img_sdxl_jobs_share_a_batch_only_with_each_other(job_store: JobStore, models: Path) -> None:
    """Migration 0013: a job naming the ``txt2img-sdxl`` pipeline has a key of its own kind."""
    head = job_store.enqueue(plain_job(models, 1, pipeline="txt2img-sdxl")).name
    plain = job_store.enqueue(plain_job(models, 2)).name
    mates = [job_store.enqueue(plain_job(models, seed, pipeline="txt2img-sdxl")).name for seed in (3, 4)]

    assert [job.name for job in job_store.claim_batch("w1", **CPU, batch_max=BATCH)] == [head, *mates]
    assert [job.name for job in job_store.claim_batch("w2", **CPU, batch_max=BATCH)] == [plain]


def test_concurrent_batch_claims_take_every_job_exactly_once(job_store: JobStore, models: Path) -> None:
    names = {job_store.enqueue(plain_job(models, seed)).name for seed in range(24)}
    taken: list[ClaimedJob] = []
    lock = threading.Lock()

    def claimer(worker: str) -> None:
        while batch := job_store.claim_batch(worker, **CPU, batch_max=BATCH):
            assert len(batch) <= BATCH
            with lock:
                taken.extend(batch)

    threads = [threading.Thread(target=claimer, args=(f"w{index}",)) for index in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(WAIT_S)
    assert sorted(job.name for job in taken) == sorted(names)
    assert {job.attempt for job in taken} == {1}


# -- (b), (c) batched or alone --------------------------------------------------------------------


def test_batched_jobs_get_the_pixels_progress_and_outputs_they_get_alone(
    database_url: str,
    engine: sqlalchemy.Engine,
    models: Path,
    sessions: SessionCache,
    caplog: pytest.LogCaptureFixture,
) -> None:
    store = MemoryObjectStore()
    batched_store, alone_store = HookedStore(engine), HookedStore(engine)
    batched = [batched_store.enqueue(job) for job in four_jobs(models)]
    with caplog.at_level(logging.INFO, logger="service.jobrun"):
        run_batched(database_url, batched_store, store, models, max_jobs=BATCH, sessions=sessions)
    alone = [alone_store.enqueue(job) for job in four_jobs(models)]
    run_alone(database_url, alone_store, store, models, max_jobs=BATCH, sessions=sessions)

    summaries = [record for record in caplog.records if getattr(record, "action", None) == "job_summary"]
    assert [getattr(record, "batch", None) for record in summaries] == [BATCH] * BATCH
    images = []
    for together, single in zip(batched, alone, strict=True):
        row, reference = job_row(engine, together.name), job_row(engine, single.name)
        assert row["state"] == reference["state"] == JobState.SUCCESS
        assert np.abs(pixels(store, row) - pixels(store, reference)).max() <= TOLERANCE
        images.append(pixels(store, row))
        # Its own outputs, under its own attempt, with the metadata a lone run records.
        assert row["outputs"] == [f"{together.name}_0.png"]
        assert all(key.startswith(f"outputs/{together.name}/1/") for key in row["output_keys"].values())
        assert len(row["output_keys"]) == 3  # image, sidecar, thumbnail
        assert [{**m, "outputs": None} for m in row["metadata"]] == [
            {**m, "outputs": None} for m in reference["metadata"]
        ]
        # Its own progress: every step of its own, written for its own attempt, ending as alone.
        counters = (
            "steps_current",
            "steps_total",
            "stages_current",
            "stages_total",
            "tiles_current",
            "tiles_total",
        )
        assert (
            [row[c] for c in counters]
            == [reference[c] for c in counters]
            == [STEPS + 1, STEPS + 1, 2, 2, 0, 0]
        )
        # One write per step, then the final counters as generation ends (the save stage's step).
        assert [steps for _, steps in batched_store.writes[together.id]] == list(range(1, STEPS + 2))
        assert {attempt for attempt, _ in batched_store.writes[together.id]} == {1}
    # The jobs really differ: a batch that mixed them up could not match the lone runs.
    assert min(np.abs(images[0] - other).max() for other in images[1:]) > 10
    assert len({job_row(engine, job.name)["started_at"] for job in batched}) == 1


# -- (d), (e) one job stopped inside a batch ----------------------------------------------------


def test_cancelling_one_batched_job_ends_only_it(
    database_url: str, engine: sqlalchemy.Engine, models: Path, sessions: SessionCache
) -> None:
    jobs = four_jobs(models)
    victim = jobs[1]

    def cancel_at_step_two(store: HookedStore, job_id: UUID, steps: int) -> None:
        if job_id == victim.id and steps == 2:
            assert store.cancel(victim.name) == JobState.RUNNING
            # The lease thread passes the request on; wait for it rather than for a clock.
            store.wait_for_cancel_seen(job_id)

    queue = HookedStore(engine, cancel_at_step_two)
    for job in jobs:
        queue.enqueue(job)
    store = MemoryObjectStore()
    run_batched(database_url, queue, store, models, max_jobs=BATCH, sessions=sessions)

    cancelled = job_row(engine, victim.name)
    assert (cancelled["state"], cancelled["reason"], cancelled["outputs"]) == (
        JobState.CANCELLED,
        "cancelled",
        None,
    )
    assert [steps for _, steps in queue.writes[victim.id]] == [1, 2]
    assert store.delete_prefix(f"outputs/{victim.name}/") == 0
    for job in jobs:
        if job is not victim:
            row = job_row(engine, job.name)
            assert (row["state"], row["steps_current"]) == (JobState.SUCCESS, STEPS + 1), job.name


def test_a_stale_attempt_of_one_batched_job_is_fenced_alone(
    database_url: str, engine: sqlalchemy.Engine, models: Path, sessions: SessionCache
) -> None:
    jobs = four_jobs(models)
    victim = jobs[2]

    def rescue_and_reclaim(store: HookedStore, job_id: UUID, steps: int) -> None:
        # As if this worker hung past its lease: rescued, then claimed by another worker.
        if job_id == victim.id and steps == 2:
            # The worker's 50 ms heartbeat may renew the lease between the shift and the rescue:
            # shift again until a rescue finds it expired (a renewal cannot win every time).
            for _ in range(50):
                shift_time(engine, victim.name, column="lease_expires_at", seconds=TEST_LEASE_S + 1)
                rescued = [job.name for job in store.rescue_expired()]
                if rescued:
                    break
            assert rescued == [victim.name]
            reclaimed = store.claim("other", **CPU)
            assert reclaimed is not None and (reclaimed.name, reclaimed.attempt) == (victim.name, 2)

    queue = HookedStore(engine, rescue_and_reclaim)
    for job in jobs:
        queue.enqueue(job)
    store = MemoryObjectStore()
    run_batched(database_url, queue, store, models, max_jobs=BATCH, sessions=sessions)

    fenced = job_row(engine, victim.name)
    assert (fenced["state"], fenced["worker_id"], fenced["attempt"]) == (JobState.RUNNING, "other", 2)
    assert fenced["outputs"] is None and store.delete_prefix(f"outputs/{victim.name}/") == 0
    # Its refused write was its last: the stale attempt stopped at the next check.
    assert queue.writes[victim.id] == [(1, 1), (1, 2)]
    for job in jobs:
        if job is not victim:
            assert job_row(engine, job.name)["state"] == JobState.SUCCESS, job.name


def test_an_error_that_stops_the_whole_batch_ends_each_job_as_alone(
    database_url: str, engine: sqlalchemy.Engine, models: Path, sessions: SessionCache
) -> None:
    queue = HookedStore(engine)
    jobs = [queue.enqueue(plain_job(models, seed, model="missing-model")) for seed in (1, 2, 3)]
    run_batched(database_url, queue, MemoryObjectStore(), models, max_jobs=len(jobs), sessions=sessions)

    for job in jobs:
        row = job_row(engine, job.name)
        # A missing model is final: failed at once, as a lone job with it fails.
        assert (row["state"], row["reason"], row["attempt"]) == (JobState.FAILED, "error", 1), job.name
        assert "missing-model" in row["errors"][0]["message"]


def test_txt2img_sdxl_jobs_on_a_model_that_is_not_sdxl_run_alone(
    database_url: str, engine: sqlalchemy.Engine, models: Path, sessions: SessionCache
) -> None:
    """Such jobs share a batch key (the api refuses them, but a model can change under a queued
    job), and the batched loop would run them as SD: the first runs alone, the mates go back."""
    queue = HookedStore(engine)
    first, second = (queue.enqueue(plain_job(models, seed, pipeline="txt2img-sdxl")) for seed in (1, 2))
    run_batched(database_url, queue, MemoryObjectStore(), models, max_jobs=1, sessions=sessions)

    row = job_row(engine, first.name)
    # The lone path's SDXL run, which finds no second tokenizer in an SD folder.
    assert row["attempt"] == 1 and "tokenizer_2" in row["errors"][0]["message"]
    handed_back = job_row(engine, second.name)
    assert (handed_back["state"], handed_back["attempt"]) == (JobState.PENDING, 0)


@pytest.mark.parametrize("pipeline", ["txt2img", "txt2img-sdxl"])
def test_sdxl_jobs_are_batched_and_each_gets_the_pixels_it_gets_alone(
    database_url: str,
    engine: sqlalchemy.Engine,
    sessions: SessionCache,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    pipeline: str,
) -> None:
    """The queue cannot tell an SDXL folder from its name (``txt2img``), or is told by the pipeline
    (``txt2img-sdxl``, migration 0013): the batched loop reads the folder and feeds each job's own
    pooled text and size conditioning."""
    folder = tmp_path / "models"
    write_demo_sdxl_checkpoint(torch_source_path(folder, DEMO_SDXL))
    convert_diffusers_folder(torch_source_path(folder, DEMO_SDXL), folder / DEMO_SDXL)

    def sdxl_jobs() -> list[NewJob]:
        jobs = []
        for seed, prompt, params in [
            (1, "a red house", {"cfg": 4.0}),
            (7, "a red fox", {"negative_prompt": "blurry", "cfg": 9.0}),
            (42, "a cat", {"cfg": 1.0}),
        ]:
            job = make_job(folder, steps=STEPS, seed=seed, prompt=prompt, model=DEMO_SDXL)
            job.chain["stages"][0]["params"].update(params, pipeline=pipeline)
            jobs.append(job)
        return jobs

    store = MemoryObjectStore()
    batched_store, alone_store = HookedStore(engine), HookedStore(engine)
    batched = [batched_store.enqueue(job) for job in sdxl_jobs()]
    with caplog.at_level(logging.INFO, logger="service.jobrun"):
        run_batched(database_url, batched_store, store, folder, max_jobs=len(batched), sessions=sessions)
    alone = [alone_store.enqueue(job) for job in sdxl_jobs()]
    run_alone(database_url, alone_store, store, folder, max_jobs=len(alone), sessions=sessions)

    summaries = [record for record in caplog.records if getattr(record, "action", None) == "job_summary"]
    assert [getattr(record, "batch", None) for record in summaries] == [len(batched)] * len(batched)
    for together, single in zip(batched, alone, strict=True):
        row, reference = job_row(engine, together.name), job_row(engine, single.name)
        assert row["state"] == reference["state"] == JobState.SUCCESS
        assert np.abs(pixels(store, row) - pixels(store, reference)).max() <= TOLERANCE
