"""A submission whose database failed around its commit keeps what the committed row may need."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import urllib3

from service.storage import ObjectStore
from tests.integration.api import DatabaseLost, api_client, make_models, png

pytestmark = pytest.mark.integration


def test_a_submission_whose_commit_reply_was_lost_keeps_its_uploads_for_the_job_its_retry_gets(
    engine: Any, object_store: ObjectStore, tmp_path: Path
) -> None:
    jobs = DatabaseLost(engine, lease_s=30.0, affinity_window_s=0.0)
    jobs.fail_next = "after_commit"
    client = api_client(jobs, object_store, make_models(tmp_path / "models"), tmp_path)
    body, content_type = urllib3.encode_multipart_formdata(
        {"source": ("s.png", png((120, 30, 200), 64), "image/png")}
    )
    headers = {"Content-Type": content_type, "Idempotency-Key": "lost-reply"}

    first = client.simulate_post("/api/img2img", params={"prompt": "a cat"}, body=body, headers=headers)
    again = client.simulate_post("/api/img2img", params={"prompt": "a cat"}, body=body, headers=headers)

    assert jobs.fail_next is None and first.status_code == 503, first.text
    assert again.status_code == 200, again.text
    with engine.connect() as conn:
        inputs = conn.exec_driver_sql(
            "SELECT inputs FROM jobs WHERE name = %(name)s", {"name": again.json["name"]}
        ).scalar_one()
    assert inputs, "the job has no inputs recorded"
    missing = [key for key in inputs.values() if not object_store.exists(key)]
    assert missing == [], f"the committed job's uploads were deleted: {json.dumps(missing)}"
