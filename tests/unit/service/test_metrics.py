"""``service.metrics``: phase labels from a job's timings, bounded model labels, and the samples
of several processes summed through a shared folder (how the local stack's api shows its workers).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from service import metrics

REPO_ROOT = Path(__file__).resolve().parents[3]


def count(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_job_timings_become_phases_by_stage_type_and_unknown_names_are_dropped() -> None:
    phase = "onnx_web_job_phase_duration_seconds_count"
    labels = {"stage": {"phase": "upscale-outpaint", "model": "unit-model"}}
    labels["store"] = {"phase": "store_outputs", "model": "unit-model"}
    labels["inputs"] = {"phase": "load_inputs", "model": "unit-model"}
    labels["stray"] = {"phase": "my-stage-name", "model": "unit-model"}
    before = {key: count(phase, **value) for key, value in labels.items()}

    metrics.job_ended(
        kind="img2img",
        model="unit-model",
        outcome="failed",
        reason="storage",
        seconds=1.5,
        timings_ms={"my-stage-name": 1200, "upload": 200, "load_inputs": 100, "not-a-stage": 5},
        stage_types={"my-stage-name": "upscale-outpaint"},
    )

    added = {key: count(phase, **value) - before[key] for key, value in labels.items()}
    assert added == {"stage": 1, "store": 1, "inputs": 1, "stray": 0}
    assert count("onnx_web_job_attempts_ended_total", outcome="failed", reason="storage") >= 1


def test_a_model_is_labelled_by_its_name_in_the_models_folder_and_outsiders_share_one_label(
    tmp_path: Path,
) -> None:
    folder = tmp_path / "models"
    metric = "onnx_web_model_load_seconds_count"
    before = count(metric, model="upscaling-x4"), count(metric, model="other")

    metrics.model_loaded(folder, folder / "upscaling-x4.onnx", 0.2)
    metrics.model_loaded(folder, tmp_path / "elsewhere" / "model.onnx", 0.2)

    assert (count(metric, model="upscaling-x4"), count(metric, model="other")) == (
        before[0] + 1,
        before[1] + 1,
    )


def test_samples_of_several_processes_are_summed_through_the_shared_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = metrics.fresh_multiproc_dir(tmp_path / "samples")
    (folder / "counter_99999.db").write_bytes(b"left over from an earlier run")
    folder = metrics.fresh_multiproc_dir(folder)
    assert not list(folder.iterdir())
    record = (
        "from service import metrics; "
        "metrics.job_ended(kind='txt2img', model='m', outcome='success', reason=None, seconds=2.0, "
        "timings_ms={}, stage_types={})"
    )
    for _ in range(2):  # two worker processes, each its own file
        subprocess.run(
            [sys.executable, "-c", record],
            check=True,
            cwd=REPO_ROOT,
            env={"PATH": "/usr/bin:/bin", metrics.MULTIPROC_ENV: str(folder)},
        )
    monkeypatch.setenv(metrics.MULTIPROC_ENV, str(folder))

    body, content_type = metrics.exposition()

    assert content_type.startswith("text/plain")
    samples = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(body.decode())
        for sample in family.samples
    }
    assert samples[("onnx_web_job_attempts_ended_total", (("outcome", "success"), ("reason", "")))] == 2
    duration = (
        "onnx_web_job_duration_seconds_sum",
        (("kind", "txt2img"), ("model", "m"), ("outcome", "success")),
    )
    assert samples[duration] == 4.0
