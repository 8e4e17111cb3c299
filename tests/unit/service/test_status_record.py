"""The status record of a failed or retrying job: what onnx-web's GUI can render, and ours shows."""

from __future__ import annotations

import dataclasses
import uuid
from datetime import UTC, datetime, timedelta

import pytest

from service.jobs.states import JobState
from service.jobs.store import JobView
from service.resources.jobs import FAILURE_MESSAGES, render_job


def failed(reason: str | None) -> JobView:
    return JobView(
        id=uuid.uuid4(),
        name="txt2img_1_abc_0",
        kind="txt2img",
        state=JobState.FAILED,
        queue_position=None,
        queue_total=0,
        steps=(3, 25),
        stages=(0, 1),
        tiles=(0, 1),
        outputs=None,
        thumbnails=None,
        metadata=None,
        output_keys=None,
        reason=reason,
        cancel_requested=False,
        attempt=3,
        max_attempts=3,
        model="stable-diffusion-onnx-v1-5",
        created_at=datetime.now(UTC),
        started_at=datetime.now(UTC),
        finished_at=datetime.now(UTC),
    )


def test_a_failure_without_a_specific_reason_has_no_reason_key_but_says_what_happened() -> None:
    # onnx-web's GUI translates `reason` as a key, and "error" is a group of keys there.
    record = render_job("txt2img_1_abc_0", failed("error"))
    assert "reason" not in record
    assert record["status"] == "failed" and record["error"] == FAILURE_MESSAGES["error"]


@pytest.mark.parametrize("reason", ["oom", "cancelled", "storage", "source_s3_refused"])
def test_a_specific_reason_is_sent_with_its_message(reason: str) -> None:
    record = render_job("txt2img_1_abc_0", failed(reason))
    assert record["reason"] == reason
    assert record["error"] == FAILURE_MESSAGES.get(reason, FAILURE_MESSAGES["error"])


def test_a_job_waiting_to_run_again_says_which_attempt_and_not_before_when() -> None:
    after = datetime(2026, 12, 7, 12, 0, 5, tzinfo=UTC)
    waiting = dataclasses.replace(
        failed(None), state=JobState.PENDING, attempt=1, queue_position=2, queue_total=4, retry_at=after
    )
    record = render_job(waiting.name, waiting)
    assert record["status"] == "pending" and record["queue"] == {"current": 2, "total": 4}
    assert record["retry"] == {"attempt": 2, "maxAttempts": 3, "after": "2026-12-07T12:00:05+00:00"}
    assert "error" not in record and "reason" not in record


def test_a_job_waiting_to_run_again_says_why_its_last_attempt_ended() -> None:
    waiting = dataclasses.replace(
        failed(None), state=JobState.PENDING, attempt=1, queue_position=0, queue_total=1, last_error="storage"
    )
    assert render_job(waiting.name, waiting)["retry"] == {"attempt": 2, "maxAttempts": 3, "reason": "storage"}


def test_a_first_attempt_or_a_handed_back_job_is_no_retry() -> None:
    fresh = dataclasses.replace(
        failed(None), state=JobState.PENDING, attempt=0, retry_at=None, finished_at=None
    )
    assert "retry" not in render_job(fresh.name, fresh)
    running = dataclasses.replace(
        failed(None), state=JobState.RUNNING, attempt=2, retry_at=datetime.now(UTC) - timedelta(seconds=1)
    )
    assert "retry" not in render_job(running.name, running)
