"""How soon a progress write reaches a client of ``GET /api/job/events``: p50/p95/p99.

Starts the local stack without workers (``bench.local.running_stack``), queues one job, claims it
as a stand-in worker and writes its progress ``--writes`` times through the real ``JobStore``,
``--interval`` apart, while an HTTP client reads the job's event stream through gunicorn. Each
latency runs from the moment the progress write's transaction returned to the moment the client
read the event carrying that step. Writes are spaced well past the latency, so every write is
its own event.

    python -m bench.events --writes 200 --out bench-results/events.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx

from bench.local import running_stack
from service.db import make_engine
from service.jobs.store import JobStore
from service.stack import STATE_FILE, LocalStack


def measure(stack: LocalStack, writes: int, interval_s: float) -> dict[str, Any]:
    """Latencies, in ms, from each progress commit to its event at the client."""
    # The running stack records its services' settings in its data folder (``service.stack``).
    state = json.loads((stack.options.data_dir / STATE_FILE).read_text())
    jobs = JobStore(make_engine(state["env"]["DATABASE_URL"]), lease_s=600, affinity_window_s=0)
    with httpx.Client(base_url=stack.url, timeout=30) as client:
        name = client.post("/api/txt2img", params={"prompt": "bench", "steps": "10"}).json()["name"]
        job = jobs.claim("bench-worker", platform="cpu", held_models=())
        assert job is not None and job.name == name
        arrived: dict[int, float] = {}
        opened = threading.Event()

        def read() -> None:
            with client.stream("GET", "/api/job/events", params={"jobs": name}) as stream:
                for line in stream.iter_lines():
                    opened.set()
                    if line.startswith("data: "):
                        record = json.loads(line[6:])
                        if record.get("status") == "running":
                            arrived.setdefault(record["steps"]["current"], time.monotonic())
                        if len(arrived) > writes:
                            return

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        opened.wait(30)
        time.sleep(0.5)  # the stream has sent its first record and waits for changes
        committed: dict[int, float] = {}
        for step in range(1, writes + 1):
            jobs.progress(job.id, "bench-worker", job.attempt, (step, writes + 1), (0, 1), (0, 0))
            committed[step] = time.monotonic()
            time.sleep(interval_s)
        reader.join(timeout=30)
    latencies = sorted((arrived[step] - committed[step]) * 1000 for step in committed if step in arrived)
    return {
        "writes": writes,
        "events_received": len(latencies),
        "p50_ms": round(statistics.median(latencies), 1),
        "p95_ms": round(latencies[int(0.95 * (len(latencies) - 1))], 1),
        "p99_ms": round(latencies[int(0.99 * (len(latencies) - 1))], 1),
        "max_ms": round(latencies[-1], 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--writes", type=int, default=200, help="progress writes to time (default 200)")
    parser.add_argument("--interval", type=float, default=0.05, help="seconds between writes (default 0.05)")
    parser.add_argument("--out", type=Path, help="write the figures to this JSON file")
    args = parser.parse_args()
    with (
        tempfile.TemporaryDirectory(prefix="onnx-web-events-") as data,
        running_stack(Path(data), workers=0) as stack,
    ):
        figures = measure(stack, args.writes, args.interval)
    print(json.dumps(figures, indent=2))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
