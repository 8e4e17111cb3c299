"""Measure queue throughput: claim + complete of no-op jobs by concurrent workers on a real Postgres.

Usage: ``python bench/queue.py --jobs 2000 --workers 8 --out bench-results/queue.json``
(``make bench``). Without ``--database-url`` it starts an embedded PostgreSQL in a temporary
folder. Each worker thread has its own connection and loops claim -> finish_success until the
queue is empty; the figure is completed jobs per second of wall time, with claim latencies.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from service.db import create_database, make_engine, upgrade_head
from service.jobs.store import JobStore, NewJob
from service.stack import EmbeddedPostgres


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, run the benchmark, print and save the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=2000, help="no-op jobs to enqueue before the run")
    parser.add_argument(
        "--workers", type=int, default=8, help="concurrent claimers, each with its own connection"
    )
    parser.add_argument(
        "--database-url", help="an existing server's admin URL (default: embedded PostgreSQL)"
    )
    parser.add_argument("--out", type=Path, help="write the figures as JSON here")
    args = parser.parse_args(argv)

    folder = None
    server = None
    admin_url = args.database_url
    if admin_url is None:
        folder = Path(tempfile.mkdtemp(prefix="onnx-web-bench-pg-"))
        server = EmbeddedPostgres(folder / "data")
        admin_url = server.start()
    try:
        result = run(admin_url, jobs=args.jobs, workers=args.workers)
    finally:
        if server is not None:
            server.stop()
        if folder is not None:
            shutil.rmtree(folder, ignore_errors=True)

    print(
        f"queue: {result['jobs_per_s']:.0f} jobs/s "
        f"(claim + complete, {args.workers} workers, {args.jobs} jobs); "
        f"claim p50 {result['claim_p50_ms']:.2f} ms, p99 {result['claim_p99_ms']:.2f} ms"
    )
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    return 0


def run(admin_url: str, *, jobs: int, workers: int) -> dict[str, Any]:
    """Enqueue ``jobs`` no-op jobs in a fresh database, then drain them with ``workers`` threads."""
    url = create_database(admin_url, f"bench_{uuid.uuid4().hex[:12]}")
    upgrade_head(url)
    engine = make_engine(url, pool_size=workers + 1, max_overflow=0)
    store = JobStore(engine, lease_s=30.0, affinity_window_s=30.0)
    for index in range(jobs):
        job_id = uuid.uuid4()
        store.enqueue(
            NewJob(
                id=job_id,
                name=f"bench_{index}_{job_id.hex}",
                kind="txt2img",
                chain={"stages": []},
                model=f"model-{index % 4}",
                platform=None,
                max_attempts=3,
            )
        )

    latencies: list[list[float]] = [[] for _ in range(workers)]
    completed = [0] * workers
    start = threading.Barrier(workers + 1)

    def work(slot: int) -> None:
        worker_id = f"bench-{slot}"
        start.wait()
        while True:
            began = time.perf_counter()
            job = store.claim(worker_id, platform="cpu", held_models=[f"model-{slot % 4}"])
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
    for thread in threads:
        thread.start()
    start.wait()
    began = time.perf_counter()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - began
    engine.dispose()

    claims_ms = sorted(1000 * value for values in latencies for value in values)
    if sum(completed) != jobs:
        raise RuntimeError(f"completed {sum(completed)} of {jobs} jobs")
    return {
        "benchmark": "queue_claim_complete",
        "jobs": jobs,
        "workers": workers,
        "seconds": round(elapsed, 3),
        "jobs_per_s": jobs / elapsed,
        "claim_p50_ms": statistics.median(claims_ms),
        "claim_p99_ms": claims_ms[min(len(claims_ms) - 1, int(len(claims_ms) * 0.99))],
    }


if __name__ == "__main__":
    sys.exit(main())
