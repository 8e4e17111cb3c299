"""Q4 in miniature: jobs through real workers while a chaos loop SIGKILLs and SIGSTOPs them.

Usage: ``python scripts/chaos.py --jobs 24 --workers 3 --seed 1 [--models DIR] [--out chaos.json]``.
Not part of CI: it runs for minutes. It starts an embedded PostgreSQL and SeaweedFS in a temporary
folder, builds the demo models (unless ``--models`` names a folder that has them) and runs
``onnx-web worker`` processes with the recovery tests' short clock (lease 3 s, heartbeat 0.5 s,
rescue every 0.5 s; ``tests/integration/workers.py``).

Two phases on the same servers: a baseline (no faults) and the chaos run, each with ``--jobs``
64x64 txt2img jobs of random length. During the chaos run a random live worker is, every few
seconds, either SIGKILLed (and replaced by a fresh one, as a supervisor would) or SIGSTOPped for
longer than its lease and then continued (a zombie). The report is the chaos row of
spec/reliability.md §6, printed as Markdown (and written as JSON with ``--out``); the exit status
is 1 when a pass rule fails.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import sqlalchemy

# The helpers that start and read real workers are the recovery tests' own: one copy of them.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from service.db import create_database, make_engine, upgrade_head
from service.jobs.store import JobStore
from service.stack import EmbeddedPostgres, EmbeddedS3, ensure_demo_models
from tests.integration.workers import FAST, Bucket, WorkerProcess, Workers, make_job, wait_until

TERMINAL = ("success", "failed", "cancelled")
#: The spec's rule: a rescue within lease + rescue interval + 2 s.
RESCUE_BUDGET_S = FAST.lease_s + FAST.rescue_interval_s + 2.0


@dataclass
class Chaos:
    """What the chaos loop did, for the report."""

    kills: int = 0
    stops: int = 0
    #: (worker id, time.time() of the SIGKILL, job it was running or None)
    killed: list[tuple[str, float, str | None]] = field(default_factory=list)
    #: Stops of a worker that held a job for longer than the lease.
    zombies: int = 0


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, run both phases, print the report; 1 when a pass rule fails."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=24, help="jobs per phase (default 24)")
    parser.add_argument("--workers", type=int, default=3, help="worker processes (default 3)")
    parser.add_argument("--seed", type=int, default=1, help="seeds the job lengths and the chaos (default 1)")
    parser.add_argument("--every", type=float, default=4.0, help="mean seconds between faults (default 4)")
    parser.add_argument("--deadline", type=float, default=600.0, help="give up on a phase after this (s)")
    parser.add_argument(
        "--models", type=Path, help="a models folder (default: demo models built in the temp folder)"
    )
    parser.add_argument("--out", type=Path, help="also write the figures as JSON here")
    args = parser.parse_args(argv)

    folder = Path(tempfile.mkdtemp(prefix="onnx-web-chaos-"))
    postgres = EmbeddedPostgres(folder / "postgres")
    s3 = EmbeddedS3(folder / "s3")
    try:
        database_url = create_database(postgres.start(), "chaos")
        upgrade_head(database_url)
        credentials = s3.start()
        models = args.models or folder / "models"
        ensure_demo_models(models)
        engine = make_engine(database_url)
        workers = Workers(
            database_url=database_url, s3=credentials, bucket="chaos", models=models, log_dir=folder
        )
        try:
            report = run(args, engine, workers, Bucket(credentials, "chaos"))
        finally:
            workers.kill_all()
            engine.dispose()
    finally:
        s3.stop()
        postgres.stop()
        shutil.rmtree(folder, ignore_errors=True)

    print_report(report)
    if args.out is not None:
        args.out.write_text(json.dumps(report, indent=2, default=str))
    return 0 if all(check["pass"] for check in report["checks"]) else 1


def run(
    args: argparse.Namespace, engine: sqlalchemy.Engine, workers: Workers, bucket: Bucket
) -> dict[str, Any]:
    """The baseline phase, then the chaos phase; returns every figure of the report."""
    rng = random.Random(args.seed)
    jobs = JobStore(engine, lease_s=FAST.lease_s, affinity_window_s=30.0)

    baseline_workers = [workers.start(f"baseline-{i}") for i in range(args.workers)]
    for worker in baseline_workers:
        worker.wait_started()
    baseline = submit(jobs, workers.models, args.jobs, rng, tag=0)
    wait_until(
        lambda: terminal_count(engine, baseline) == len(baseline),
        timeout_s=args.deadline,
        what="the baseline jobs",
        interval_s=0.2,
    )
    stop_all(baseline_workers)

    live = [workers.start(f"chaos-{i}") for i in range(args.workers)]
    for worker in live:
        worker.wait_started()
    chaos = Chaos()
    started = time.monotonic()
    names = submit(jobs, workers.models, args.jobs, rng, tag=1)
    stopped: dict[WorkerProcess, float] = {}  # worker -> when to continue it
    next_fault = time.monotonic() + rng.expovariate(1 / args.every)
    while terminal_count(engine, names) < len(names):
        if time.monotonic() - started > args.deadline:
            break
        now = time.monotonic()
        for worker, resume_at in list(stopped.items()):
            if now >= resume_at:
                worker.send(signal.SIGCONT)
                del stopped[worker]
        candidates = [worker for worker in live if worker.poll() is None and worker not in stopped]
        if now >= next_fault and candidates:
            victim = rng.choice(candidates)
            held = running_job(engine, victim.worker_id)
            if rng.random() < 0.6:
                victim.send(signal.SIGKILL)
                chaos.kills += 1
                chaos.killed.append((victim.worker_id, time.time(), held))
                live.remove(victim)
                live.append(workers.start(f"chaos-{len(workers.started)}"))
            else:
                pause = FAST.lease_s + rng.uniform(0.5, 2.0)
                victim.send(signal.SIGSTOP)
                stopped[victim] = now + pause
                chaos.stops += 1
                chaos.zombies += held is not None
            next_fault = now + rng.expovariate(1 / args.every)
        time.sleep(0.05)
    elapsed = time.monotonic() - started
    for worker in stopped:
        worker.send(signal.SIGCONT)
    stop_all([worker for worker in live if worker.poll() is None])
    return figures(args, engine, workers, bucket, baseline, names, chaos, elapsed)


def submit(jobs: JobStore, models: Path, count: int, rng: random.Random, *, tag: int) -> list[str]:
    """Enqueue ``count`` jobs of 20 to 250 steps; returns their names."""
    names = []
    for index in range(count):
        job = make_job(models, steps=rng.randint(20, 250), seed=tag * 100000 + index, max_attempts=3)
        jobs.enqueue(job)
        names.append(job.name)
    return names


def stop_all(running: list[WorkerProcess]) -> None:
    """SIGTERM every worker and wait for it (each finishes its job, or is killed after 60 s)."""
    for worker in running:
        worker.send(signal.SIGTERM)
    for worker in running:
        try:
            worker.process.wait(60)
        except subprocess.TimeoutExpired:
            worker.process.kill()


def rows(engine: sqlalchemy.Engine, names: list[str]) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        found = conn.execute(sqlalchemy.text("SELECT * FROM jobs WHERE name = ANY(:names)"), {"names": names})
        return [dict(row._mapping) for row in found]


def terminal_count(engine: sqlalchemy.Engine, names: list[str]) -> int:
    with engine.connect() as conn:
        return int(
            conn.execute(
                sqlalchemy.text(
                    "SELECT count(*) FROM jobs WHERE name = ANY(:names) "
                    "AND state IN ('success', 'failed', 'cancelled')"
                ),
                {"names": names},
            ).scalar_one()
        )


def running_job(engine: sqlalchemy.Engine, worker_id: str) -> str | None:
    with engine.connect() as conn:
        return conn.execute(
            sqlalchemy.text("SELECT name FROM jobs WHERE state = 'running' AND worker_id = :w"),
            {"w": worker_id},
        ).scalar_one_or_none()


def percentile(values: list[float], q: float) -> float | None:
    """The ``q`` quantile (0-1) by nearest rank; None without values."""
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))], 2)


def figures(
    args: argparse.Namespace,
    engine: sqlalchemy.Engine,
    workers: Workers,
    bucket: Bucket,
    baseline: list[str],
    names: list[str],
    chaos: Chaos,
    elapsed: float,
) -> dict[str, Any]:
    """The chaos row of spec/reliability.md §6, from the rows, the bucket and the worker logs."""
    chaos_rows = rows(engine, names)
    by_state = {state: sum(row["state"] == state for row in chaos_rows) for state in TERMINAL}
    lost = len(names) - sum(by_state.values())
    duplicate_visible = 0
    recorded: set[str] = set()
    for row in chaos_rows:
        keys = list((row["output_keys"] or {}).values())
        recorded.update(keys)
        attempts = {key.split("/")[2] for key in keys}
        duplicate_visible += int(bool(keys) and attempts != {str(row["attempt"])})
    stored = bucket.keys("outputs/")
    missing = len(recorded - set(stored))
    chaos_prefixes = tuple(f"outputs/{name}/" for name in names)
    orphans = sum(key.startswith(chaos_prefixes) and key not in recorded for key in stored)
    rescue_times = []
    by_name = {row["name"]: row for row in chaos_rows}
    for worker_id, killed_at, held in chaos.killed:
        errors = by_name[held]["errors"] if held in by_name else []
        entries = [e for e in errors if e["reason"] == "rescued" and e["worker"] == worker_id]
        if entries:
            rescue_times.append(datetime.fromisoformat(entries[0]["at"]).timestamp() - killed_at)
    logs = [entry for worker in workers.started for entry in worker.logs()]
    fenced_commits = sum(entry.get("action") == "fenced" for entry in logs)
    fenced_attempts = sum(
        entry.get("action") == "job_summary" and entry.get("outcome") == "fenced" for entry in logs
    )
    e2e = {
        phase: [
            (row["finished_at"] - row["created_at"]).total_seconds()
            for row in rows(engine, phase_names)
            if row["finished_at"] is not None
        ]
        for phase, phase_names in (("baseline", baseline), ("chaos", names))
    }
    duplicate_executions = sum(max(row["attempt"] - 1, 0) for row in chaos_rows)
    rescue_p99 = percentile(rescue_times, 0.99)
    report: dict[str, Any] = {
        "seed": args.seed,
        "git_sha": git_sha(),
        "workers": args.workers,
        "chaos_wall_s": round(elapsed, 1),
        "submitted": len(names),
        "accepted": len(chaos_rows),
        "completed": by_state["success"],
        "failed": by_state["failed"],
        "cancelled": by_state["cancelled"],
        "lost": lost,
        "duplicate_executions": duplicate_executions,
        "duplicate_visible_outputs": duplicate_visible,
        "recorded_outputs_missing": missing,
        "sigkills": chaos.kills,
        "sigstops": chaos.stops,
        "zombies": chaos.zombies,
        "rescues": sum(row["rescue_count"] for row in chaos_rows),
        "fenced_commits": fenced_commits,
        "fenced_attempts": fenced_attempts,
        "time_to_rescue_p50_s": percentile(rescue_times, 0.5),
        "time_to_rescue_p99_s": rescue_p99,
        "e2e_p50_s": {phase: percentile(values, 0.5) for phase, values in e2e.items()},
        "e2e_p99_s": {phase: percentile(values, 0.99) for phase, values in e2e.items()},
        "orphans_before_gc": orphans,
        "orphans_after_gc": "n/a: the service has no orphan collector yet",
    }
    report["checks"] = [
        {"rule": "lost = 0", "pass": lost == 0},
        {"rule": "duplicate visible outputs = 0", "pass": duplicate_visible == 0},
        {"rule": "recorded outputs missing = 0", "pass": missing == 0},
        {
            "rule": "duplicate executions <= kills x 1 + zombies",
            "pass": duplicate_executions <= chaos.kills + chaos.zombies,
        },
        {
            "rule": f"time-to-rescue p99 <= {RESCUE_BUDGET_S:.1f} s",
            "pass": rescue_p99 is None or rescue_p99 <= RESCUE_BUDGET_S,
        },
    ]
    return report


def git_sha() -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
            cwd=Path(__file__).parent,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def print_report(report: dict[str, Any]) -> None:
    """The §6 chaos row as a Markdown table, then the pass rules."""
    print("| figure | value |\n| --- | --- |")
    for key, value in report.items():
        if key != "checks":
            print(f"| {key} | {value} |")
    print("\n| pass rule | result |\n| --- | --- |")
    for check in report["checks"]:
        print(f"| {check['rule']} | {'pass' if check['pass'] else 'FAIL'} |")


if __name__ == "__main__":
    sys.exit(main())
