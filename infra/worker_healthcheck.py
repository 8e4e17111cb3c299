"""The worker images' HEALTHCHECK: is the container's worker process still a running worker?

The worker serves no HTTP. Whether it does useful work shows in its row of the workers table
(refreshed every rescue interval, listed by ``GET /api/worker/status``), and a dead worker's jobs
come back through lease expiry, so no probe needs the database. What the container alone can tell:
its worker process exists, is ``onnx-web worker``, and is neither a zombie nor stopped (a SIGSTOPped
or cgroup-frozen worker keeps its container up while claiming nothing).

Usage: ``python worker_healthcheck.py [PID]`` (default 1, the container's main process); exits 0 when
healthy, 1 with the reason on stderr otherwise.
"""

from __future__ import annotations

import sys
from pathlib import Path

#: /proc/PID/status states of a process that will not run again until something else acts on it.
NOT_RUNNING = {"Z": "a zombie", "X": "dead", "T": "stopped", "t": "stopped by a tracer"}


def problem(pid: int) -> str | None:
    """Why process ``pid`` is not a healthy worker, or None when it is."""
    proc = Path("/proc") / str(pid)
    try:
        argv = (proc / "cmdline").read_bytes().split(b"\0")
        status = (proc / "status").read_text()
    except OSError as err:
        return f"no process {pid}: {err.strerror}"
    if b"worker" not in argv:
        return f"process {pid} is not a worker: {b' '.join(argv).decode(errors='replace').strip()}"
    state = next((line.split()[1] for line in status.splitlines() if line.startswith("State:")), "?")
    if state in NOT_RUNNING:
        return f"the worker (process {pid}) is {NOT_RUNNING[state]}"
    return None


def main(argv: list[str]) -> int:
    found = problem(int(argv[1]) if len(argv) > 1 else 1)
    if found:
        print(found, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
