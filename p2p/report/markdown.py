"""The one markdown-table helper every report uses, and how a missing number is shown."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any


def markdown_table(header: Sequence[Any], rows: Iterable[Sequence[Any]]) -> list[str]:
    """A GitHub markdown table as lines: the header, the `|---|` rule, one line per row (`|` in a cell escaped)."""
    def line(cells: Sequence[Any]) -> str:
        return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"

    return [line(header), "|" + "---|" * len(header), *(line(r) for r in rows)]


def number(value: float | None, digits: int = 3, missing: str = "n/a") -> str:
    """`value` to `digits` decimals, or `missing` when there is none."""
    return missing if value is None else f"{value:.{digits}f}"


def with_interval(value: float | None, interval: Sequence[float] | None, digits: int = 3, missing: str = "n/a",
                  *, signed: bool = False, interval_digits: int | None = None) -> str:
    """`0.500 [0.41, 0.59]`: the value to `digits` decimals and its interval to `interval_digits` (default one
    fewer); the value alone when it has no interval, `missing` when there is no value. `signed`: `+0.125 [...]`."""
    if value is None:
        return missing
    sign = "+" if signed else ""
    text = f"{value:{sign}.{digits}f}"
    if interval is None:
        return text
    d = max(0, digits - 1) if interval_digits is None else interval_digits
    return f"{text} [{interval[0]:{sign}.{d}f}, {interval[1]:{sign}.{d}f}]"
