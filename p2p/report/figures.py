"""PNG figures of the pipeline's reports (matplotlib, headless)."""

from __future__ import annotations

import math
import os
import textwrap
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from p2p.io import atomic_path


def _pyplot() -> Any:
    """matplotlib.pyplot on the headless Agg backend, imported on first use so importing this module stays cheap."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def line_figure(series: Mapping[str, Sequence[tuple[float, float]]], path: str | os.PathLike, *, title: str,
                xlabel: str, ylabel: str, mark_best: bool = False) -> Path:
    """One line per series of (x, y) points; `mark_best` circles each series' highest point. Written atomically."""
    plt = _pyplot()

    fig, ax = plt.subplots(figsize=(7, 4), dpi=120)
    for name, points in series.items():
        xs, ys = zip(*points)
        (line,) = ax.plot(xs, ys, marker=".", label=name)
        if mark_best:
            best = max(range(len(ys)), key=ys.__getitem__)
            ax.scatter([xs[best]], [ys[best]], s=90, facecolors="none", edgecolors=line.get_color())
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return path


@contextmanager
def _panels(count: int, path: str | os.PathLike, *, title: str, note: str | None, columns: int,
            panel_width: float, panel_height: float) -> Iterator[Any]:
    """A figure with a grid of `count` subplots (the spare ones hidden) for the caller to draw in (yields the axes,
    flat); then its title and the wrapped `note` below, laid out and written atomically as a PNG at `path`."""
    plt = _pyplot()

    n = max(1, count)
    ncols = min(columns, n)
    nrows = math.ceil(n / ncols)
    width = max(panel_width * ncols, 7.0)
    note_lines = textwrap.wrap(note, width=int(width * 15)) if note else []
    note_height = 0.17 * len(note_lines) + 0.15 if note_lines else 0.0  # inches
    height = panel_height * nrows + 0.5 + note_height
    fig, axes = plt.subplots(nrows, ncols, figsize=(width, height), dpi=110, squeeze=False)
    try:
        for ax in axes.flat[count:]:
            ax.set_visible(False)
        yield axes.flat
        fig.suptitle(title)
        if note_lines:
            fig.text(0.01, 0.01, "\n".join(note_lines), fontsize="small", color="dimgrey", va="bottom")
        fig.tight_layout(rect=(0, note_height / height, 1, 1))
        with atomic_path(Path(path)) as tmp:
            fig.savefig(tmp, format="png")
    finally:
        plt.close(fig)


def series_colours(panels: Mapping[str, Mapping[str, Any]]) -> dict[str, str]:
    """One colour of matplotlib's cycle per series label, in the order labels first appear over all panels, so a
    series keeps its colour in a panel that lacks another series."""
    plt = _pyplot()

    cycle = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    labels = dict.fromkeys(label for series in panels.values() for label in series)
    return {label: cycle[i % len(cycle)] for i, label in enumerate(labels)}


def panel_figure(panels: Mapping[str, Mapping[str, Sequence[tuple[Any, float]]]], path: str | os.PathLike, *,
                 title: str, xlabel: Mapping[str, str] | str, ylabels: Mapping[str, str] | str,
                 note: str | None = None, logy: bool = False, columns: int = 3, bands: bool = False) -> Path:
    """One subplot per panel, one line per series of (x, y) or (x, y, (lo, hi) or None) points, the third an
    interval drawn as an error bar (`bands`: a shaded band); x may be text (categories, in the order they first
    appear in the panel). A series keeps one colour in every panel. A panel without points says so rather than
    vanishing. Written atomically."""
    colours = series_colours(panels)
    with _panels(len(panels), path, title=title, note=note, columns=columns, panel_width=4.4,
                 panel_height=3.3) as axes:
        for ax, (name, series) in zip(axes, panels.items()):
            categories: list[str] = []
            for points in series.values():
                categories += [str(p[0]) for p in points if isinstance(p[0], str) and str(p[0]) not in categories]
            drawn = False
            for label, points in series.items():
                if not points:
                    continue
                xs = [categories.index(str(p[0])) if categories else p[0] for p in points]
                ys = [p[1] for p in points]
                (line,) = ax.plot(xs, ys, marker="o", label=label, color=colours[label])
                bounds = [p[2] if len(p) > 2 else None for p in points]
                if any(bounds) and bands:
                    lows = [b[0] if b else y for y, b in zip(ys, bounds)]
                    highs = [b[1] if b else y for y, b in zip(ys, bounds)]
                    ax.fill_between(xs, lows, highs, color=line.get_color(), alpha=0.15, linewidth=0)
                elif any(bounds):
                    below = [y - b[0] if b else 0.0 for y, b in zip(ys, bounds)]
                    above = [b[1] - y if b else 0.0 for y, b in zip(ys, bounds)]
                    ax.errorbar(xs, ys, yerr=[below, above], fmt="none", ecolor=line.get_color(), capsize=4)
                drawn = True
            if categories:
                ax.set_xticks(range(len(categories)), categories)
            if not drawn:
                ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes, color="grey")
            elif logy:
                ax.set_yscale("log")
            else:
                ax.ticklabel_format(axis="y", useOffset=False)
            ylabel = ylabels if isinstance(ylabels, str) else ylabels.get(name, "")
            ax.set(title=name, xlabel=xlabel if isinstance(xlabel, str) else xlabel.get(name, ""), ylabel=ylabel)
            ax.title.set_fontsize("medium")
            ax.grid(alpha=0.3)
            if drawn:
                ax.legend(fontsize="x-small")
    return Path(path)


def bar_figure(panels: Mapping[str, Mapping[str, tuple[float, tuple[float, float] | None] | None]],
               path: str | os.PathLike, *, title: str, ylabels: Mapping[str, str] | str, note: str | None = None,
               columns: int = 3) -> Path:
    """One subplot per panel, one bar per label with its 95% interval as an error bar; a label without a value
    (None) keeps its place and says `not run`. Written atomically."""
    with _panels(len(panels), path, title=title, note=note, columns=columns, panel_width=4.8,
                 panel_height=3.8) as axes:
        for ax, (name, bars) in zip(axes, panels.items()):
            labels = list(bars)
            values = [b[0] if b else 0.0 for b in bars.values()]
            below = [b[0] - b[1][0] if b and b[1] else 0.0 for b in bars.values()]
            above = [b[1][1] - b[0] if b and b[1] else 0.0 for b in bars.values()]
            colors = [f"C{i % 10}" for i in range(len(labels))]
            ax.bar(range(len(labels)), values, color=colors, yerr=[below, above], capsize=4, alpha=0.85)
            for i, bar in enumerate(bars.values()):
                if bar is None:
                    ax.text(i, 0, "not run", ha="center", va="bottom", rotation=90, color="grey",
                            fontsize="x-small")
            ax.set_xticks(range(len(labels)), labels, rotation=30, ha="right", fontsize="small")
            ax.set(title=name, ylabel=ylabels if isinstance(ylabels, str) else ylabels.get(name, ""))
            ax.title.set_fontsize("medium")
            ax.grid(alpha=0.3, axis="y")
    return Path(path)
