"""The grid's results as the report shows them: each grid point's rows, the sweeps of Figs. 3 and 6, Table 5's bars,
and Tables 1-2 over seeds (the mean over seeds with an interval that covers both seeds and users).

A grid point (p2p.grid.Point) is this config with a few params changed; its result is every MLflow row whose
ablation params equal the config's with those changes (`point_setting`), the newest per task.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from p2p.report.markdown import markdown_table, with_interval
from p2p.report.runs import EvalRow
from p2p.report.tables import (
    SPLIT_TITLES,
    RunInfo,
    Setting,
    Table,
    TaskKey,
    canonical,
    num,
    row_interval,
    select,
    task_label,
)
from p2p.tasks import get_task, headline_key

Interval = tuple[float, float]
#: (x, value, its 95% interval or None): a point of a line with an interval.
LinePoint = tuple[float, float, Interval | None]


def point_setting(rows: Sequence[EvalRow], info: RunInfo, changes: Mapping[str, str], method: str,
                  split: str) -> Setting | None:
    """The newest result per task of this config with `changes`, for `method` on `split`; None when never run."""
    vary = tuple(changes)
    wanted = tuple(canonical(changes[p]) for p in vary)
    return select(rows, info, vary, method, split).get(wanted)


def headline(setting: Setting | None, task: TaskKey) -> tuple[float, Interval | None] | None:
    """A task's headline metric (choice accuracy, MAE, ROUGE-1: p2p.tasks.headline_key) and its interval."""
    row = setting.rows.get(task) if setting else None
    if row is None:
        return None
    metric = headline_key(task[1])
    value = num(row.metrics.get(metric))
    return None if value is None else (value, row_interval(row, metric))


def scored_tasks(info: RunInfo) -> list[TaskKey]:
    """The configured tasks with a headline metric (open-ended ones are judged, not scored)."""
    keys = [(dataset, get_task(task).id) for dataset, task in info.tasks()]
    return [k for k in keys if get_task(k[1]).kind != "open_ended"]


def sweep_lines(rows: Sequence[EvalRow], info: RunInfo, settings: Sequence[tuple[float, Mapping[str, str]]],
                method: str, splits: Sequence[str]) -> dict[TaskKey, dict[str, list[LinePoint]]]:
    """task -> split -> the line of `method`'s headline metric over the settings (x, changes): one point per setting
    that ran, sorted by x."""
    out: dict[TaskKey, dict[str, list[LinePoint]]] = {key: {s: [] for s in splits} for key in scored_tasks(info)}
    for split in splits:
        for x, changes in settings:
            setting = point_setting(rows, info, changes, method, split)
            for task in out:
                found = headline(setting, task)
                if found is not None:
                    out[task][split].append((x, *found))
    for lines in out.values():
        for points in lines.values():
            points.sort(key=lambda p: p[0])
    return out


def missing_settings(lines: Mapping[TaskKey, Mapping[str, Sequence[LinePoint]]],
                     settings: Sequence[tuple[float, Mapping[str, str]]]) -> list[float]:
    """The x values of `settings` that some task and split has no point for."""
    return [x for x, _ in settings
            if any(not any(math.isclose(p[0], x) for p in points) for by in lines.values() for points in by.values())]


def points_table(name: str, title: str, header: str, what: str,
                 panels: Mapping[str, Mapping[str, Sequence[tuple[float | str, float, Interval | None]]]]) -> Table:
    """The numbers behind a figure: one row per point (panel, series, x, value, its 95% interval)."""
    rows, lines = [], []
    for panel, series in panels.items():
        for label, points in series.items():
            for x, value, ci in points:
                rows.append((panel, label, x, value, *(ci or (None, None))))
                lines.append([panel, label, x if isinstance(x, str) else f"{x:g}", with_interval(value, ci)])
    md = [f"# {title}", "", header, "", what, "",
          *markdown_table(["panel", "series", "x", "value [95% interval]"], lines), ""]
    return Table(name, title, ("panel", "series", "x", "value", "ci95_lo", "ci95_hi"), rows, "\n".join(md))


# --- Tables 1-2 over seeds ---------------------------------------------------------------------------------------


def student_t_975(df: int) -> float:
    """The 97.5% quantile of Student's t with `df` degrees of freedom (a two-sided 95% interval)."""
    from scipy.stats import t

    return float(t.ppf(0.975, df))


def pool_seeds(per_seed: Sequence[tuple[float, Interval | None]]) -> tuple[float, Interval | None]:
    """The mean over seeds of one metric, with a 95% interval covering both the seeds and the test users.

    Each seed's value comes with its interval over test users (the evaluate stage's percentile bootstrap, often
    lopsided). The seeds share the test users, so the users' part is the mean of the seeds' distances from value to
    bound on each side (as if their errors moved together: the wider, safe case), and the seeds' part Student's t
    over the seed means (S - 1 degrees of freedom); the two add in quadrature on each side. Seeds that agree give
    back their interval (one seed: its own); without a user interval the seeds' part alone."""
    if not per_seed:
        raise ValueError("pool_seeds needs at least one seed")
    values = [v for v, _ in per_seed]
    mean = sum(values) / len(values)
    users = None
    if all(ci is not None for _, ci in per_seed):
        below = sum(v - ci[0] for v, ci in per_seed) / len(per_seed)  # type: ignore[index]
        above = sum(ci[1] - v for v, ci in per_seed) / len(per_seed)  # type: ignore[index]
        users = (below, above)
    seeds = 0.0
    if len(values) > 1:
        sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))
        seeds = student_t_975(len(values) - 1) * sd / math.sqrt(len(values))
    if users is None and len(values) == 1:
        return mean, None
    below, above = users or (0.0, 0.0)
    return mean, (mean - math.hypot(below, seeds), mean + math.hypot(above, seeds))


@dataclass(frozen=True)
class SeedCell:
    value: float
    ci: Interval | None


def seed_table(split: str, rows: Sequence[EvalRow], info: RunInfo, seeds: Sequence[tuple[str, Mapping[str, str]]],
               methods: Sequence[str], header: str, titles: Mapping[str, str]) -> Table:
    """Table 1 or 2 over seeds: per task and method the headline metric of each seed [its user interval], and the
    pooled mean [interval over seeds and users] (`pool_seeds`). `seeds`: (label, changes) of each run, the base
    run's changes empty."""
    number = {"random_test": 1, "ood_test": 2}[split]
    table_rows, lines = [], []
    for task in scored_tasks(info):
        metric = headline_key(task[1])
        for method in methods:
            cells: list[SeedCell | None] = []
            for _, changes in seeds:
                found = headline(point_setting(rows, info, changes, method, split), task)
                cells.append(SeedCell(*found) if found else None)
            ran = [c for c in cells if c is not None]
            pooled = pool_seeds([(c.value, c.ci) for c in ran]) if ran else None
            shown = [_cell(c.value, c.ci) if c else "not run" for c in cells]
            lines.append([task_label(task), metric.split("/")[-1], titles.get(method, method), *shown,
                          _cell(*pooled) if pooled else "—", str(len(ran))])
            for (label, _), c in zip(seeds, cells):
                table_rows.append((split, task_label(task), metric, method, label, c and c.value,
                                   *((c.ci if c and c.ci else (None, None)))))
            if pooled:
                table_rows.append((split, task_label(task), metric, method, f"pooled over {len(ran)}", pooled[0],
                                   *(pooled[1] or (None, None))))
    title = f"Table {number} over seeds: {SPLIT_TITLES[split]}"
    md = [f"# {title}", "", header, "",
          "Each method's headline metric (choice-scored accuracy or MAE, ROUGE-1 for generation) for each training "
          "seed (`train.seed`: the data, summaries and test users are the same), each with its 95% interval over "
          "test users, and the mean over the seeds with a 95% interval that covers both the seeds and the users "
          "(the seeds' spread by Student's t, the users' by the seeds' mean interval, added in quadrature: "
          "p2p/report/sweeps.py `pool_seeds`). Methods without training (base, RAG, PAG, full history) answer "
          "alike under every seed. Seeds without a run: `make paper`.", "",
          *markdown_table(["task", "metric", "method", *(label for label, _ in seeds), "pooled", "seeds"], lines),
          ""]
    columns = ("split", "task", "metric", "method", "seed", "value", "ci95_lo", "ci95_hi")
    return Table(f"table{number}_seeds", title, columns, table_rows, "\n".join(md))


def _cell(value: float, ci: Interval | None) -> str:
    return with_interval(value, ci)
