"""Measure queue throughput: claim + complete of no-op jobs by concurrent workers on a real Postgres.

Usage: ``python bench/queue.py --jobs 2000 --pending 100000 --workers 8 --out bench-results/queue.json``
(``make bench``). Without ``--database-url`` it starts an embedded PostgreSQL in a temporary
folder. ``--jobs`` plus ``--pending`` no-op jobs are inserted in one statement; each worker thread
has its own connection and loops claim -> finish_success until ``--jobs`` have been claimed, so
``--pending`` jobs are still waiting at the end: the claim is timed against a queue that deep.
The figure is completed jobs per second of wall time, with claim latencies.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing
import os
import statistics
import sys
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import sqlalchemy

from service.db import create_database, make_engine, upgrade_head
from service.jobs.probe import QueueProbe
from service.jobs.store import JobStore
from service.stack import EmbeddedPostgres, temporary_postgres

#: The models the no-op jobs name, round robin; worker ``i`` holds ``MODELS[i % len(MODELS)]``.
MODELS = ("model-0", "model-1", "model-2", "model-3")
#: Long enough that every claim of a run ranks the held-model jobs: the costlier path of the claim.
AFFINITY_WINDOW_S = 3600.0


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, run the benchmark, print and save the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=2000, help="no-op jobs claimed and completed")
    parser.add_argument(
        "--pending", type=int, default=0, help="jobs still waiting behind them when the run ends"
    )
    parser.add_argument(
        "--workers", type=int, default=8, help="concurrent claimers, each with its own connection"
    )
    parser.add_argument(
        "--processes",
        type=int,
        default=1,
        help="claimer processes, each with --workers threads (more than one gets past one "
        "interpreter's lock on a machine with the cores for it)",
    )
    parser.add_argument(
        "--database-url", help="an existing server's admin URL (default: embedded PostgreSQL)"
    )
    parser.add_argument(
        "--waits",
        action="store_true",
        help="sample what the claimers' Postgres backends wait on (pg_stat_activity, every 20 ms)",
    )
    parser.add_argument(
        "--postgres-cores",
        type=int,
        default=0,
        help="pin the embedded PostgreSQL to the first N cores and the claimers to the rest, so "
        "that one host stands in for a database server and separate worker machines (default: "
        "no pinning)",
    )
    parser.add_argument("--out", type=Path, help="write the figures as JSON here")
    args = parser.parse_args(argv)
    cores = sorted(os.sched_getaffinity(0))
    if args.postgres_cores and (args.database_url or not 0 < args.postgres_cores < len(cores)):
        parser.error(f"--postgres-cores needs the embedded server and fewer than {len(cores)} cores")
    postgres_cores, claimer_cores = cores[: args.postgres_cores], cores[args.postgres_cores :]

    with postgres(args.database_url) as (admin_url, server):
        if server is not None and postgres_cores:
            server.pin(postgres_cores)
            os.sched_setaffinity(0, claimer_cores)
        result = run(
            admin_url,
            jobs=args.jobs,
            workers=args.workers,
            pending=args.pending,
            processes=args.processes,
            waits=args.waits,
            claimer_cores=claimer_cores if postgres_cores else None,
        )
        if postgres_cores:
            result["postgres_cores"] = len(postgres_cores)

    print(
        f"queue: {result['jobs_per_s']:.0f} jobs/s (claim + complete, {args.processes} x "
        f"{args.workers} workers, {args.jobs} jobs, {args.pending} pending, {os.cpu_count()} cores); "
        f"claim p50 {result['claim_p50_ms']:.2f} ms, p99 {result['claim_p99_ms']:.2f} ms"
    )
    if "waits" in result:
        top = ", ".join(f"{event} {share:.2f}" for event, share in list(result["waits"].items())[:4])
        print(f"backends per sample, by wait: {top}")
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    return 0


@contextmanager
def postgres(admin_url: str | None) -> Iterator[tuple[str, EmbeddedPostgres | None]]:
    """``admin_url`` as it is, or an embedded PostgreSQL in a temporary folder for the block: the
    admin URL and the embedded server (None for a server given by URL)."""
    if admin_url is not None:
        yield admin_url, None
        return
    with temporary_postgres("onnx-web-bench-pg-") as (server, temporary_url):
        yield temporary_url, server


def fresh_database(admin_url: str) -> str:
    """A new, migrated database on the server of ``admin_url``; returns its URL."""
    url = create_database(admin_url, f"bench_{uuid.uuid4().hex[:12]}")
    upgrade_head(url)
    return url


def fill_backlog(engine: sqlalchemy.Engine, count: int, *, chain: dict[str, Any] | None = None) -> None:
    """Insert ``count`` pending jobs at once, younger than ``AFFINITY_WINDOW_S``, naming ``MODELS``
    round robin and running ``chain`` (default: no stages, never run by a real pipeline)."""
    QueueProbe(engine).fill_backlog(count, models=MODELS, chain=chain or {"stages": []})


def percentile_ms(seconds: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (nearest rank) of ``seconds``, in milliseconds; 0 when empty."""
    if not seconds:
        return 0.0
    ordered = sorted(seconds)
    return 1000 * ordered[min(len(ordered) - 1, int(len(ordered) * q / 100))]


def run(
    admin_url: str,
    *,
    jobs: int,
    workers: int,
    pending: int = 0,
    processes: int = 1,
    waits: bool = False,
    claimer_cores: Sequence[int] | None = None,
) -> dict[str, Any]:
    """Claim and complete ``jobs`` no-op jobs with ``processes`` x ``workers`` threads, ``pending``
    more waiting; with ``waits``, also what their backends waited on (``WaitSampler``). With
    ``claimer_cores``, each claimer process runs on those cores only."""
    url = fresh_database(admin_url)
    engine = make_engine(url, pool_size=workers + 1, max_overflow=0)
    sampler = WaitSampler(engine) if waits else None
    try:
        fill_backlog(engine, jobs + pending)
        with sampler or contextlib.nullcontext():
            if processes == 1:
                result = drain(engine, jobs=jobs, workers=workers)
            else:
                result = drain_processes(
                    url, jobs=jobs, workers=workers, processes=processes, cores=claimer_cores
                )
    finally:
        engine.dispose()
    return {
        "benchmark": "queue_claim_complete",
        "pending": pending,
        "processes": processes,
        "cpu_count": os.cpu_count(),
        **result,
        **({"waits": sampler.shares()} if sampler else {}),
    }


class WaitSampler:
    """Counts what the benchmark database's other backends wait on, every ``interval_s``, while open.

    ``shares()`` is the mean number of backends per sample in each ``type:event`` (``CPU`` when a
    backend waits on nothing, ``idle`` when it waits for its client): where a queue that does not
    scale with its claimers spends their time (a lock every commit takes shows as ``Lock:object``).
    """

    def __init__(self, engine: sqlalchemy.Engine, interval_s: float = 0.02) -> None:
        self._engine = engine.execution_options(isolation_level="AUTOCOMMIT")
        self._probe = QueueProbe(engine)
        self._interval_s = interval_s
        self._counts: dict[str, int] = {}
        self._samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="wait-sampler", daemon=True)

    def __enter__(self) -> WaitSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def shares(self) -> dict[str, float]:
        """Mean backends per sample by wait, most first."""
        ranked = sorted(self._counts.items(), key=lambda item: -item[1])
        return {wait: round(count / max(self._samples, 1), 3) for wait, count in ranked}

    def _run(self) -> None:
        with self._engine.connect() as conn:
            while not self._stop.wait(self._interval_s):
                for wait, backends in self._probe.backend_waits(conn):
                    self._counts[wait] = self._counts.get(wait, 0) + backends
                self._samples += 1


def drain_processes(
    url: str, *, jobs: int, workers: int, processes: int, cores: Sequence[int] | None = None
) -> dict[str, Any]:
    """``drain`` in ``processes`` processes at once (on ``cores`` only, if given), the jobs shared
    out; the figures of them all, timed from the first process's start to the last one's end."""
    shares = [jobs // processes + (index < jobs % processes) for index in range(processes)]
    context = multiprocessing.get_context("spawn")
    # Every process starts claiming at once, once all have imported and connected: spawning a dozen
    # interpreters takes a second or more, and a staggered start would time a ramp, not the queue.
    pin = (os.sched_setaffinity, (0, list(cores))) if cores else (None, ())
    with context.Manager() as manager, context.Pool(processes, *pin) as pool:
        ready = manager.Barrier(processes)
        parts = pool.starmap(_drain_share, [(url, share, workers, ready) for share in shares])
    elapsed = max(part["ended_at"] for part in parts) - min(part["started_at"] for part in parts)
    claims = [value for part in parts for value in part["claims_s"]]
    return {
        "jobs": jobs,
        "workers": workers * processes,
        "seconds": round(elapsed, 3),
        "jobs_per_s": jobs / elapsed,
        "claim_p50_ms": statistics.median(claims) * 1000,
        "claim_p99_ms": percentile_ms(claims, 99),
    }


def _drain_share(url: str, jobs: int, workers: int, ready: Any) -> dict[str, Any]:
    """One process of ``drain_processes``: its own engine, its share of the jobs, raw latencies;
    its threads connect first, then wait at ``ready`` (a barrier of all the processes)."""
    engine = make_engine(url, pool_size=workers + 1, max_overflow=0)
    try:
        return drain(engine, jobs=jobs, workers=workers, raw=True, ready=ready)
    finally:
        engine.dispose()


def drain(
    engine: sqlalchemy.Engine, *, jobs: int, workers: int, raw: bool = False, ready: Any = None
) -> dict[str, Any]:
    """Claim and complete exactly ``jobs`` queued jobs with ``workers`` threads; the figures (with
    ``raw``, also every claim's latency and the wall-clock start and end, for merging). With
    ``ready`` (a barrier shared with other processes), the threads start once every process is."""
    store = JobStore(engine, lease_s=30.0, affinity_window_s=AFFINITY_WINDOW_S)
    latencies: list[list[float]] = [[] for _ in range(workers)]
    completed = [0] * workers
    # Claims are counted before they are made, so exactly ``jobs`` are taken whatever the backlog.
    budget = iter(range(jobs))
    budget_lock = threading.Lock()
    start = threading.Barrier(workers + 1)

    def work(slot: int) -> None:
        worker_id = f"bench-{slot}"
        held = [MODELS[slot % len(MODELS)]]
        start.wait()
        while True:
            with budget_lock:
                if next(budget, None) is None:
                    return
            began = time.perf_counter()
            job = store.claim(worker_id, platform="cpu", held_models=held)
            latencies[slot].append(time.perf_counter() - began)
            if job is None:
                return
            name = f"{job.name}_0.png"
            store.finish_success(
                job.id,
                worker_id,
                job.attempt,
                outputs=[name],
                thumbnails=None,
                metadata=[{}],
                output_keys={name: f"outputs/{name}"},
                steps=(0, 0),
                stages=(0, 0),
                tiles=(0, 0),
            )
            completed[slot] += 1

    threads = [threading.Thread(target=work, args=(slot,)) for slot in range(workers)]
    with contextlib.ExitStack() as connections:
        # The pool's connections are opened before the clock starts, as a worker's are.
        for _ in range(workers):
            connections.enter_context(engine.connect())
    for thread in threads:
        thread.start()
    if ready is not None:
        ready.wait()
    start.wait()
    began, started_at = time.perf_counter(), time.time()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - began

    claims = [value for values in latencies for value in values]
    if sum(completed) != jobs:
        raise RuntimeError(f"completed {sum(completed)} of {jobs} jobs")
    figures: dict[str, Any] = {
        "jobs": jobs,
        "workers": workers,
        "seconds": round(elapsed, 3),
        "jobs_per_s": jobs / elapsed,
        "claim_p50_ms": statistics.median(claims) * 1000,
        "claim_p99_ms": percentile_ms(claims, 99),
    }
    if raw:
        figures.update(claims_s=claims, started_at=started_at, ended_at=started_at + elapsed)
    return figures


if __name__ == "__main__":
    sys.exit(main())
