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
