"""Scale-out of the queue: 1 to 64 simulated workers against one Postgres and one S3 server.

Usage: ``python -m bench.scale --out bench-results/scale.json`` (``make bench-scale``).

A simulated worker is ``service.worker.Worker`` itself, in a thread of this process, with its own
engine (pool bounds from ``Config``, as ``onnx-web worker`` builds it) and LISTEN connection: the
real claim, lease thread, progress writes, S3 puts of a small PNG, its thumbnail and sidecar, and the
fenced commit. Only the chain runner is replaced, by a sleep of ``--job-seconds`` that reports its
steps like a pipeline. Each worker claims as if it held one of four models, so every claim ranks
held-model jobs (the costlier claim), against a backlog kept at ``--backlogs`` pending jobs
(filled with one INSERT per top-up, not by submissions).

For each backlog and each worker count N, the workers run ``--warmup-s``, then ``--window-s`` are
measured: jobs/s is the sum of each worker's rate (jobs it finished in the window, less one, over
the time between its first and last), which does not round a worker's last unfinished job away;
the ideal is N / job length. Claim latency is the whole ``JobStore.claim_batch`` call as the worker
makes it. CPU is read from the process trees of Postgres, the S3 server and this process (the
workers), in cores; with N workers in threads of one Python process, on few cores, the workers'
own share says whether the figure measures the queue or the machine, so the core count is
recorded beside the figures. Last, ``bench.queue`` measures claim + complete of zero-length jobs
against each backlog.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import psutil
import sqlalchemy
from PIL import Image
from tqdm import tqdm

from bench import queue
from pipelines.chain import ChainResult
from pipelines.context import Counter, Progress, StageImage
from pipelines.models.sessions import SessionCache
from service.config import Config
from service.db import config_engine, sqlalchemy_url
from service.jobs.notify import Notifier
from service.jobs.probe import QueueProbe
from service.jobs.store import ClaimedJob, JobStore
from service.stack import EmbeddedS3, S3Credentials, temporary_postgres
from service.storage import from_config
from service.worker import Worker

WORKER_COUNTS = (1, 2, 4, 8, 16, 32, 64)
BACKLOGS = (1_000, 100_000)
#: Steps a simulated job reports, evenly over its length (progress writes are throttled as usual).
STEPS = 20
#: Connections one simulated worker may open: its pool bound plus its LISTEN connection.
#: The embedded server is started with room for the largest N; an external one is checked.
CONNECTIONS_PER_WORKER = 4
#: The goals of issue 15.
GOAL_EFFICIENCY = 0.9
GOAL_ZERO_LENGTH_JOBS_PER_S = 5000.0
GOAL_P99_RATIO = 2.0


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, run every phase, print the table and save the JSON."""
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--job-seconds", type=float, default=1.0, help="length of each simulated job")
    parser.add_argument("--workers", type=int, nargs="+", default=list(WORKER_COUNTS), help="worker counts")
    parser.add_argument("--backlogs", type=int, nargs="+", default=list(BACKLOGS), help="pending jobs")
    parser.add_argument("--warmup-s", type=float, default=3.0, help="run time before the window")
    parser.add_argument("--window-s", type=float, default=10.0, help="measured run time per phase")
    parser.add_argument("--zero-jobs", type=int, default=5000, help="zero-length jobs per backlog")
    parser.add_argument("--zero-workers", type=int, default=8, help="claimers of the zero-length run")
    parser.add_argument("--database-url", help="an existing server's admin URL (default: embedded)")
    parser.add_argument("--s3-endpoint", help="an existing S3 server, host:port (default: embedded)")
    parser.add_argument("--s3-access-key", default="")
    parser.add_argument("--s3-secret-key", default="")
    parser.add_argument("--out", type=Path, default=Path("bench-results/scale.json"))
    args = parser.parse_args(argv)

    settings = Settings(
        job_s=args.job_seconds,
        worker_counts=tuple(args.workers),
        backlogs=tuple(args.backlogs),
        warmup_s=args.warmup_s,
        window_s=args.window_s,
        zero_jobs=args.zero_jobs,
        zero_workers=args.zero_workers,
    )
    given_s3 = (
        None
        if args.s3_endpoint is None
        else S3Credentials(args.s3_endpoint, args.s3_access_key, args.s3_secret_key)
    )
    connections = CONNECTIONS_PER_WORKER * max(settings.worker_counts) + settings.zero_workers + 20
    with servers(args.database_url, given_s3, connections) as (admin_url, s3, s3_pid):
        result = run(admin_url, s3, settings, s3_pid=s3_pid)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(table(result))
    print(f"\nwritten to {args.out}")
    return 0


@dataclass(frozen=True)
class Settings:
    """What one run measures."""

    job_s: float
    worker_counts: tuple[int, ...]
    backlogs: tuple[int, ...]
    warmup_s: float
    window_s: float
    zero_jobs: int
    zero_workers: int


@contextmanager
def servers(
    database_url: str | None, s3: S3Credentials | None, connections: int
) -> Iterator[tuple[str, S3Credentials, int | None]]:
    """The Postgres admin URL, the S3 server and its pid (None when not ours) for the block."""
    with ExitStack() as stack:
        admin_url = database_url or stack.enter_context(embedded_postgres(connections))
        check_connections(admin_url, connections)
        pid = None
        if s3 is None:
            folder = Path(tempfile.mkdtemp(prefix="onnx-web-bench-s3-"))
            stack.callback(shutil.rmtree, folder, ignore_errors=True)
            server = EmbeddedS3(folder)
            stack.callback(server.stop)
            s3 = server.start()
            pid = server.process.pid if server.process is not None else None
        yield admin_url, s3, pid


@contextmanager
def embedded_postgres(connections: int) -> Iterator[str]:
    """An embedded server allowed ``connections`` connections (the default 100 is too few for 64
    workers): set with ALTER SYSTEM, which takes a restart."""
    with temporary_postgres("onnx-web-bench-pg-") as (server, admin_url):
        engine = sqlalchemy.create_engine(sqlalchemy_url(admin_url))
        QueueProbe(engine).set_max_connections(connections)
        engine.dispose()
        server.stop()
        yield server.start()


def check_connections(admin_url: str, needed: int) -> None:
    """Refuse a server that would turn the largest phase into connection errors."""
    engine = sqlalchemy.create_engine(sqlalchemy_url(admin_url))
    allowed = QueueProbe(engine).max_connections()
    engine.dispose()
    if allowed < needed:
        raise SystemExit(f"max_connections is {allowed}; this run needs {needed}")


# -- the simulated worker ----------------------------------------------------------------------


def sleeping_chain(job_s: float) -> Callable[..., ChainResult]:
    """A chain runner that takes ``job_s`` seconds, reports ``STEPS`` steps and makes one 64x64 image.

    It sleeps to fixed deadlines, so a slow progress write does not lengthen the job: the queue's
    costs show as the time between jobs, not inside them.
    """

    def run_chain(
        chain: dict[str, Any],
        *,
        report: Callable[[Progress], None],
        check_cancelled: Callable[[], None],
        **_: Any,
    ) -> ChainResult:
        started = time.monotonic()
        for step in range(1, STEPS + 1):
            time.sleep(max(0.0, started + job_s * step / STEPS - time.monotonic()))
            check_cancelled()
            report(Progress(steps=Counter(step, STEPS), stages=Counter(0, 1)))
        image = StageImage(Image.new("RGB", (64, 64), (32, 64, 128)), {"params": {"steps": STEPS}})
        return ChainResult(outputs=[image], progress=Progress(Counter(STEPS, STEPS), Counter(1, 1)))

    return run_chain


class HoldingSessions(SessionCache):
    """A simulated worker's sessions: it loads no model, but claims as if it held ``model``."""

    def __init__(self, model: str) -> None:
        super().__init__(1)
        self.model = model

    def held_models(self, models_path: Path) -> list[str]:
        return [self.model]


class TimedJobStore(JobStore):
    """A ``JobStore`` that records when each claim started and how long it took, in seconds."""

    def __init__(self, engine: sqlalchemy.Engine, config: Config, claims: list[tuple[float, float]]) -> None:
        super().__init__(engine, lease_s=config.lease_s, affinity_window_s=config.affinity_window_s)
        self.claims = claims

    def claim_batch(self, worker_id: str, **options: Any) -> list[ClaimedJob]:
        began = time.perf_counter()
        try:
            return super().claim_batch(worker_id, **options)
        finally:
            self.claims.append((began, time.perf_counter() - began))


@contextmanager
def simulated_workers(
    config: Config, count: int, job_s: float, claims: list[tuple[float, float]]
) -> Iterator[list[Worker]]:
    """``count`` real workers running in threads for the block; stopped (each finishes its job) after."""
    with ExitStack() as stack:
        workers = []
        for slot in range(count):
            own = replace(config, worker_id=f"bench-{slot}")
            engine = config_engine(own)
            stack.callback(engine.dispose)
            notifier = Notifier(own.database_url)
            stack.callback(notifier.close)
            workers.append(
                Worker(
                    own,
                    jobs=TimedJobStore(engine, own, claims),
                    store=from_config(own),
                    sessions=HoldingSessions(queue.MODELS[slot % len(queue.MODELS)]),
                    notifier=notifier,
                    chain_runner=sleeping_chain(job_s),
                )
            )
        threads = [threading.Thread(target=worker.run, name=f"bench-{i}") for i, worker in enumerate(workers)]
        for thread in threads:
            thread.start()
        try:
            yield workers
        finally:
            for worker in workers:
                worker.stop()
            for thread in threads:
                thread.join()


# -- measuring -----------------------------------------------------------------------------------


class CPUMeter:
    """CPU seconds spent by a process and its children, dead ones included once reaped."""

    def __init__(self, pid: int | None) -> None:
        self.process = None if pid is None else psutil.Process(pid)

    def seconds(self) -> float | None:
        if self.process is None:
            return None
        try:
            own = self.process.cpu_times()
            total = own.user + own.system + own.children_user + own.children_system
            for child in self.process.children(recursive=True):
                with_child = child.cpu_times()
                total += with_child.user + with_child.system
        except psutil.Error:
            return None
        return total


def postmaster_pid(probe: QueueProbe) -> int | None:
    """The pid of the server's postmaster when it runs on this machine, else None."""
    try:
        parent = psutil.Process(probe.backend_pid()).parent()
    except psutil.Error:
        return None
    return None if parent is None else parent.pid


def cores(meter: CPUMeter, before: float | None, elapsed_s: float) -> float | None:
    """Average cores busy since ``before`` (a ``meter.seconds()`` reading)."""
    after = meter.seconds()
    return None if before is None or after is None else round((after - before) / elapsed_s, 3)


def phase(
    probe: QueueProbe,
    config: Config,
    settings: Settings,
    workers: int,
    meters: dict[str, CPUMeter],
) -> dict[str, Any]:
    """Run ``workers`` simulated workers and measure the window; the phase's row of the table."""
    claims: list[tuple[float, float]] = []
    with simulated_workers(config, workers, settings.job_s, claims):
        time.sleep(settings.warmup_s)
        start = probe.clock()
        began = time.perf_counter()
        cpu = {name: meter.seconds() for name, meter in meters.items()}
        time.sleep(settings.window_s)
        elapsed = time.perf_counter() - began
        used = {name: cores(meter, cpu[name], elapsed) for name, meter in meters.items()}
        end = probe.clock()
    rates = probe.window_rates(start, end)
    jobs_per_s = sum((jobs - 1) / span_s for _, jobs, span_s in rates if jobs > 1 and span_s)
    ideal = workers / settings.job_s
    window = [took for at, took in claims if began <= at < began + elapsed]
    return {
        "workers": workers,
        "jobs_per_s": round(jobs_per_s, 2),
        "ideal_jobs_per_s": round(ideal, 2),
        "efficiency": round(jobs_per_s / ideal, 3),
        "finished_in_window": sum(jobs for _, jobs, _ in rates),
        "claims": len(window),
        "claim_p50_ms": round(statistics.median(window) * 1000, 2) if window else None,
        "claim_p99_ms": round(queue.percentile_ms(window, 99), 2),
        "cpu_cores": used,
    }


def run(
    admin_url: str, s3: S3Credentials, settings: Settings, *, s3_pid: int | None = None
) -> dict[str, Any]:
    """Every phase of ``settings``: simulated workers per backlog, then zero-length claim + complete."""
    result: dict[str, Any] = {
        "benchmark": "queue_scale",
        "machine": {"cpu_cores": os.cpu_count(), "python": sys.version.split()[0]},
        "settings": {**vars(settings), "steps_per_job": STEPS},
        "backlogs": [],
        "zero_length": [],
    }
    phases = [(backlog, workers) for backlog in settings.backlogs for workers in settings.worker_counts]
    bar = tqdm(phases, desc="scale", unit="phase")
    for backlog in settings.backlogs:
        url = queue.fresh_database(admin_url)
        config = Config(
            database_url=url,
            s3_endpoint=s3.endpoint,
            s3_access_key=s3.access_key,
            s3_secret_key=s3.secret_key,
            s3_bucket=f"bench-{uuid.uuid4().hex[:12]}",
            affinity_window_s=queue.AFFINITY_WINDOW_S,
        )
        from_config(config).ensure_bucket()
        engine = sqlalchemy.create_engine(sqlalchemy_url(url))
        probe = QueueProbe(engine)
        meters = {
            "postgres": CPUMeter(postmaster_pid(probe)),
            "s3": CPUMeter(s3_pid),
            "workers": CPUMeter(os.getpid()),
        }
        rows = []
        for workers in settings.worker_counts:
            # Enough that the backlog never falls below its size while this phase runs.
            run_s = settings.warmup_s + settings.window_s + 2 * settings.job_s
            spent = math.ceil(1.5 * workers * run_s / settings.job_s)
            queue.fill_backlog(engine, backlog + spent - probe.pending())
            bar.set_postfix(backlog=backlog, workers=workers)
            rows.append(phase(probe, config, settings, workers, meters))
            bar.update()
        result["backlogs"].append(
            {
                "pending": backlog,
                "phases": rows,
                "explain_claim": explain_claim(probe),
                "states": probe.states(),
                "retried": probe.retried(),
            }
        )
        engine.dispose()
    bar.close()
    for backlog in tqdm(settings.backlogs, desc="zero-length claim + complete", unit="backlog"):
        result["zero_length"].append(
            queue.run(admin_url, jobs=settings.zero_jobs, workers=settings.zero_workers, pending=backlog)
        )
    result["goals"] = goals(result)
    return result


def explain_claim(probe: QueueProbe) -> dict[str, Any]:
    """``EXPLAIN ANALYZE`` of one claim against the backlog as it is (rolled back): time and indexes."""
    params = {
        "worker_id": "explain",
        "platform": "cpu",
        "held_models": [queue.MODELS[0]],
        "lease_s": 30.0,
        "affinity_window_s": queue.AFFINITY_WINDOW_S,
        "batch_max": 1,
        "memory_kind": "cpu",
        "memory_bytes": None,
    }
    plan = probe.explain_claim(params)
    nodes = list(plan_nodes(plan["Plan"]))
    return {
        "execution_ms": plan["Execution Time"],
        "indexes": sorted({node["Index Name"] for node in nodes if "Index Name" in node}),
        "node_types": sorted({node["Node Type"] for node in nodes}),
        "rows_sorted": sum(node.get("Actual Rows", 0) for node in nodes if node["Node Type"] == "Sort"),
    }


def plan_nodes(node: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield node
    for child in node.get("Plans", []):
        yield from plan_nodes(child)


def goals(result: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Issue 15's three goals, each with its target, what was measured and whether it was met."""
    efficiency = min(
        (row["efficiency"] for backlog in result["backlogs"] for row in backlog["phases"]), default=None
    )
    zero = min((run["jobs_per_s"] for run in result["zero_length"]), default=None)
    p99 = {run["pending"]: run["claim_p99_ms"] for run in result["zero_length"]}
    small, large = (min(p99), max(p99)) if p99 else (None, None)
    ratio = p99[large] / p99[small] if small is not None and large != small and p99[small] else None
    return {
        "efficiency_all_worker_counts": {
            "target": f">= {GOAL_EFFICIENCY}",
            "measured": efficiency,
            "met": efficiency is not None and efficiency >= GOAL_EFFICIENCY,
        },
        "zero_length_jobs_per_s": {
            "target": f">= {GOAL_ZERO_LENGTH_JOBS_PER_S:.0f}",
            "measured": None if zero is None else round(zero, 1),
            "met": zero is not None and zero >= GOAL_ZERO_LENGTH_JOBS_PER_S,
        },
        "claim_p99_large_over_small_backlog": {
            "target": f"<= {GOAL_P99_RATIO} ({large} vs {small} pending)",
            "measured": None if ratio is None else round(ratio, 2),
            "met": ratio is not None and ratio <= GOAL_P99_RATIO,
        },
    }


def table(result: dict[str, Any]) -> str:
    """The figures as Markdown tables, for people."""
    lines = [
        f"machine: {result['machine']['cpu_cores']} cores; job length {result['settings']['job_s']} s",
        "",
        "| pending | workers | jobs/s | ideal | efficiency | claim p50 / p99 ms | cores pg / s3 / workers |",
        "|---:|---:|---:|---:|---:|---:|---|",
    ]
    for backlog in result["backlogs"]:
        for row in backlog["phases"]:
            cpu = " / ".join(_fmt(row["cpu_cores"][name]) for name in ("postgres", "s3", "workers"))
            lines.append(
                f"| {backlog['pending']} | {row['workers']} | {row['jobs_per_s']:.1f} | "
                f"{row['ideal_jobs_per_s']:.1f} | {row['efficiency']:.2f} | "
                f"{_fmt(row['claim_p50_ms'])} / {_fmt(row['claim_p99_ms'])} | {cpu} |"
            )
    lines += ["", "| pending | zero-length claim + complete | claim p50 / p99 ms |", "|---:|---:|---:|"]
    for run in result["zero_length"]:
        lines.append(
            f"| {run['pending']} | {run['jobs_per_s']:.0f} jobs/s ({run['workers']} claimers) | "
            f"{run['claim_p50_ms']:.2f} / {run['claim_p99_ms']:.2f} |"
        )
    lines += ["", "| goal | target | measured | met |", "|---|---|---:|---|"]
    for name, goal in result["goals"].items():
        met = "yes" if goal["met"] else "no"
        lines.append(f"| {name} | {goal['target']} | {_fmt(goal['measured'])} | {met} |")
    return "\n".join(lines)


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


if __name__ == "__main__":
    sys.exit(main())
