"""A local stack for the load and fuzz runs: its processes' output kept in one log file, the api's
memory sampled while it serves.

``running_stack`` starts ``service.stack.LocalStack`` (embedded Postgres, SeaweedFS, gunicorn and
its workers) with the children's stdout and stderr sent to ``<data>/stack.log``, so a 5xx found by a
run can be matched to the traceback the api logged. ``RssSampler`` reads the resident memory of the
gunicorn master and its workers from ``/proc`` (through psutil) and keeps the peak.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import psutil

from service.stack import LocalStack, StackOptions, free_port

RSS_INTERVAL_S = 0.25


@contextlib.contextmanager
def _output_to(path: Path) -> Iterator[None]:
    """Send this process's stdout and stderr, and so its children's, to ``path`` for a while."""
    path.parent.mkdir(parents=True, exist_ok=True)
    saved = [os.dup(fd) for fd in (1, 2)]
    with path.open("ab") as log:
        try:
            for fd in (1, 2):
                os.dup2(log.fileno(), fd)
            yield
        finally:
            for fd, copy in zip((1, 2), saved, strict=True):
                os.dup2(copy, fd)
                os.close(copy)


@contextlib.contextmanager
def _environ(values: Mapping[str, str]) -> Iterator[None]:
    """Set environment variables for the children started inside (LocalStack copies ``os.environ``)."""
    before = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in before.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@contextlib.contextmanager
def running_stack(
    data_dir: Path,
    *,
    workers: int,
    api_workers: int = 2,
    models_path: Path | None = None,
    environ: Mapping[str, str] | None = None,
) -> Iterator[LocalStack]:
    """A started stack on a free loopback port; stopped on exit. Its output goes to ``stack.log``."""
    options = StackOptions(
        data_dir=data_dir,
        port=free_port(),
        workers=workers,
        api_workers=api_workers,
        models_path=models_path or data_dir / "models",
    )
    stack = LocalStack(options)
    log_path = stack_log(stack)
    try:
        with _output_to(log_path), _environ(environ or {}):
            stack.start()
        yield stack
    finally:
        with _output_to(log_path):
            stack.stop()


def stack_log(stack: LocalStack) -> Path:
    """Where ``running_stack`` sends the stack's output."""
    return stack.options.data_dir / "stack.log"


def api_pid(stack: LocalStack) -> int:
    """The gunicorn master's pid (``onnx-web api`` execs gunicorn)."""
    return stack.children[0].pid


@dataclass
class RssPeak:
    """The largest resident memory seen, in bytes."""

    #: The gunicorn master and all its workers together.
    total: int = 0
    #: The largest single gunicorn worker.
    worker: int = 0
    samples: int = 0

    def to_dict(self) -> dict[str, float | int]:
        mib = 1024 * 1024
        return {
            "peak_total_mib": round(self.total / mib, 1),
            "peak_worker_mib": round(self.worker / mib, 1),
            "samples": self.samples,
        }


class RssSampler:
    """Samples a process tree's resident memory in a thread until stopped; keeps the peak."""

    def __init__(self, pid: int, interval_s: float = RSS_INTERVAL_S) -> None:
        self.root = psutil.Process(pid)
        self.interval_s = interval_s
        self.peak = RssPeak()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def __enter__(self) -> RssSampler:
        self.sample()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.sample()

    def sample(self) -> None:
        """Read the master's and its workers' RSS once."""
        try:
            master = self.root.memory_info().rss
            workers = []
            for child in self.root.children(recursive=True):
                with contextlib.suppress(psutil.NoSuchProcess):
                    workers.append(child.memory_info().rss)
        except psutil.NoSuchProcess:
            return
        self.peak.total = max(self.peak.total, master + sum(workers))
        self.peak.worker = max(self.peak.worker, *workers, 0)
        self.peak.samples += 1
