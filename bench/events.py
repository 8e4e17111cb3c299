"""How soon a progress write reaches a client of ``GET /api/job/events``: p50/p95/p99.

Starts the local stack without workers (``bench.local.running_stack``), queues one job, claims it
as a stand-in worker and writes its progress ``--writes`` times through the real ``JobStore``,
``--interval`` apart, while an HTTP client reads the job's event stream through gunicorn. Each
latency runs from the moment the progress write's transaction returned to the moment the client
read the event carrying that step (wall clock on both sides, one machine). Writes are spaced well
past the latency, so every write is its own event. The reader is an HTTP client, or
(``--client browser``) the browser's own ``EventSource`` in headless Chromium.

    python -m bench.events --writes 200 --out bench-results/events.json
    python -m bench.events --client browser --writes 200 --out bench-results/events-browser.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

from bench.local import running_stack
from service.db import make_engine
from service.jobs.store import JobStore
from service.stack import STATE_FILE, LocalStack

#: The browser side of ``--client browser``: Chromium (playwright-core, from the GUI's packages)
#: opens the job's stream with the browser's own ``EventSource`` and prints each event's arrival.
BROWSER_PROBE = Path(__file__).resolve().parents[1] / "gui" / "scripts" / "sse-probe.mjs"


@contextlib.contextmanager
def http_client_reads(base_url: str, name: str, writes: int) -> Iterator[dict[int, float]]:
    """Read the job's stream with an HTTP client in a thread; yields step -> wall-clock arrival."""
    arrived: dict[int, float] = {}
    opened = threading.Event()

    def read() -> None:
        with (
            httpx.Client(base_url=base_url, timeout=30) as client,
            client.stream("GET", "/api/job/events", params={"jobs": name}) as stream,
        ):
            for line in stream.iter_lines():
                opened.set()
                if line.startswith("data: "):
                    record = json.loads(line[6:])
                    if record.get("status") == "running":
                        arrived.setdefault(record["steps"]["current"], time.time())
                    if len(arrived) > writes:
                        return

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    opened.wait(30)
    yield arrived
    reader.join(timeout=30)


@contextlib.contextmanager
def browser_reads(base_url: str, name: str, writes: int) -> Iterator[dict[int, float]]:
    """Read the job's stream in headless Chromium; yields step -> wall-clock arrival in the page."""
    arrived: dict[int, float] = {}
    opened = threading.Event()
    probe = subprocess.Popen(
        ["node", str(BROWSER_PROBE), base_url, name],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=BROWSER_PROBE.parents[1],
    )
    assert probe.stdout is not None and probe.stdin is not None

    def read() -> None:
        assert probe.stdout is not None
        for line in probe.stdout:
            word, _, at_ms = line.strip().partition(" ")
            if word == "open":
                opened.set()
            elif word.isdigit():
                arrived.setdefault(int(word), float(at_ms) / 1000)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    if not opened.wait(60):
        probe.kill()
        raise RuntimeError("the browser did not open the event stream within 60 s")
    try:
        yield arrived
        deadline = time.monotonic() + 30
        while len(arrived) < writes and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        probe.stdin.close()  # the probe closes the browser when its stdin ends
        probe.wait(timeout=30)


READERS = {"http": http_client_reads, "browser": browser_reads}


def measure(stack: LocalStack, writes: int, interval_s: float, client: str = "http") -> dict[str, Any]:
    """Latencies, in ms, from each progress commit to its event at the client."""
    # The running stack records its services' settings in its data folder (``service.stack``).
    state = json.loads((stack.options.data_dir / STATE_FILE).read_text())
    jobs = JobStore(make_engine(state["env"]["DATABASE_URL"]), lease_s=600, affinity_window_s=0)
    name = httpx.post(f"{stack.url}/api/txt2img", params={"prompt": "bench", "steps": "10"}).json()["name"]
    job = jobs.claim("bench-worker", platform="cpu", held_models=())
    assert job is not None and job.name == name
    committed: dict[int, float] = {}
    with READERS[client](stack.url, name, writes) as arrived:
        time.sleep(0.5)  # the stream has sent its first record and waits for changes
        for step in range(1, writes + 1):
            jobs.progress(job.id, "bench-worker", job.attempt, (step, writes + 1), (0, 1), (0, 0))
            # Wall clock on both sides: the browser reports its arrivals as epoch milliseconds.
            committed[step] = time.time()
            time.sleep(interval_s)
    latencies = sorted((arrived[step] - committed[step]) * 1000 for step in committed if step in arrived)
    return {
        "client": client,
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
    parser.add_argument(
        "--client",
        choices=sorted(READERS),
        default="http",
        help="http: an HTTP client through gunicorn; browser: EventSource in headless Chromium",
    )
    parser.add_argument("--out", type=Path, help="write the figures to this JSON file")
    args = parser.parse_args()
    with (
        tempfile.TemporaryDirectory(prefix="onnx-web-events-") as data,
        running_stack(Path(data), workers=0) as stack,
    ):
        figures = measure(stack, args.writes, args.interval, args.client)
    print(json.dumps(figures, indent=2))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
