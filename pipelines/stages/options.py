"""Reading a stage's scalar params: numbers in a range, refused with the field named, never clamped.

Chain params arrive as JSON scalars (contract §10.1), so a whole number may come as ``3`` or
``3.0``; booleans are numbers to Python but never to these readers.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

_UNSET: Any = object()


def whole_number(
    params: Mapping[str, Any],
    field: str,
    default: int = _UNSET,
    *,
    low: int | None = None,
    high: int | None = None,
) -> int:
    """``params[field]`` as an ``int`` from ``low`` to ``high``; missing means ``default`` (or an error)."""
    value = params.get(field)
    if value is None:
        if default is _UNSET:
            raise ValueError(f"{field} is required")
        return default
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{field} must be a whole number, got {value!r}")
    _check_range(field, value, low, high)
    return value


def number(
    params: Mapping[str, Any],
    field: str,
    default: float = _UNSET,
    *,
    low: float | None = None,
    high: float | None = None,
) -> float:
    """``params[field]`` as a finite ``float`` from ``low`` to ``high``; missing means ``default``."""
    value = params.get(field)
    if value is None:
        if default is _UNSET:
            raise ValueError(f"{field} is required")
        return default
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{field} must be a number, got {value!r}")
    _check_range(field, value, low, high)
    return float(value)


def text(params: Mapping[str, Any], field: str, default: str = _UNSET) -> str:
    """``params[field]`` as a non-empty string; missing means ``default`` (or an error)."""
    value = params.get(field)
    if value is None:
        if default is _UNSET:
            raise ValueError(f"{field} is required")
        return default
    if not isinstance(value, str) or not value:
        raise ValueError(f"{field} must be a non-empty string, got {value!r}")
    return value


def _check_range(field: str, value: float, low: float | None, high: float | None) -> None:
    if low is not None and value < low:
        raise ValueError(f"{field} must be at least {low}, got {value}")
    if high is not None and value > high:
        raise ValueError(f"{field} must be at most {high}, got {value}")
