"""Q4 at scale: jobs through a real ``onnx-web run`` while its processes and servers are killed.

Usage: ``python scripts/chaos.py [--jobs 1000] [--workers 4] [--seed 1] [--out chaos.json]``
(``make test-chaos``; ``tests/chaos/test_chaos.py`` runs a small one in ``make test``).

It starts ``onnx-web run`` (the supervisor, gunicorn, ``--workers`` workers, embedded Postgres and
SeaweedFS) in a temporary folder on the tiny demo models, with the recovery tests' short clock
(lease 3 s, heartbeat 0.5 s, rescue every 0.5 s) and 5 attempts a job. After a baseline of
``--baseline`` jobs without faults it submits ``--jobs`` 128x128 txt2img jobs through the api at
``--rate`` a second, each with an Idempotency-Key of its own, retried on connection errors and
5xx as a client would. Meanwhile:

- every ``--every`` seconds on average, a random worker is SIGKILLed (the supervisor restarts it)
  or SIGSTOPped for twice the lease, then continued: a zombie whose job was rescued meanwhile;
- once each, during the submissions: Postgres restarts (``pg_ctl restart -m immediate``), the api
  is SIGKILLed, and the S3 server is SIGKILLed (the supervisor restarts both).

Once every job has ended, and every continued zombie has ended the attempt it held (it may still
upload a preview or outputs before it finds its lease gone, then deletes them), it counts orphaned
objects, runs ``onnx-web gc``, counts them again, stops the stack with SIGTERM to its process group
and checks that nothing of it is left. The figures (spec/reliability.md §6, chaos row) go to
``--out`` as JSON, a summary to stdout and progress lines to stderr. The exit status is 1 when a
pass rule fails (``checks``: a job lost, a visible output duplicated or missing, a zombie that
did not end its attempt, an orphan left after gc, the launcher dead, something left running);
the folder is then kept.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import psutil
import sqlalchemy
from sqlalchemy.exc import OperationalError

# The helpers that drive a real `onnx-web run` are the lifecycle tests' own: one copy of them.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipelines.models.demo import build_demo_models
from service.config import Config
from service.db import make_engine
from service.gc import collect_orphans
from service.jobs.store import JobStore
from service.stack import pg_ctl
from service.storage import from_config
from tests.integration.stack_process import REPO_ROOT, RunningStack, describe, leftovers

TERMINAL = ("success", "failed", "cancelled")
LEASE_S = 3.0
#: The short clock of the recovery tests (``tests/integration/workers.py``), and a quick stop.
CLOCK = {
    "ONNX_WEB_LEASE_S": str(LEASE_S),
    "ONNX_WEB_HEARTBEAT_S": "0.5",
    "ONNX_WEB_RESCUE_INTERVAL_S": "0.5",
    "ONNX_WEB_POLL_INTERVAL_S": "0.2",
    "ONNX_WEB_WORKER_RETRIES": "5",
    # Backoff 1, 2, 4, 8 s between a job's attempts: longer than a killed S3 takes to come back
    # (restarted in 0.5 s, answering about 7 s later on a 2-core machine, more on a loaded one), so
    # its outage cannot spend all of a job's attempts.
    "ONNX_WEB_RETRY_DELAY_S": "1.0",
    "ONNX_WEB_SHUTDOWN_GRACE_S": "5",
}
#: The spec's rule: a rescue within lease + rescue interval + 2 s.
RESCUE_BUDGET_S = LEASE_S + 0.5 + 2.0
#: When the one-off faults happen, as fractions of the submission window.
ONE_OFF_AT = {"postgres_restart": 0.2, "api_kill": 0.45, "s3_kill": 0.7}
STOP_BOUND_S = 90.0
#: How long the zombies continued at the end may take to end the attempts they held.
ZOMBIE_SETTLE_BOUND_S = 90.0
#: The figures the summary prints (the JSON has them all).
SUMMARY = (
    *("submitted", "accepted", "completed", "failed", "lost", "duplicate_executions"),
    *("jobs_run_more_than_once", "duplicate_visible_outputs", "recorded_outputs_missing"),
    *("sigkills", "sigstops", "zombies", "supervisor_restarts", "dependency_waits", "rescues"),
    *("fenced_commits", "time_to_rescue_p50_s", "time_to_rescue_p99_s", "e2e_p50_s", "e2e_p99_s"),
    *("zombie_settle_s", "zombies_unsettled", "orphans_before_gc", "orphans_after_gc", "chaos_wall_s"),
    *("stop_s", "left_running_after_stop"),
)
SUBMIT_GIVE_UP_S = 180.0


@dataclass
class Submissions:
    """What the client sent and what the api accepted (filled by the submitting thread)."""

    sent: int = 0
    accepted: dict[str, str] = field(default_factory=dict)  # Idempotency-Key -> job name
    submitted_at: dict[str, float] = field(default_factory=dict)  # job name -> time.time()
    retries: int = 0
    refused: list[str] = field(default_factory=list)
    done: threading.Event = field(default_factory=threading.Event)


@dataclass
class Chaos:
    """What the chaos loop did, for the report."""

    kills: int = 0
    stops: int = 0
    zombies: int = 0
    #: (worker id, time.time() of the SIGKILL, (job, attempt) it was running or None)
    killed: list[tuple[str | None, float, tuple[str, int] | None]] = field(default_factory=list)
    #: (process, worker id, (job, attempt)) of each SIGSTOP that froze a worker holding a job
    frozen_holding: list[tuple[psutil.Process, str | None, tuple[str, int]]] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)

    def note(self, kind: str, **details: Any) -> None:
        self.events.append({"t": round(time.time(), 3), "event": kind, **details})


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, run the stack through the chaos, print the report; 1 when a gate fails."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--jobs", type=int, default=1000, help="jobs of the chaos phase (default 1000)")
    parser.add_argument("--workers", type=int, default=4, help="worker processes (default 4)")
    parser.add_argument("--rate", type=float, default=5.0, help="submissions a second (default 5)")
    parser.add_argument("--baseline", type=int, default=20, help="jobs run first without faults (default 20)")
    parser.add_argument("--every", type=float, default=5.0, help="mean seconds between worker faults")
    parser.add_argument("--seed", type=int, default=1, help="seeds the jobs and the faults (default 1)")
    parser.add_argument("--deadline", type=float, default=1800.0, help="give up after this many seconds")
    parser.add_argument("--models", type=Path, help="a folder with the demo models (default: built)")
    parser.add_argument("--out", type=Path, help="write the figures here as JSON")
    parser.add_argument("--keep", action="store_true", help="keep the folder (data, log) also on success")
    args = parser.parse_args(argv)

    folder = Path(tempfile.mkdtemp(prefix="onnx-web-chaos-"))
    models = args.models or folder / "models"
    if args.models is None:
        progress(f"building the demo models in {models}")
        build_demo_models(models)
    stack = RunningStack(folder / "data", models=models, workers=args.workers, env=CLOCK)
    try:
        progress(f"starting onnx-web run in {folder} (log: {stack.log_path})")
        stack.wait_ready()
        report = run(args, stack)
    finally:
        stack.close()
    report["log"] = str(stack.log_path)
    if args.out is not None:
        args.out.write_text(json.dumps(report, indent=2, default=str))
    print_summary(report)
    passed = all(check["pass"] for check in report["checks"] if check["gate"])
    if passed and not args.keep:
        shutil.rmtree(folder, ignore_errors=True)
    else:
        print(f"\nkept {folder} for a look (stack log: {stack.log_path})")
    return 0 if passed else 1


def progress(line: str) -> None:
    print(f"[chaos {time.strftime('%H:%M:%S')}] {line}", file=sys.stderr, flush=True)


def run(args: argparse.Namespace, stack: RunningStack) -> dict[str, Any]:
    """The baseline, the chaos phase, the collector and the stop; returns every figure."""
    rng = random.Random(args.seed)
    services = stack.services()
    engine = make_engine(services["DATABASE_URL"])
    try:
        progress(f"baseline: {args.baseline} jobs without faults")
        baseline = Submissions()
        submit_all(stack.url, args.baseline, rate=1000.0, rng=random.Random(-args.seed), into=baseline)
        wait_ended(engine, list(baseline.accepted.values()), args.deadline, label="baseline")

        progress(
            f"chaos: {args.jobs} jobs at {args.rate}/s, {args.workers} workers, a fault every ~{args.every}s"
        )
        chaos = Chaos()
        submissions = Submissions()
        submitter = threading.Thread(
            target=submit_all,
            args=(stack.url, args.jobs, args.rate, rng, submissions),
            name="submitter",
            daemon=True,
        )
        started = time.monotonic()
        submitter.start()
        inflict(args, stack, engine, submissions, chaos, rng, started)
        elapsed = time.monotonic() - started
        figures: dict[str, Any]
        if stack.process.poll() is not None:
            # Its Postgres and S3 went with it: nothing is left to count.
            figures = {"launcher_alive_through_chaos": False, "chaos_wall_s": round(elapsed, 1)}
        else:
            progress(f"all jobs ended after {elapsed:.0f}s; waiting for the zombies to end their attempts")
            settled = settle_zombies(stack, chaos)
            progress("collecting orphans")
            collected = {**collect(services), **settled}
            figures = measure(args, stack, engine, baseline, submissions, chaos, elapsed, collected)
        figures["events"] = chaos.events
    finally:
        engine.dispose()
    progress("stopping the stack with SIGTERM to its process group")
    figures.update(stop(stack))
    figures["checks"] = checks(figures)
    return figures


# -- submitting ------------------------------------------------------------------------------------


def submit_all(url: str, count: int, rate: float, rng: random.Random, into: Submissions) -> None:
    """POST ``count`` jobs at ``rate`` a second, each retried with its own key until accepted."""
    started = time.monotonic()
    with httpx.Client(base_url=url, timeout=10) as client:
        for index in range(count):
            time.sleep(max(0.0, started + index / rate - time.monotonic()))
            body = {
                "prompt": "a red fox in the snow",
                "steps": rng.randint(2, 8),
                "width": 128,
                "height": 128,
                "seed": rng.randrange(1 << 31),
            }
            key = uuid.uuid4().hex
            into.sent += 1
            name = submit_one(client, body, key, into)
            if name is not None:
                into.accepted[key] = name
                into.submitted_at[name] = time.time()
    into.done.set()


def submit_one(client: httpx.Client, body: dict[str, Any], key: str, into: Submissions) -> str | None:
    deadline = time.monotonic() + SUBMIT_GIVE_UP_S
    wait = 0.2
    while time.monotonic() < deadline:
        try:
            response = client.post("/api/txt2img", json=body, headers={"Idempotency-Key": key})
        except httpx.TransportError:
            response = None
        if response is not None and response.status_code == 200:
            return str(response.json()["name"])
        if response is not None and response.status_code < 500 and response.status_code != 429:
            into.refused.append(f"{response.status_code}: {response.text[:200]}")
            return None
        into.retries += 1
        time.sleep(wait)
        wait = min(wait * 2, 2.0)
    into.refused.append(f"no answer in {SUBMIT_GIVE_UP_S}s")
    return None


# -- the faults ------------------------------------------------------------------------------------


def inflict(
    args: argparse.Namespace,
    stack: RunningStack,
    engine: sqlalchemy.Engine,
    submissions: Submissions,
    chaos: Chaos,
    rng: random.Random,
    started: float,
) -> None:
    """Fault the stack until every accepted job has ended (or the deadline passes)."""
    window = args.jobs / args.rate
    one_offs = {kind: started + at * window for kind, at in ONE_OFF_AT.items()}
    frozen: dict[int, tuple[psutil.Process, float]] = {}  # pid -> (process, when to continue it)
    next_fault = time.monotonic() + rng.expovariate(1 / args.every)
    next_report = next_count = 0.0
    ended = 0
    while time.monotonic() - started < args.deadline:
        now = time.monotonic()
        for pid, (process, resume_at) in list(frozen.items()):
            if now >= resume_at:
                send(process, signal.SIGCONT)
                del frozen[pid]
        if now >= next_count:
            next_count = now + 1.0
            accepted = list(submissions.accepted.values())
            ended = count_ended(engine, accepted)
            if submissions.done.is_set() and not one_offs and ended == len(accepted):
                break
        for kind, due in list(one_offs.items()):
            if now >= due:
                del one_offs[kind]
                one_off(kind, stack, chaos)
        if now >= next_fault:
            fault_a_worker(stack, engine, chaos, rng, frozen)
            next_fault = now + rng.expovariate(1 / args.every)
        if now >= next_report:
            next_report = now + 2.0
            report_progress(args, submissions, chaos, ended, now - started, list(one_offs))
        if stack.process.poll() is not None:
            chaos.note("launcher_died", returncode=stack.process.returncode)
            progress(f"onnx-web run died ({stack.process.returncode}): giving up")
            break
        time.sleep(0.1)
    for process, _ in frozen.values():
        send(process, signal.SIGCONT)


def fault_a_worker(
    stack: RunningStack,
    engine: sqlalchemy.Engine,
    chaos: Chaos,
    rng: random.Random,
    frozen: dict[int, tuple[psutil.Process, float]],
) -> None:
    """SIGKILL a random worker, or SIGSTOP one for twice the lease (a zombie once continued)."""
    candidates = [process for process in stack.workers() if process.pid not in frozen]
    if not candidates:
        return
    victim = rng.choice(candidates)
    worker_id = worker_id_of(victim)
    held = running_job(engine, worker_id)
    if rng.random() < 0.75:
        send(victim, signal.SIGKILL)
        chaos.kills += 1
        chaos.killed.append((worker_id, time.time(), held))
        chaos.note("sigkill", worker=worker_id, pid=victim.pid, job=held[0] if held else None)
    else:
        send(victim, signal.SIGSTOP)
        frozen[victim.pid] = (victim, time.monotonic() + 2 * LEASE_S)
        chaos.stops += 1
        chaos.zombies += held is not None
        if held is not None:
            chaos.frozen_holding.append((victim, worker_id, held))
        chaos.note("sigstop", worker=worker_id, pid=victim.pid, job=held[0] if held else None)


def settle_zombies(stack: RunningStack, chaos: Chaos) -> dict[str, Any]:
    """Wait until every worker frozen while holding a job has ended that attempt or is gone.

    A continued zombie runs on until its lease thread finds the lease lost, and may upload a preview
    or its outputs meanwhile; it deletes them when it is fenced (``JobRunner.discard``). Its row
    ended long ago (another worker finished the job), so the orphans are counted only after its
    summary line: counted earlier, they would be objects still being written, which ``onnx-web gc``
    rightly leaves to their writer.
    """
    started = time.monotonic()
    waiting = list(chaos.frozen_holding)
    while waiting and time.monotonic() - started < ZOMBIE_SETTLE_BOUND_S:
        ended = {
            (entry.get("worker"), entry.get("job"), entry.get("attempt"))
            for entry in stack.logs()
            if entry.get("action") == "job_summary"
        }
        waiting = [
            (process, worker, held)
            for process, worker, held in waiting
            if process.is_running() and (worker, *held) not in ended
        ]
        if waiting:
            time.sleep(0.5)
    return {"zombie_settle_s": round(time.monotonic() - started, 1), "zombies_unsettled": len(waiting)}


def one_off(kind: str, stack: RunningStack, chaos: Chaos) -> None:
    """Restart Postgres, or SIGKILL the api or the S3 server (the supervisor restarts them)."""
    progress(kind.replace("_", " "))
    if kind == "postgres_restart":
        datadir = stack.data_dir / "postgres"
        began = time.monotonic()
        pg_ctl(datadir, "restart", "-m", "immediate", "-w", "-l", str(datadir / "log"))
        chaos.note(kind, seconds=round(time.monotonic() - began, 2))
    else:
        process = stack.api() if kind == "api_kill" else stack.weed()
        send(process, signal.SIGKILL)
        chaos.note(kind, pid=process.pid)


def send(process: psutil.Process, signum: signal.Signals) -> None:
    with contextlib.suppress(psutil.NoSuchProcess):
        process.send_signal(signum)


def worker_id_of(process: psutil.Process) -> str | None:
    try:
        return process.environ().get("ONNX_WEB_WORKER_ID")
    except psutil.Error:
        return None


def running_job(engine: sqlalchemy.Engine, worker_id: str | None) -> tuple[str, int] | None:
    if worker_id is None:
        return None
    try:
        with engine.connect() as conn:
            row = conn.execute(
                sqlalchemy.text("SELECT name, attempt FROM jobs WHERE state = 'running' AND worker_id = :w"),
                {"w": worker_id},
            ).first()
    except OperationalError:
        return None  # Postgres is restarting
    return (str(row.name), int(row.attempt)) if row else None


def count_ended(engine: sqlalchemy.Engine, names: list[str], default: int = -1) -> int:
    try:
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
    except OperationalError:
        return default  # Postgres is restarting


def wait_ended(engine: sqlalchemy.Engine, names: list[str], timeout_s: float, *, label: str) -> None:
    deadline = time.monotonic() + timeout_s
    while count_ended(engine, names) < len(names):
        if time.monotonic() > deadline:
            raise RuntimeError(f"the {label} jobs did not end within {timeout_s}s")
        time.sleep(0.2)


def report_progress(
    args: argparse.Namespace,
    submissions: Submissions,
    chaos: Chaos,
    ended: int,
    elapsed: float,
    due: list[str],
) -> None:
    accepted = len(submissions.accepted)
    share = 100 * max(ended, 0) / args.jobs
    filled = int(share / 5)
    done = [kind for kind in ONE_OFF_AT if kind not in due]
    progress(
        f"[{'#' * filled}{'.' * (20 - filled)}] {share:5.1f}%  sent {submissions.sent}/{args.jobs} "
        f"accepted {accepted} ended {max(ended, 0)} | kills {chaos.kills} stops {chaos.stops} "
        f"one-offs done {','.join(done) or '-'} | {elapsed:.0f}s"
    )


# -- the figures -----------------------------------------------------------------------------------


def collect(services: dict[str, str]) -> dict[str, int]:
    """Orphaned output objects before and after ``onnx-web gc``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ONNX_WEB_", "S3_"))}
    env.update(services)
    config = Config.from_env(env)
    engine = make_engine(config.database_url)
    try:
        jobs = JobStore.configured(engine, config)
        store = from_config(config)
        before = collect_orphans(jobs, store, dry_run=True)
        ran = subprocess.run(
            [sys.executable, "-m", "service.cli", "gc"],
            cwd=REPO_ROOT,
            env=env,
            capture_output=True,
            text=True,
        )
        after = collect_orphans(jobs, store, dry_run=True)
    finally:
        engine.dispose()
    return {
        "output_objects": before.objects,
        "orphans_before_gc": before.orphans,
        "orphans_after_gc": after.orphans,
        "gc_exit_code": ran.returncode,
    }


def rows(engine: sqlalchemy.Engine, names: list[str]) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        found = conn.execute(sqlalchemy.text("SELECT * FROM jobs WHERE name = ANY(:names)"), {"names": names})
        return [dict(row._mapping) for row in found]


def stored_keys(services: dict[str, str], names: list[str]) -> set[str]:
    config = Config.from_env({**services})
    store = from_config(config)
    return {key for name in names for key in store.list_keys(f"outputs/{name}/")}


def percentile(values: list[float], q: float) -> float | None:
    """The ``q`` quantile (0-1) by nearest rank; None without values."""
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))], 2)


def measure(
    args: argparse.Namespace,
    stack: RunningStack,
    engine: sqlalchemy.Engine,
    baseline: Submissions,
    submissions: Submissions,
    chaos: Chaos,
    elapsed: float,
    collected: dict[str, Any],
) -> dict[str, Any]:
    """The chaos row of spec/reliability.md §6, from the rows, the bucket and the logs."""
    names = list(submissions.accepted.values())
    found = rows(engine, names)
    by_state = {state: sum(row["state"] == state for row in found) for state in TERMINAL}
    ended = sum(by_state.values())
    lost = (len(names) - ended) + (args.jobs - len(names))
    stored = stored_keys(stack.services(), [row["name"] for row in found if row["state"] == "success"])
    duplicate_visible = missing = 0
    for row in found:
        keys = list((row["output_keys"] or {}).values())
        attempts = {key.split("/")[2] for key in keys}
        duplicate_visible += int(bool(keys) and attempts != {str(row["attempt"])})
        missing += sum(key not in stored for key in keys)
    by_name = {row["name"]: row for row in found}
    rescue_times = []
    for worker_id, killed_at, held in chaos.killed:
        if held is None or held[0] not in by_name:
            continue
        entries = [
            e
            for e in by_name[held[0]]["errors"]
            if e["reason"] == "rescued" and e["worker"] == worker_id and e["attempt"] == held[1]
        ]
        if entries:
            rescue_times.append(datetime.fromisoformat(entries[0]["at"]).timestamp() - killed_at)
    logs = stack.logs()
    executions: dict[str, int] = {}
    for entry in logs:
        if entry.get("action") == "job_summary" and entry.get("job") in by_name:
            executions[entry["job"]] = executions.get(entry["job"], 0) + 1
    restarts: dict[str, int] = {}
    for entry in logs:
        if entry.get("action") == "process_exit":
            restarts[entry["child"]] = restarts.get(entry["child"], 0) + 1
    e2e = {
        phase: [
            (row["finished_at"] - row["created_at"]).total_seconds()
            for row in phase_rows
            if row["finished_at"] is not None
        ]
        for phase, phase_rows in (
            ("baseline", rows(engine, list(baseline.accepted.values()))),
            ("chaos", found),
        )
    }
    dependency_waits: dict[str, int] = {}
    for entry in logs:
        if entry.get("action") == "dependency_wait":
            dependency_waits[entry["dependency"]] = dependency_waits.get(entry["dependency"], 0) + 1
    return {
        "seed": args.seed,
        "git_sha": git_sha(),
        "workers": args.workers,
        "chaos_wall_s": round(elapsed, 1),
        "submitted": args.jobs,
        "accepted": len(names),
        "client_retries": submissions.retries,
        "refused": submissions.refused[:10],
        "completed": by_state["success"],
        "failed": by_state["failed"],
        "cancelled": by_state["cancelled"],
        "lost": lost,
        "duplicate_rows": len(found) - len({row["idempotency_key"] for row in found}),
        "duplicate_executions": sum(max(row["attempt"] - 1, 0) for row in found),
        "jobs_run_more_than_once": sum(count > 1 for count in executions.values()),
        "duplicate_visible_outputs": duplicate_visible,
        "recorded_outputs_missing": missing,
        "sigkills": chaos.kills,
        "sigstops": chaos.stops,
        "zombies": chaos.zombies,
        "one_offs": [e for e in chaos.events if e["event"] in ONE_OFF_AT],
        "supervisor_restarts": restarts,
        "dependency_waits": dependency_waits,
        "rescues": sum(row["rescue_count"] for row in found),
        "fenced_commits": sum(entry.get("action") == "fenced" for entry in logs),
        "time_to_rescue_p50_s": percentile(rescue_times, 0.5),
        "time_to_rescue_p99_s": percentile(rescue_times, 0.99),
        "e2e_p50_s": {phase: percentile(values, 0.5) for phase, values in e2e.items()},
        "e2e_p99_s": {phase: percentile(values, 0.99) for phase, values in e2e.items()},
        **collected,
        "launcher_alive_through_chaos": stack.process.poll() is None,
    }


def stop(stack: RunningStack) -> dict[str, Any]:
    """SIGTERM the process group; how long the stop took and what it left running."""
    began = time.monotonic()
    stack.signal_group(signal.SIGTERM)
    try:
        code: int | None = stack.process.wait(STOP_BOUND_S)
    except subprocess.TimeoutExpired:
        code = None
    stopped_in = time.monotonic() - began
    left = psutil.wait_procs(leftovers(stack.data_dir, stack.seen), timeout=5)[1]
    if left:
        progress(f"left running after the stop:\n{describe(left)}")
    return {"stop_exit_code": code, "stop_s": round(stopped_in, 1), "left_running_after_stop": len(left)}


def checks(figures: dict[str, Any]) -> list[dict[str, Any]]:
    """The pass rules; ``gate`` ones decide the exit status, the others are reported.

    A figure that could not be measured (the stack died with its database) fails its rule.
    """
    rescue_p99 = figures.get("time_to_rescue_p99_s")
    gates = {
        "lost = 0": figures.get("lost") == 0,
        "duplicate visible outputs = 0": figures.get("duplicate_visible_outputs") == 0,
        "recorded outputs missing = 0": figures.get("recorded_outputs_missing") == 0,
        "one row per idempotency key": figures.get("duplicate_rows") == 0,
        "the launcher survived the chaos": figures.get("launcher_alive_through_chaos") is True,
        f"SIGTERM stopped the stack within {STOP_BOUND_S:.0f}s, exit 0": figures.get("stop_exit_code") == 0,
        "nothing left running": figures.get("left_running_after_stop") == 0,
        f"zombies ended within {ZOMBIE_SETTLE_BOUND_S:.0f}s": figures.get("zombies_unsettled") == 0,
        "orphans after gc = 0": figures.get("orphans_after_gc") == 0,
    }
    reported = {
        f"time-to-rescue p99 <= {RESCUE_BUDGET_S:.1f}s": rescue_p99 is None or rescue_p99 <= RESCUE_BUDGET_S,
    }
    return [{"rule": rule, "pass": ok, "gate": True} for rule, ok in gates.items()] + [
        {"rule": rule, "pass": ok, "gate": False} for rule, ok in reported.items()
    ]


def git_sha() -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True, cwd=REPO_ROOT
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def print_summary(report: dict[str, Any]) -> None:
    """The headline figures and the pass rules."""
    print("\n| figure | value |\n| --- | --- |")
    for key in SUMMARY:
        print(f"| {key} | {report.get(key, 'not measured')} |")
    print("\n| pass rule | result |\n| --- | --- |")
    for check in report["checks"]:
        verdict = "pass" if check["pass"] else "FAIL"
        print(f"| {check['rule']} | {verdict if check['gate'] else verdict + ' (reported)'} |")


if __name__ == "__main__":
    sys.exit(main())
