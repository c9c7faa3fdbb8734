"""The profile text a hypernetwork embeds: the user's summary, optional label histogram, and retrieved items.

Format (paper, authors' code):

    ## User Profile: {summary}
    {histogram line, label tasks only}

    ## User History: {item 1}
    {item 2}

Retrieved items are joined with one newline, in retrieval order (best first), unchanged. The histogram line, when
given, follows the summary on its own line inside the profile section: it describes the user, not the query.

`profile_sections` cuts a profile text back into those parts (summary, histogram line, retrieved history), for
embedders that read each part separately (`embed.pooling: sections`).
"""

from __future__ import annotations

import re
from collections import Counter

PROFILE_HEADER = "## User Profile: "
HISTORY_HEADER = "## User History: "
_HISTOGRAM_LINE = re.compile(r"^total=\d+( \| .+)?$")


def label_histogram_line(labels: list[str]) -> str:
    """`total=N | tag=c (p%), ...` over the user's history labels, most frequent first, then by label.

    p is the share in percent rounded to the nearest integer, halves up (1 of 8 = 12.5% -> 13%), computed in
    integers so it never depends on float rounding. No labels gives `total=0`.
    """
    total = len(labels)
    if total == 0:
        return "total=0"
    counts = sorted(Counter(labels).items(), key=lambda item: (-item[1], item[0]))
    parts = [f"{label}={count} ({(200 * count + total) // (2 * total)}%)" for label, count in counts]
    return f"total={total} | " + ", ".join(parts)


def user_profile_text(summary: str, histogram: str | None = None) -> str:
    """The profile section alone (no retrieved items): what describes the user whatever the query, e.g. for
    clustering users into splits."""
    profile = summary if histogram is None else f"{summary}\n{histogram}"
    return f"{PROFILE_HEADER}{profile}"


def profile_text(summary: str, retrieved_items: list[str], histogram: str | None = None) -> str:
    """The profile text for one query (see the module docstring for the exact layout)."""
    history = "\n".join(retrieved_items)
    return f"{user_profile_text(summary, histogram)}\n\n{HISTORY_HEADER}{history}"


def profile_sections(text: str) -> list[str]:
    """The non-empty parts of a profile text: the profile section without its histogram line, the histogram
    line, and the history section with its header (left out when no item was retrieved). Any other text is a
    single section."""
    head, found, history = text.partition(f"\n\n{HISTORY_HEADER}")
    lines = head.split("\n")
    histogram = lines.pop() if len(lines) > 1 and _HISTOGRAM_LINE.match(lines[-1]) else ""
    sections = ["\n".join(lines), histogram, f"{HISTORY_HEADER}{history}" if history.strip() else ""]
    return [part for part in sections if part.strip()]
