"""The range a number may take, written where the number is declared (a config key, a command flag).

`Interval.parse("[0, 1)")` reads the usual notation: a square bracket includes its end, a parenthesis excludes it,
and `inf` leaves that side open. Every value must also be finite: NaN and infinities are refused everywhere, so a
comparison that NaN would slip through (`x < 0` is false for NaN) is never the only check.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

_NOTATION = re.compile(r"\s*([\[(])\s*(-?inf|[-+0-9.e]+)\s*,\s*(inf|[-+0-9.e]+)\s*([\])])\s*")


@dataclass(frozen=True)
class Interval:
    low: float = -math.inf
    high: float = math.inf
    low_closed: bool = False
    high_closed: bool = False
    integer: bool = False  # set by the declaration's type: the words then say "a whole number"

    @classmethod
    def parse(cls, notation: str) -> Interval:
        found = _NOTATION.fullmatch(notation)
        if not found:
            raise ValueError(f"not an interval: {notation!r} (write e.g. '[0, 1)' or '(0, inf)')")
        left, low, high, right = found.groups()
        interval = cls(float(low), float(high), left == "[", right == "]")
        if interval.low > interval.high or (math.isinf(interval.low) and interval.low_closed) or (
                math.isinf(interval.high) and interval.high_closed):
            raise ValueError(f"not an interval: {notation!r} (low <= high; an infinite end takes a parenthesis)")
        return interval

    def contains(self, value: float) -> bool:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            return False
        above = value >= self.low if self.low_closed else value > self.low
        below = value <= self.high if self.high_closed else value < self.high
        return above and below

    def words(self) -> str:
        """'a number > 0', 'a whole number >= 1', 'a number in [0, 1)': what the error says is wanted."""
        kind = "a whole number" if self.integer else "a number"
        if math.isinf(self.low) and math.isinf(self.high):
            return f"a finite {kind.removeprefix('a ')}"
        if math.isinf(self.high):
            return f"{kind} {'>=' if self.low_closed else '>'} {_shown(self.low)}"
        if math.isinf(self.low):
            return f"{kind} {'<=' if self.high_closed else '<'} {_shown(self.high)}"
        return (f"{kind} in {'[' if self.low_closed else '('}{_shown(self.low)}, {_shown(self.high)}"
                f"{']' if self.high_closed else ')'}")

    def problem(self, value) -> str | None:
        """None when value is in the interval, else what is wrong with it, in words."""
        if self.contains(value) and not (self.integer and isinstance(value, float) and not value.is_integer()):
            return None
        return f"must be {self.words()}, got {value!r}"


def _shown(bound: float) -> str:
    return str(int(bound)) if bound.is_integer() else repr(bound)
