"""Deterministic crash points for recovery tests: ``ONNX_WEB_FAULT_POINT=<point>[:<n>]``.

When the variable names a point the worker reaches, the process dies on the spot with
``os._exit(137)`` (what a SIGKILL looks like to its supervisor): no cleanup, no final writes.
``mid_inference:<n>`` fires once the job has reported ``n`` steps. Unset, every check is a
dictionary lookup that returns at once; it is read once, at import.
"""

from __future__ import annotations

import logging
import os

log = logging.getLogger(__name__)

POINTS = ("after_claim", "mid_inference", "after_put_before_commit", "after_commit", "during_heartbeat")
_SPEC = os.environ.get("ONNX_WEB_FAULT_POINT", "")
_POINT, _, _ARG = _SPEC.partition(":")
if _POINT and _POINT not in POINTS:
    raise RuntimeError(f"ONNX_WEB_FAULT_POINT must be one of {', '.join(POINTS)}, got {_POINT!r}")


def fault_point(point: str, *, steps: int = 0) -> None:
    """Die here if the test asked for a crash at ``point`` (after ``steps`` for mid_inference)."""
    if point != _POINT or (point == "mid_inference" and steps < int(_ARG or 1)):
        return
    log.critical("fault point reached: exiting", extra={"action": "fault", "point": point})
    logging.shutdown()
    os._exit(137)
