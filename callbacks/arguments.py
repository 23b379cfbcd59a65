"""The checks the callbacks' numeric arguments share, with the message naming the argument."""

from __future__ import annotations

import math


def finite_number(name: str, value, positive: bool = False) -> float:
    """`value` as a float if it is a finite number >= 0 (> 0 when `positive`); else a ValueError naming `name`."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or (value <= 0 if positive else value < 0):
        raise ValueError(f"{name} must be a finite number {'>' if positive else '>='} 0, got {value!r}")
    return float(value)


def positive_integer(name: str, value) -> int:
    """`value` if it is an integer >= 1; else a ValueError naming `name`."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return value
