"""The status record of a failed job: what onnx-web's GUI can render."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

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
