"""What real worker processes get out of this machine: output overlap, scale-out, model affinity.

Usage: ``python -m bench.worker --out bench-results/worker.json`` (``make bench-worker``, and a
section of ``make bench``). A local stack (``bench.local.running_stack``: embedded Postgres,
SeaweedFS, the api, the demo models) runs with no worker of its own; the benchmark starts
``onnx-web worker`` processes itself, each configured through its environment as in production,
and submits demo txt2img jobs through the api, all at once, so that no worker ever waits for one.

1. **Output overlap**: images/s of one worker with ``ONNX_WEB_UPLOAD_DEPTH=0`` (each job's PNG
   encoding, uploads and commit before the next claim) and ``1`` (while the next job generates).
   The two alternate, ``--repeats`` times each; the median is reported.
2. **Scale-out**: images/s of 1 and 2 worker processes, with ``os.cpu_count()`` beside: on a CPU
   machine the processes share its cores, so the ratio says what a second process adds there.
3. **Model affinity**: jobs of two demo models submitted alternately to one worker that holds one
   model at a time (``ONNX_WEB_CACHE_MODELS=1``, as a GPU worker with large models does), with the
   affinity window at 0 (off: strict age order) and at its default. Model loads are the worker's
   own count (``SessionCache.loads``, on its ``worker stopped`` line).

Throughput is images over the span from the first claim to the last commit of the timed jobs,
read from their rows; each worker first runs one warm-up job, so model loads are not timed.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path
from typing import Any

import httpx

from bench.local import running_stack
from service.config import AFFINITY_WINDOW_S
from service.db import make_engine
from service.jobs.states import JobState
from service.jobs.store import JobStore, JobView
from service.stack import LocalStack, spawn

#: The two demo models of the affinity run (both plain txt2img).
MODELS = ("stable-diffusion-onnx-v1-5", "diffusion-sdxl-demo")
#: Jobs per status read (the api's and ``get_many``'s limit is not what bounds this: it is politeness).
STATUS_BATCH = 50
#: How often the benchmark looks at the jobs' rows while it waits (the figures come from the rows).
POLL_S = 0.25
#: A worker imports ONNX Runtime and diffusers before its first claim: seconds on a busy machine.
START_TIMEOUT_S = 120.0
JOB_TIMEOUT_S = 600.0
#: The phases of a demo txt2img job that share the cores when the output stage is on.
PHASES = ("txt2img", "upload")


@dataclass(frozen=True)
class Load:
    """What one run submits: ``jobs`` demo txt2img jobs of ``size`` pixels square and ``steps`` steps."""

    jobs: int
    size: int
    steps: int

    def query(self, seed: int, model: str = MODELS[0]) -> dict[str, str | int]:
        return {
            "prompt": "a worker benchmark",
            "model": model,
            "steps": self.steps,
            "seed": seed,
            "width": self.size,
            "height": self.size,
        }


class Bench:
    """The stack, the api client, the queue and the folder for worker logs of one benchmark run."""

    def __init__(self, stack: LocalStack, client: httpx.Client, log_dir: Path) -> None:
        self.stack = stack
        self.client = client
        self.log_dir = log_dir
        self.jobs = JobStore(make_engine(self.database_url), lease_s=30.0, affinity_window_s=0.0)
        self._started = 0

    @property
    def database_url(self) -> str:
        return self.stack.postgres.url("onnx_web")

    def worker_env(self, worker_id: str, settings: Mapping[str, str]) -> dict[str, str]:
        """A worker's whole environment: the stack's services, JSON logs, then ``settings``."""
        credentials = self.stack.s3.credentials
        assert credentials is not None, "the stack is running"
        return {
            **os.environ,
            "DATABASE_URL": self.database_url,
            "S3_ENDPOINT": credentials.endpoint,
            "S3_ACCESS_KEY": credentials.access_key,
            "S3_SECRET_KEY": credentials.secret_key,
            "ONNX_WEB_MODEL_PATH": str(self.stack.options.models_path),
            "ONNX_WEB_WORKER_ID": worker_id,
            "ONNX_WEB_LOG_FORMAT": "json",
            "PYTHONUNBUFFERED": "1",
            **settings,
        }

    @contextmanager
    def workers(self, count: int, settings: Mapping[str, str]) -> Iterator[list[WorkerLog]]:
        """``count`` started worker processes; SIGTERMed and waited for on exit."""
        logs, processes = [], []
        try:
            for _ in range(count):
                self._started += 1
                worker_id = f"bench-worker-{self._started}"
                log = WorkerLog(self.log_dir / f"{worker_id}.log")
                with log.path.open("wb") as stderr:
                    command = [sys.executable, "-m", "service.cli", "worker"]
                    processes.append(
                        spawn(command, self.worker_env(worker_id, settings), stderr=stderr, stdout=stderr)
                    )
                logs.append(log)
            wait_for(lambda: all(log.entries(action="start") for log in logs), START_TIMEOUT_S, "workers")
            yield logs
        finally:
            for process in processes:
                process.send_signal(signal.SIGTERM)
            for process in processes:
                process.wait(START_TIMEOUT_S)

    def submit(self, queries: Sequence[Mapping[str, str | int]]) -> list[str]:
        """Submit txt2img jobs through the api; their names."""
        names = []
        for query in queries:
            answer = self.client.post("/api/txt2img", params=query)
            answer.raise_for_status()
            names.append(str(answer.json()["name"]))
        return names

    def finished(self, names: Sequence[str]) -> list[JobView]:
        """The jobs' rows once every one has ended; fails if one did not succeed."""
        views: dict[str, JobView] = {}

        def done() -> bool:
            for start in range(0, len(names), STATUS_BATCH):
                views.update(self.jobs.get_many(names[start : start + STATUS_BATCH]))
            return all(view.state.terminal for view in views.values()) and len(views) == len(names)

        wait_for(done, JOB_TIMEOUT_S, "the jobs")
        failed = [view.name for view in views.values() if view.state != JobState.SUCCESS]
        if failed:
            raise RuntimeError(f"benchmark jobs did not succeed: {failed}; see {self.log_dir}")
        return [views[name] for name in names]

    def warm_up(self, logs: Sequence[WorkerLog], load: Load, models: Sequence[str] = MODELS[:1]) -> None:
        """Run jobs until every worker has finished one of each model (its sessions are loaded)."""
        for attempt in range(10):
            queries = [load.query(1000 + attempt, model) for model in models for _ in logs]
            self.finished(self.submit(queries))
            if all(len(log.entries(action="job_summary")) >= len(models) for log in logs):
                return
        raise RuntimeError("a worker never took a warm-up job")

    def throughput(self, workers: int, load: Load, settings: Mapping[str, str]) -> dict[str, Any]:
        """Images/s of ``workers`` processes with ``settings`` on ``load``, after a warm-up."""
        with self.workers(workers, settings) as logs:
            self.warm_up(logs, load)
            views = self.finished(self.submit([load.query(seed) for seed in range(load.jobs)]))
        return {
            "workers": workers,
            **span(views),
            "phases_ms": phases(logs, views),
            "settings": dict(settings),
        }

    def model_loads(self, load: Load, affinity_window_s: float) -> dict[str, Any]:
        """Model loads of one worker holding one model, on jobs of ``MODELS`` submitted alternately."""
        settings = {"ONNX_WEB_CACHE_MODELS": "1", "ONNX_WEB_AFFINITY_WINDOW_S": str(affinity_window_s)}
        with self.workers(1, settings) as logs:
            self.warm_up(logs, load)
            queries = [load.query(seed, MODELS[seed % len(MODELS)]) for seed in range(load.jobs)]
            views = self.finished(self.submit(queries))
        (log,) = logs
        (stopped,) = log.entries(action="stop")
        loads = int(stopped["model_loads"])
        # A change of model between two jobs in claim order is a load (the worker holds only one).
        order = [view.model for view in sorted(views, key=lambda view: view.started_at or view.created_at)]
        return {
            "affinity_window_s": affinity_window_s,
            "jobs": load.jobs,
            # The warm-up loaded the first model once.
            "model_loads": loads - 1,
            "model_switches_in_claim_order": sum(a != b for a, b in pairwise(order)),
            **span(views),
        }


class WorkerLog:
    """A worker's JSON log file, read back."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def entries(self, **match: Any) -> list[dict[str, Any]]:
        """The log lines whose keys have all the given values (lines that are not JSON are skipped)."""
        found = []
        for line in self.path.read_text(errors="replace").splitlines():
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if isinstance(entry, dict) and all(entry.get(k) == v for k, v in match.items()):
                found.append(entry)
        return found


def span(views: Sequence[JobView]) -> dict[str, Any]:
    """Images/s over the span from the first claim to the last commit of ``views`` (one image each)."""
    started = min(view.started_at for view in views if view.started_at)
    finished = max(view.finished_at for view in views if view.finished_at)
    seconds = (finished - started).total_seconds()
    return {
        "images": len(views),
        "seconds": round(seconds, 3),
        "images_per_s": round(len(views) / seconds, 3),
    }


def phases(logs: Sequence[WorkerLog], views: Sequence[JobView]) -> dict[str, float]:
    """Mean milliseconds per phase of the timed jobs (their summary lines): with the output stage
    on, generation and uploads share the cores, and these say what each phase paid for it."""
    names = {view.name for view in views}
    timings = [
        entry["phases_ms"]
        for log in logs
        for entry in log.entries(action="job_summary", outcome="success")
        if entry["job"] in names
    ]
    return {
        phase: round(statistics.fmean(t.get(phase, 0) for t in timings), 1) for phase in ("txt2img", "upload")
    }


def wait_for(condition: Any, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout_s:.0f}s waiting for {what}")
        time.sleep(POLL_S)


def run(bench: Bench, load: Load, repeats: int) -> dict[str, Any]:
    """Every section's runs, in an order that spreads the machine's noise over both sides."""
    overlap: dict[int, list[dict[str, Any]]] = {0: [], 1: []}
    for _ in range(repeats):
        for depth in overlap:
            overlap[depth].append(bench.throughput(1, load, {"ONNX_WEB_UPLOAD_DEPTH": str(depth)}))
    two = [bench.throughput(2, load, {"ONNX_WEB_UPLOAD_DEPTH": "1"}) for _ in range(repeats)]
    median = {depth: statistics.median(r["images_per_s"] for r in runs) for depth, runs in overlap.items()}
    one_worker, two_workers = median[1], statistics.median(r["images_per_s"] for r in two)
    affinity = [bench.model_loads(load, window) for window in (0.0, AFFINITY_WINDOW_S)]
    return {
        "cpu_count": os.cpu_count(),
        # Other people's work on a shared machine shows here, and in every figure below.
        "load_average_1m_at_end": round(os.getloadavg()[0], 2),
        "load": {"jobs": load.jobs, "size": load.size, "steps": load.steps, "model": MODELS[0]},
        "overlap": {
            "without_images_per_s": median[0],
            "with_images_per_s": median[1],
            "gain": round(median[1] / median[0], 3),
            "phases_ms": {f"upload_depth_{depth}": mean_phases(runs) for depth, runs in overlap.items()},
            "runs": {f"upload_depth_{depth}": runs for depth, runs in overlap.items()},
        },
        "scale_out": {
            "one_worker_images_per_s": one_worker,
            "two_workers_images_per_s": two_workers,
            "ratio": round(two_workers / one_worker, 3),
            "runs": {"one_worker": overlap[1], "two_workers": two},
        },
        "affinity": {"without": affinity[0], "with": affinity[1], "models": list(MODELS)},
    }


def mean_phases(runs: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    return {phase: round(statistics.fmean(r["phases_ms"][phase] for r in runs), 1) for phase in PHASES}


def print_table(results: Mapping[str, Any]) -> None:
    overlap, scale, affinity = results["overlap"], results["scale_out"], results["affinity"]
    load = results["load"]
    print(f"\n{load['jobs']} jobs of {load['size']}x{load['size']}, {load['steps']} step(s), {load['model']}")
    print(f"os.cpu_count() = {results['cpu_count']}\n")
    print("| measure | without | with | ratio |\n|---|---|---|---|")
    print(
        f"| output overlap, 1 worker (images/s) | {overlap['without_images_per_s']:.2f} "
        f"| {overlap['with_images_per_s']:.2f} | {overlap['gain']:.2f} |"
    )
    without, with_ = (overlap["phases_ms"][f"upload_depth_{depth}"] for depth in (0, 1))
    print(
        f"| per job: txt2img / upload (ms) | {without['txt2img']:.0f} / {without['upload']:.0f} "
        f"| {with_['txt2img']:.0f} / {with_['upload']:.0f} | |"
    )
    print(
        f"| worker processes 1 → 2 (images/s, {results['cpu_count']} cores) "
        f"| {scale['one_worker_images_per_s']:.2f} | {scale['two_workers_images_per_s']:.2f} "
        f"| {scale['ratio']:.2f} |"
    )
    print(
        f"| model loads, {affinity['with']['jobs']} jobs of 2 models alternating, affinity off → on "
        f"| {affinity['without']['model_loads']} | {affinity['with']['model_loads']} | |"
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=Path("bench-results/worker.json"))
    parser.add_argument("--jobs", type=int, default=24, help="timed jobs per run")
    parser.add_argument(
        "--size",
        type=int,
        default=256,
        help="image side: at 256 the demo model's generation is a few "
        "hundred ms and encoding plus upload a real share of a job",
    )
    parser.add_argument("--steps", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3, help="runs of each throughput setting")
    parser.add_argument("--models", type=Path, help="a demo models folder to reuse (default: build one)")
    args = parser.parse_args(argv)
    load = Load(jobs=args.jobs, size=args.size, steps=args.steps)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="onnx-web-bench-worker-") as tmp:
        data = Path(tmp)
        with (
            running_stack(data, workers=0, api_workers=1, models_path=args.models) as stack,
            httpx.Client(base_url=stack.url, timeout=60) as client,
        ):
            # The workers' logs outlive the run: a failed job's traceback is in its worker's.
            log_dir = args.out.parent / "worker-logs"
            log_dir.mkdir(exist_ok=True)
            results = run(Bench(stack, client, log_dir), load, args.repeats)
    args.out.write_text(json.dumps(results, indent=2, default=str))
    print_table(results)
    print(f"\nwritten to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
