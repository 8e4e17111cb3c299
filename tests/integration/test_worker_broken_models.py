"""A model file ONNX Runtime cannot load fails its job at once: every retry would read the same bytes.

An in-process worker (``workers.run_worker_in_process``) against a real Postgres runs a txt2img job
on a copy of the demo SDXL model whose ``unet/model.onnx`` is random bytes. spec/reliability.md P6:
an error a retry cannot fix ends the job on its first attempt, with its own reason.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import sqlalchemy

from pipelines.models.demo import DEMO_SDXL
from service.jobs.states import JobState
from service.jobs.store import JobStore
from service.storage import MemoryObjectStore
from tests.integration.workers import job_row, make_job, run_worker_in_process

pytestmark = [pytest.mark.integration]


@pytest.fixture
def broken_models(models: Path, tmp_path: Path) -> Path:
    """A models folder whose only model is the demo SDXL with a UNet file of random bytes."""
    folder = tmp_path / "models"
    shutil.copytree(models / DEMO_SDXL, folder / DEMO_SDXL)
    unet = folder / DEMO_SDXL / "unet" / "model.onnx"
    unet.write_bytes(np.random.default_rng(0).bytes(unet.stat().st_size))
    return folder


def run_broken_job(
    database_url: str, engine: sqlalchemy.Engine, job_store: JobStore, models: Path
) -> dict[str, Any]:
    """Enqueue a two-step SDXL job on ``models``, let one worker claim once, and return its row."""
    job = make_job(models, steps=2, model=DEMO_SDXL)
    job_store.enqueue(job)
    run_worker_in_process(
        database_url, job_store, MemoryObjectStore(), models, worker_id="broken-model", max_jobs=1
    )
    return job_row(engine, job.name)


def test_a_model_onnx_runtime_cannot_load_fails_the_job_on_its_first_attempt(
    database_url: str,
    engine: sqlalchemy.Engine,
    job_store: JobStore,
    broken_models: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.INFO, logger="service.jobrun"):
        row = run_broken_job(database_url, engine, job_store, broken_models)

    assert (row["state"], row["attempt"], row["max_attempts"]) == (JobState.FAILED, 1, 3), row
    [error] = row["errors"]
    assert error["message"].startswith("ModelInvalid: stage 'txt2img' cannot load its model: "), error
    assert "unet" in error["message"] and "INVALID_PROTOBUF" in error["message"]
    [failed] = [record for record in caplog.records if getattr(record, "action", None) == "fail"]
    assert failed.retryable is False  # type: ignore[attr-defined]


def test_a_model_onnx_runtime_cannot_load_is_the_reason_model_invalid(
    database_url: str, engine: sqlalchemy.Engine, job_store: JobStore, broken_models: Path
) -> None:
    row = run_broken_job(database_url, engine, job_store, broken_models)
    assert row["reason"] == "model_invalid", row
    assert [error["reason"] for error in row["errors"]] == ["model_invalid"]
