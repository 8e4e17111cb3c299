#!/usr/bin/env python3
"""``make test-load``: locust against a local stack, on loopback only, for a bounded time.

Starts the whole stack (embedded Postgres, SeaweedFS, gunicorn, one worker; the demo models are
built into a temporary folder unless ``--models`` names one), seeds ten small txt2img jobs and waits
for them, then runs ``bench/locustfile.py`` headless for ``--seconds``: status polls of the ten
names, output fetches and new submissions together. Writes p50/p95/p99 per route, the request rate,
the 5xx count and the api's peak RSS to ``--out``, and exits 1 if any request got a 5xx (or failed
otherwise). The stack's log is kept next to ``--out`` for the tracebacks.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

from bench.local import RssSampler, api_pid, running_stack
from service.stack import LocalStack

LOCUSTFILE = Path(__file__).with_name("locustfile.py")
SEED_JOBS = 10
SEED_TIMEOUT_S = 300.0
PERCENTILES = {"p50_ms": 0.50, "p95_ms": 0.95, "p99_ms": 0.99}


def seed_jobs(stack: LocalStack, count: int) -> tuple[list[str], list[str]]:
    """Submit ``count`` demo txt2img jobs and wait for them; their names and output files."""
    with httpx.Client(base_url=stack.url, timeout=60) as client:
        names = []
        for seed in range(count):
            body = {"prompt": "a lighthouse at dusk", "steps": 1, "width": 128, "height": 128, "seed": seed}
            answer = client.post("/api/txt2img", json=body)
            answer.raise_for_status()
            names.append(answer.json()["name"])
        deadline = time.monotonic() + SEED_TIMEOUT_S
        while time.monotonic() < deadline:
            records = client.get("/api/job/status", params={"jobs": ",".join(names)}).json()
            if all(record["status"] == "success" for record in records):
                break
            failed = [record for record in records if record["status"] in ("failed", "cancelled")]
            if failed:
                raise RuntimeError(f"a seed job did not succeed: {failed[0]}")
            time.sleep(0.5)
        else:
            raise RuntimeError(f"the seed jobs did not finish within {SEED_TIMEOUT_S}s")
    outputs = [
        file
        for record in records
        for image in record["outputs"]
        for file in (image, f"{image}.json", *record.get("thumbnails", []))
    ]
    return names, outputs


@contextlib.contextmanager
def paused_workers(stack: LocalStack, pause: bool) -> Iterator[None]:
    """With ``pause``, the stack's workers are stopped (SIGSTOP) for the block and go on after it;
    the supervisor sees them alive, and they hold no job once the seed jobs are done."""
    workers = [child.pid for child in stack.children[1:]] if pause else []
    for pid in workers:
        os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        for pid in workers:
            os.kill(pid, signal.SIGCONT)


def run_locust(
    stack: LocalStack,
    *,
    seconds: int,
    users: int,
    spawn_rate: float,
    processes: int,
    prefix: Path,
    env: dict[str, str],
) -> None:
    """Run the locustfile headless; its final stats go to ``<prefix>.json``. The figures start once
    every user has started (``--reset-stats``): they describe ``users`` clients, not the ramp."""
    command = [
        sys.executable,
        "-m",
        "locust",
        "-f",
        str(LOCUSTFILE),
        "--headless",
        "--only-summary",
        "--host",
        stack.url,
        "--users",
        str(users),
        "--spawn-rate",
        str(spawn_rate),
        "--reset-stats",
        "--run-time",
        f"{seconds}s",
        "--stop-timeout",
        "10",
        "--json-file",
        str(prefix),
        "--exit-code-on-error",
        "0",
        *(["--processes", str(processes)] if processes > 1 else []),
    ]
    subprocess.run(command, check=True, env=env, timeout=seconds + 120)


def read_stats(path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """Per-route figures and the aggregate, from locust's final ``--json-file``."""
    entries = json.loads(path.read_text())
    routes = {f"{entry['method']} {entry['name']}": figures([entry]) for entry in entries}
    return routes, figures(entries)


def figures(entries: list[dict[str, Any]]) -> dict[str, Any]:
    """Requests, failures, percentiles and rate of one or more of locust's stats entries together."""
    histogram: Counter[int] = Counter()
    for entry in entries:
        histogram.update({int(ms): count for ms, count in entry["response_times"].items()})
    requests = sum(entry["num_requests"] for entry in entries)
    started = min((entry["start_time"] for entry in entries), default=0.0)
    ended = max((entry["last_request_timestamp"] or started for entry in entries), default=0.0)
    return {
        "requests": requests,
        "failures": sum(entry["num_failures"] for entry in entries),
        **{name: percentile(histogram, share) for name, share in PERCENTILES.items()},
        "requests_per_s": round(requests / (ended - started), 1) if ended > started else None,
    }


def percentile(histogram: Counter[int], share: float) -> int | None:
    """The smallest response time (ms, as locust rounds it) that ``share`` of the requests did not exceed."""
    total = sum(histogram.values())
    seen = 0
    for ms in sorted(histogram):
        seen += histogram[ms]
        if seen >= share * total:
            return ms
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=60, help="how long locust runs (default 60)")
    parser.add_argument("--users", type=int, default=10, help="simulated GUIs (default 10)")
    parser.add_argument(
        "--spawn-rate",
        type=float,
        default=50.0,
        help="users started per second (default 50); the run's figures begin once all have started",
    )
    parser.add_argument(
        "--api-only",
        action="store_true",
        help="pause the worker (SIGSTOP) once the seed jobs are done, so the api has the machine as "
        "on an api node of a cluster; submissions then queue",
    )
    parser.add_argument(
        "--think",
        default="0.05,0.25",
        help="seconds each GUI waits between its requests, MIN,MAX (default 0.05,0.25: a busy tab; "
        "1,3 is a person's GUI polling about once a second or two)",
    )
    parser.add_argument(
        "--api-workers", type=int, default=2, help="gunicorn processes of the api (default 2)"
    )
    parser.add_argument(
        "--locust-processes",
        type=int,
        default=1,
        help="locust processes generating the load (default 1; one locust process saturates one core)",
    )
    parser.add_argument("--out", type=Path, default=Path("bench-results/load.json"))
    parser.add_argument(
        "--models", type=Path, help="a models folder to use (default: demo models in a temp dir)"
    )
    args = parser.parse_args(argv)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="onnx-web-load-") as scratch:
        data = Path(scratch)
        try:
            with running_stack(
                data / "stack", workers=1, api_workers=args.api_workers, models_path=args.models
            ) as stack:
                print(f"stack up at {stack.url}; seeding {SEED_JOBS} jobs", flush=True)
                names, outputs = seed_jobs(stack, SEED_JOBS)
                env = {
                    **os.environ,
                    "LOAD_JOBS": json.dumps(names),
                    "LOAD_OUTPUTS": json.dumps(outputs),
                    "LOAD_FAILURES": str(data / "failures.json"),
                    "LOAD_THINK_S": args.think,
                }
                print(f"locust: {args.users} users for {args.seconds}s", flush=True)
                with RssSampler(api_pid(stack)) as rss, paused_workers(stack, args.api_only):
                    run_locust(
                        stack,
                        seconds=args.seconds,
                        users=args.users,
                        spawn_rate=args.spawn_rate,
                        processes=args.locust_processes,
                        prefix=data / "locust",
                        env=env,
                    )
        finally:
            log = data / "stack" / "stack.log"
            if log.exists():
                shutil.copy(log, args.out.with_suffix(".stack.log"))
        routes, total = read_stats(data / "locust.json")
        failures = json.loads((data / "failures.json").read_text())
    server_errors = sum(failure["count"] for failure in failures if failure["error"].startswith("5xx"))
    result = {
        "seconds": args.seconds,
        "users": args.users,
        "think_s": args.think,
        "spawn_rate": args.spawn_rate,
        "api_only": args.api_only,
        "api_workers": args.api_workers,
        "locust_processes": args.locust_processes,
        "cpu_count": os.cpu_count(),
        "routes": routes,
        "total": total,
        "requests_per_s": total.get("requests_per_s"),
        "status_5xx": server_errors,
        "failures": failures,
        "api_rss": rss.peak.to_dict(),
        "stack_log": str(args.out.with_suffix(".stack.log")),
    }
    args.out.write_text(json.dumps(result, indent=2))
    _print_table(result)
    return 1 if failures else 0


def _print_table(result: dict[str, Any]) -> None:
    print(f"{'route':<28} {'requests':>9} {'p50 ms':>7} {'p95 ms':>7} {'p99 ms':>7} {'req/s':>7}")
    for route, figures in [*result["routes"].items(), ("total", result["total"])]:
        print(
            f"{route:<28} {figures['requests']:>9} {figures['p50_ms']!s:>7} {figures['p95_ms']!s:>7} "
            f"{figures['p99_ms']!s:>7} {figures['requests_per_s']!s:>7}"
        )
    failed = sum(failure["count"] for failure in result["failures"])
    print(f"failed requests: {failed}, of which 5xx: {result['status_5xx']}; api RSS: {result['api_rss']}")


if __name__ == "__main__":
    sys.exit(main())
