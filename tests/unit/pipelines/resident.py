"""This process's resident memory, read from ``/proc/self/status`` (Linux), for tests that compare
what a real run used with what it was estimated or allowed to keep."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def status_bytes(field: str) -> int:
    """A memory field of ``/proc/self/status`` (``VmRSS``, ``VmHWM``) in bytes."""
    with open("/proc/self/status") as status:
        line = next(line for line in status if line.startswith(f"{field}:"))
    return int(line.split()[1]) * 1024


@contextmanager
def peak_rise() -> Iterator[list[int]]:
    """Yield a list that receives, once the block ends, how far the resident memory rose at its
    highest above where it stood when the block began."""
    # Writing 5 resets the high-water mark (VmHWM) to the current resident size.
    Path("/proc/self/clear_refs").write_text("5")
    before = status_bytes("VmRSS")
    rise: list[int] = []
    yield rise
    rise.append(status_bytes("VmHWM") - before)
