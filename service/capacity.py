"""How much memory a worker may give one job: what it announces, and what it claims by.

A CPU worker counts host memory: the container's cgroup limit when there is one, else the
machine's. A CUDA worker counts its one GPU's memory, read from
``nvidia-smi``. ``ONNX_WEB_WORKER_MEMORY`` overrides either. A share (``HEADROOM``) is kept back
for what the estimate does not count. Unknown capacity (no cgroup, no ``nvidia-smi``) announces
nothing, and such a worker claims any job, as before.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
from pathlib import Path

from pipelines.memory import MemoryKind

log = logging.getLogger(__name__)

#: The share of the device a job's estimate may use.
HEADROOM = 0.9
CGROUP_V2_LIMIT = Path("/sys/fs/cgroup/memory.max")
#: cgroup v2's event counters of this container, ``oom_kill`` among them (descendants included).
CGROUP_V2_EVENTS = Path("/sys/fs/cgroup/memory.events")
CGROUP_V1_LIMIT = Path("/sys/fs/cgroup/memory/memory.limit_in_bytes")
MEMINFO = Path("/proc/meminfo")
#: cgroup v1 reports "no limit" as a number near 2**63.
NO_LIMIT = 2**60


def memory_kind(platform: str) -> MemoryKind:
    """``cpu`` workers count host memory; every accelerator counts its own."""
    return "cpu" if platform == "cpu" else "gpu"


def worker_memory(platform: str, device: int | None, *, configured: int | None) -> int | None:
    """The bytes one job may use on this worker, or None when they cannot be known.

    Args:
        platform: the worker's platform (``cpu``, ``cuda``…).
        device: the CUDA device index, when pinned to one.
        configured: ``ONNX_WEB_WORKER_MEMORY``, used as given (no headroom taken); ``onnx-web
            run`` sets it to each local worker's share of the machine.
    """
    if configured is not None:
        return configured
    total = host_memory() if memory_kind(platform) == "cpu" else gpu_memory(device or 0)
    return None if total is None else int(total * HEADROOM)


def host_memory() -> int | None:
    """The container's memory limit, or the machine's memory when it has none."""
    limits = [_read_int(CGROUP_V2_LIMIT), _read_int(CGROUP_V1_LIMIT), _meminfo_total()]
    known = [limit for limit in limits if limit is not None and limit < NO_LIMIT]
    return min(known) if known else None


def gpu_memory(device: int) -> int | None:
    """Total memory of CUDA device ``device``, from ``nvidia-smi`` (None without it)."""
    tool = shutil.which("nvidia-smi")
    if tool is None:
        return None
    try:
        out = subprocess.run(
            [tool, f"--id={device}", "--query-gpu=memory.total", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout
        return int(out.strip().splitlines()[0]) * 1024**2
    except (OSError, subprocess.SubprocessError, ValueError, IndexError):
        log.warning("could not read the GPU's memory from nvidia-smi", extra={"device": device})
        return None


def oom_kills(events: Path = CGROUP_V2_EVENTS) -> int | None:
    """How many processes the kernel's OOM killer has killed in this cgroup (None: not readable).

    ``onnx-web run`` reads it when a worker dies by SIGKILL: a rise since the last reading means
    the kernel killed it for memory, so the jobs it held end as ``oom`` instead of being retried.
    """
    try:
        lines = events.read_text().splitlines()
    except OSError:
        return None
    counts = dict(line.split(maxsplit=1) for line in lines if " " in line)
    value = counts.get("oom_kill", "")
    return int(value) if value.isdigit() else None


def _read_int(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def _meminfo_total() -> int | None:
    try:
        lines = MEMINFO.read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) * 1024
    return None
