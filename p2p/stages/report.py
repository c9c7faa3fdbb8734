"""Stage `report`: the paper's Tables 1-5 (and 8) with our numbers beside the paper's, and Figs. 3-6, as files.

Reads what the earlier stages wrote (reports/eval, reports/judge, reports/splits, reports/p2p/adapter_seconds.json,
data/oppu, data/splits) plus the ablation runs the flow collects from MLflow (`rows`), and writes
reports/tables/*.md + *.csv, reports/figures/*.png and the index reports/README.md. Only reports/eval/metrics.json
is required; anything else that is missing becomes a note in the index and in the table concerned, never a failure.
"""

from __future__ import annotations

import csv
import io
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from p2p.config import Config, default_params_path
from p2p.grid import GridConfig, load_grid, points
from p2p.io import InputError, read_json, read_text, write_dir, write_text
from p2p.methods import TITLES as METHOD_TITLES
from p2p.paths import Paths
from p2p.report import figures, paper, sweeps, tables
from p2p.report.runs import ABLATION_PARAMS, EvalRow
from p2p.report.tables import EvalMetrics, RunInfo, Table, TaskKey, task_label, task_ref
from p2p.stages.recorder import Recorder
from p2p.tasks import get_task, headline_key
from p2p.tracking import collect_rows, compare_url, mlflow_ui

log = logging.getLogger(__name__)



def run_info(cfg: Config) -> RunInfo:
    """What the tables say about this run: preset, models, judge, data and the ablation params' values."""
    flat = cfg.flat()
    return RunInfo(preset=cfg.preset, base_llm=cfg.model.base_llm, embedder=cfg.model.embedder,
                   embedder_kind=cfg.model.embedder_kind,
                   sources=tuple((s.dataset, tuple(s.tasks)) for s in cfg.data.sources),
                   params={k: str(flat[k]) for k in ABLATION_PARAMS}, judge_base_url=cfg.judge.base_url,
                   judge_model=cfg.judge.model, judge_local_model=cfg.judge.local_model, mlflow_ui=mlflow_ui())


# --- reading the earlier stages' outputs --------------------------------------------------------------------------


def _mapping(value: Any, path: Path, record: str) -> Mapping[str, Any]:
    if not isinstance(value, dict):
        raise InputError(path, f"expected an object, got {type(value).__name__}", record=record)
    return value


def resolve_tasks(data: Any, path: Path, cfg: Config, depth: int) -> dict[str, dict[TaskKey, Any]]:
    """split -> task key -> ... of a metrics file keyed split -> task -> method -> metric (`depth` levels below
    the task must be objects); task names become (dataset, task id), an unknown one is an InputError."""
    out: dict[str, dict[TaskKey, Any]] = {}
    for split, by_task in _mapping(data, path, "top level").items():
        out[split] = {}
        for name, by_method in _mapping(by_task, path, f"split {split}").items():
            try:
                key = task_ref(name, cfg.data.tasks())
            except ValueError as err:
                raise InputError(path, str(err), record=f"{split}/{name}") from None
            for method, scores in _mapping(by_method, path, f"{split}/{name}").items():
                if depth > 1:
                    _mapping(scores, path, f"{split}/{name}/{method}")
            out[split][key] = by_method
    return out


def _is_number(value: Any) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, float))


def read_eval_metrics(path: Path, cfg: Config) -> EvalMetrics:
    """reports/eval/metrics.json (split -> task -> method -> metric -> value, `<metric>_ci95` -> [lo, hi]), checked
    and with task keys: every value a number or null, every interval a pair lo <= hi or null."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not found; run the evaluate stage first (`dvc repro evaluate`)")
    metrics = resolve_tasks(read_json(path), path, cfg, depth=2)
    for split, by_task in metrics.items():
        for key, by_method in by_task.items():
            for method, scores in by_method.items():
                for metric, value in scores.items():
                    if value is None:
                        continue
                    record = f"{split}/{task_label(key)}/{method}"
                    if metric.endswith("_ci95"):
                        if not (isinstance(value, list) and len(value) == 2 and all(map(_is_number, value))
                                and value[0] <= value[1]):
                            raise InputError(path, f"{value!r} is not an interval [lo, hi] with lo <= hi",
                                             record=record, field=metric)
                    elif not _is_number(value):
                        raise InputError(path, f"{value!r} is not a number", record=record, field=metric)
    return metrics


def read_history_buckets(path: Path) -> list[dict[str, Any]] | None:
    """reports/eval/history_buckets.csv rows (split, task, method, bucket, n, value: None when empty), or None."""
    if not path.is_file():
        return None
    reader = csv.DictReader(io.StringIO(read_text(path)))
    columns = ("split", "task", "method", "bucket", "n", "value")
    missing = [c for c in columns if c not in (reader.fieldnames or [])]
    if missing:
        raise InputError(path, f"missing column(s) {missing}; expected {list(columns)}", record="line 1")
    rows = []
    for line, row in enumerate(reader, start=2):
        try:
            value = float(row["value"]) if row["value"] not in ("", None) else None
            rows.append({**row, "n": int(float(row["n"])), "value": value})
        except (TypeError, ValueError):
            raise InputError(path, f"n {row['n']!r} or value {row['value']!r} is not a number",
                             record=f"line {line}") from None
    return rows


@dataclass
class JudgeReport:
    metrics: dict[str, dict[TaskKey, Any]] | None  # None: nothing judged
    reason: str | None  # why ours is missing
    label: str  # who judged (or would judge)


def read_judge(root: Path, cfg: Config) -> JudgeReport:
    """reports/judge/metrics.json (split -> task -> method -> {mean, n, scored, missing, forced}) and the judge's
    label from summary.md; when it judged nothing, the reason."""
    path = Paths(cfg, root).report("judge") / "metrics.json"
    info = run_info(cfg)
    if not path.is_file():
        return JudgeReport(None, "reports/judge/metrics.json not found: the judge stage has not run",
                           tables.judge_label(info))
    metrics = resolve_tasks(read_json(path), path, cfg, depth=2)
    label = None
    summary = path.with_name("summary.md")
    if summary.is_file():
        label = next((line.removeprefix("Judge: ").rstrip(".") for line in read_text(summary).splitlines()
                      if line.startswith("Judge: ")), None)
    if not any(metrics.values()):
        return JudgeReport(None, "nothing to judge: no open-ended task (Personal Reddit, Empathetic Conversations) "
                           f"in data.sources ({tables.data_label(info)})", tables.judge_label(info))
    return JudgeReport(metrics, None, tables.judge_label(info, label))


def read_splits(root: Path, cfg: Config) -> tuple[dict[TaskKey, Any], dict[TaskKey, Any]] | None:
    """reports/splits/metrics.json (task -> {train_users, ...}) and the queries per split of each task's
    data/splits/<dataset>/<task>.report.json; None when the split report is missing."""
    paths = Paths(cfg, root)
    path = paths.report("splits") / "metrics.json"
    if not path.is_file():
        return None
    users: dict[TaskKey, Any] = {}
    for name, metrics in _mapping(read_json(path), path, "top level").items():
        try:
            users[task_ref(name, cfg.data.tasks())] = _mapping(metrics, path, name)
        except ValueError as err:
            raise InputError(path, str(err), record=name) from None
    queries = {}
    for key in users:
        report = paths.split_report(*key)
        if report.is_file():
            queries[key] = _mapping(read_json(report), report, "top level").get("queries", {})
    return users, queries


def read_oppu_seconds(cfg: Config, root: Path) -> list[tuple[TaskKey, str, float]]:
    """(task, user, seconds) of every OPPU user, from data/oppu/<dataset>/<task>.json (rows and seconds)."""
    out = []
    for dataset, task in cfg.data.tasks():
        path = Paths(cfg, root).oppu_info(dataset, task)
        if not path.is_file():
            continue
        info = _mapping(read_json(path), path, "top level")
        users, seconds = info.get("rows"), info.get("seconds")
        if not isinstance(users, list) or not isinstance(seconds, list) or len(users) != len(seconds):
            raise InputError(path, "expected lists `rows` and `seconds` of the same length", field="seconds")
        for user, s in zip(users, seconds):
            if isinstance(s, bool) or not isinstance(s, (int, float)):
                raise InputError(path, f"{s!r} is not a number of seconds", record=f"user {user}", field="seconds")
            out.append(((dataset, get_task(task).id), str(user), float(s)))
    return out


def read_p2p_seconds(cfg: Config, root: Path) -> list[float] | None:
    """The train stage's seconds per test user's adapter (reports/p2p/adapter_seconds.json), or None before it ran."""
    path = Paths(cfg, root).adapter_seconds
    if not path.is_file():
        return None
    users = _mapping(read_json(path), path, "top level").get("users")
    if not isinstance(users, list):
        raise InputError(path, "expected a list `users`", field="users")
    seconds = [u.get("seconds") if isinstance(u, dict) else None for u in users]
    for i, s in enumerate(seconds):
        if isinstance(s, bool) or not isinstance(s, (int, float)):
            raise InputError(path, f"{s!r} is not a number of seconds", record=f"users[{i}]", field="seconds")
    return [float(s) for s in seconds]


# --- building everything -------------------------------------------------------------------------------------------


@dataclass
class Report:
    """What the stage made: tables, figures (name -> (path relative to reports/, caption)), notes, metrics."""

    header: str
    tables: list[Table] = field(default_factory=list)
    figures: dict[str, tuple[str, str]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    metrics: dict[str, float] = field(default_factory=dict)


def _arrow(task: str) -> str:
    return "↓" if headline_key(task).endswith(("mae", "rmse")) else "↑"


def _panel_title(key: TaskKey, metric: str | None = None) -> str:
    metric = metric or headline_key(key[1])
    return f"{task_label(key)}: {metric.split('/')[-1]} {_arrow(key[1])}"


def bucket_panels(buckets: list[dict[str, Any]], split: str, cfg: Config) -> dict[str, dict[str, list]]:
    """Fig. 5 data for one split: panel per task, series per method, points (bucket label, value) ordered by the
    bucket's lower bound."""
    panels: dict[str, dict[str, list]] = {}
    rows = [b for b in buckets if b["split"] == split and b["value"] is not None]

    def lower(label: str) -> float:
        try:
            return float(label.split("-", 1)[0])
        except ValueError:
            return float("inf")

    for row in sorted(rows, key=lambda b: lower(b["bucket"])):
        try:
            key = task_ref(row["task"], cfg.data.tasks())
        except ValueError:
            continue
        title = _panel_title(key, headline_key(key[1]))
        panels.setdefault(title, {}).setdefault(METHOD_TITLES.get(row["method"], row["method"]),
                                                []).append((row["bucket"], row["value"]))
    return panels


def cumulative(values: Sequence[float]) -> list[tuple[float, float]]:
    out, total = [], 0.0
    for i, v in enumerate(values, start=1):
        total += v
        out.append((float(i), total))
    return out


def grid_figures(report: Report, rows: Sequence[EvalRow], cfg: Config, grid: GridConfig, figures_dir: Path,
                 header: str) -> None:
    """Figs. 3 and 6 and Table 5's bars from the grid's points (`make paper`): each point's headline metric with its
    95% interval, drawn and as a table of the points; a point without a run is named in the figure's note and the
    report's notes."""
    info = run_info(cfg)
    splits = cfg.evaluate.splits
    tasks = sweeps.scored_tasks(info)
    split_name = {s: tables.SPLIT_TITLES[s].removesuffix(" split") for s in splits}

    def note_missing(what: str, missing: list[str]) -> str | None:
        if not missing:
            return None
        note = f"Not run yet: {', '.join(missing)}; `make paper` runs them."
        report.notes.append(f"{what}: {note}")
        return note

    # Fig. 3 as the paper draws it: a row for diversity (clusters, at a matched user count), one for quantity.
    diversity = [(c, {"train.cluster_fraction": repr(float(c)), "train.max_users": str(grid.matched_users)})
                 for c in grid.clusters]
    quantity = [(u, {"train.user_fraction": repr(float(u))})
                for u in sorted({*grid.users, cfg.train.user_fraction})]
    panels: dict[str, dict[str, list]] = {}
    missing = []
    for label, settings in (("diversity", diversity), ("quantity", quantity)):
        lines = sweeps.sweep_lines(rows, info, settings, "p2p", splits)
        for task in tasks:
            panels[f"{label}: {_panel_title(task)}"] = {split_name[s]: lines[task][s] for s in splits}
        missing += [f"{label} {x:g}" for x in sweeps.missing_settings(lines, settings)]
    note = note_missing("Fig. 3", missing)
    xlabels = {name: f"share of the train clusters ({grid.matched_users} users each)" if name.startswith("diversity")
               else "share of the train users" for name in panels}
    figures.panel_figure(panels, figures_dir / "fig3_users.png", columns=max(1, len(tasks)), ylabels="headline metric",
                         xlabel=xlabels,
                         title="Fig. 3: P2P vs the diversity (top) and the quantity (bottom) of training users "
                               "(95% intervals)", note=note)
    report.figures["fig3_users.png"] = ("figures/fig3_users.png",
                                        "Fig. 3: P2P vs training-user diversity and quantity (95% intervals)")
    report.tables.append(sweeps.points_table(
        "fig3_points", "Fig. 3 points: P2P vs the diversity and the quantity of training users", header,
        "P2P's headline metric with its 95% interval over test users. x: the share of the train clusters its users "
        f"come from (diversity; each run on {grid.matched_users} users) or the share of the train users "
        "(quantity); every run at the same training steps.", panels))

    # Fig. 6: P2P's and RAG's headline metric over the retrieval k.
    ks = sorted({*grid.retrieval_k, cfg.profile.retrieval_k, cfg.evaluate.retrieval_k})
    panels, missing = {}, []
    for method, param, title in (("p2p", "profile.retrieval_k", "P2P"), ("rag", "evaluate.retrieval_k", "RAG")):
        settings = [(float(k), {param: str(k)}) for k in ks]
        lines = sweeps.sweep_lines(rows, info, settings, method, splits)
        for task in tasks:
            panel = panels.setdefault(_panel_title(task), {})
            for s in splits:
                panel[f"{title}, {split_name[s]}"] = lines[task][s]
        missing += [f"{title} k={x:g}" for x in sweeps.missing_settings(lines, settings)]
    note = note_missing("Fig. 6", missing)
    figures.panel_figure(panels, figures_dir / "fig6_retrieval_k.png", xlabel="retrieved history items k",
                         ylabels="headline metric", bands=True, note=note,
                         title="Fig. 6: P2P (profile.retrieval_k) and RAG (evaluate.retrieval_k) vs k (95% bands)")
    report.figures["fig6_retrieval_k.png"] = ("figures/fig6_retrieval_k.png",
                                              "Fig. 6: P2P and RAG vs retrieval k (95% intervals)")
    report.tables.append(sweeps.points_table(
        "fig6_points", "Fig. 6 points: P2P and RAG vs retrieval k", header,
        "Each method's headline metric with its 95% interval over test users. x: the retrieved history items, "
        "`profile.retrieval_k` in P2P's profile, `evaluate.retrieval_k` in RAG's prompt.", panels))

    # Table 5 as bars: every profile variant on the OOD split.
    split = "ood_test" if "ood_test" in splits else splits[0]
    bars: dict[str, dict[str, Any]] = {_panel_title(task): {} for task in tasks}
    variants = [("full", "p2p", {}), ("shuffled at test", "p2p_shuffled", {})]
    variants += [(v, "p2p", {"profile.variant": v}) for v in grid.variants]
    missing = []
    for label, method, changes in variants:
        setting = sweeps.point_setting(rows, info, changes, method, split)
        for task in tasks:
            bars[_panel_title(task)][label] = sweeps.headline(setting, task)
        if setting is None:
            missing.append(label)
    note = note_missing("Table 5 bars", missing)
    figures.bar_figure(bars, figures_dir / "table5_ablations.png", ylabels="headline metric", note=note,
                       title=f"Table 5: P2P's profile ablations, {tables.SPLIT_TITLES[split]} (95% intervals)")
    report.figures["table5_ablations.png"] = ("figures/table5_ablations.png",
                                              "Table 5 as bars: P2P per profile variant (95% intervals)")
    report.tables.append(sweeps.points_table(
        "table5_by_task", f"Table 5 by task: P2P per profile variant, {tables.SPLIT_TITLES[split]}", header,
        "P2P's headline metric per task with its 95% interval over test users, for each `profile.variant` (Table 5 "
        "averages these per task kind).",
        {panel: {"P2P": [(label, *found) for label, found in by_label.items() if found]}
         for panel, by_label in bars.items()}))


def table5_compare(rows: Sequence[EvalRow], cfg: Config, grid: GridConfig) -> str | None:
    """The MLflow compare view of Table 5's MLflow runs (P2P on the OOD split per variant), when two or more ran."""
    info = run_info(cfg)
    ids, experiment = [], ""
    for changes in [{}, *({"profile.variant": v} for v in grid.variants)]:
        setting = sweeps.point_setting(rows, info, changes, "p2p", "ood_test")
        for row in setting.rows.values() if setting else ():
            if row.run_id != tables.CURRENT and row.experiment_id and row.run_id not in ids:
                ids.append(row.run_id)
                experiment = row.experiment_id
    return f"{mlflow_ui()}/{compare_url(ids, experiment)}" if len(ids) > 1 else None


def seed_tables(rows: Sequence[EvalRow], cfg: Config, grid: GridConfig, header: str) -> list[Table]:
    """Tables 1-2 over the grid's seeds: each seed's headline metric and the pooled mean (p2p.report.sweeps)."""
    info = run_info(cfg)
    seeds = [(f"seed {cfg.train_seed} (base)", {})]
    seeds += [(f"seed {s}", {"train.seed": str(s)}) for s in grid.seeds if s != cfg.train_seed]
    return [sweeps.seed_table(split, rows, info, seeds, cfg.evaluate.methods, header, METHOD_TITLES)
            for split in cfg.evaluate.splits]


def build_report(cfg: Config, root: Path, rows: Sequence[EvalRow], figures_dir: Path, grid: GridConfig) -> Report:
    """Every table (in memory) and every figure (written into `figures_dir`)."""
    paths = Paths(cfg, root)
    info = run_info(cfg)
    metrics = read_eval_metrics(paths.report("eval") / "metrics.json", cfg)
    judge = read_judge(root, cfg)
    header = tables.provenance(info, judge.label)
    all_rows = [*rows, *tables.current_rows(metrics, info)]
    report = Report(header)
    for split in ("random_test", "ood_test"):
        if split in metrics:
            report.tables.append(tables.main_table(split, metrics[split], paper.main_results(split), header))
        else:
            report.notes.append(f"Table {1 if split == 'random_test' else 2}: no {split} results in "
                                "reports/eval/metrics.json (evaluate.splits); not written.")
    report.tables.append(tables.judge_table(judge.metrics, paper.judge_scores(), ["random_test", "ood_test"],
                                            header, judge.reason))
    if judge.reason:
        report.notes.append(f"Table 3: ours not run ({judge.reason}); the paper's values are shown.")
    absent = points(cfg, grid)[1]
    report.tables.append(tables.embedder_table(all_rows, info, paper.kind_table("embedding_models.csv"), header,
                                               absent))
    report.tables.append(tables.ablation_table(all_rows, info, paper.kind_table("ablations.csv"), header,
                                               table5_compare(all_rows, cfg, grid)))
    splits = read_splits(root, cfg)
    if splits is not None:
        report.tables.append(tables.split_table(*splits, paper.split_statistics(), header))
    else:
        report.notes.append("Table 8: reports/splits/metrics.json not found (the split stage has not run).")

    grid_figures(report, all_rows, cfg, grid, figures_dir, header)
    report.tables += seed_tables(all_rows, cfg, grid, header)

    # Fig. 4: cumulative seconds to personalise N users.
    oppu = read_oppu_seconds(cfg, root)
    p2p = read_p2p_seconds(cfg, root) if oppu else None
    if not oppu:
        report.notes.append(f"Fig. 4: skipped: no OPPU timings in {cfg.oppu.dir} (the oppu stage has not run).")
    else:
        oppu_seconds = [s for _, _, s in oppu]
        note = (f"OPPU: the oppu stage's training seconds per test user ({len(oppu_seconds)} users). P2P: one "
                "hypernetwork forward per user from the stored profile embedding, one user at a time, timed by the "
                f"train stage ({len(p2p or [])} users timed); embedding the profile text is not included. Paper "
                "(deployment_efficiency.csv): P2P 0.57 s vs OPPU 20.44 s per user.")
        if p2p is None:
            note += " P2P not timed: the train stage has not run."
            report.notes.append("Fig. 4: P2P not timed (the train stage has not run).")
        series = {"OPPU (train a LoRA per user)": cumulative(oppu_seconds)}
        if p2p:
            series["P2P (one hypernetwork forward)"] = cumulative(p2p)
            report.metrics["deploy/p2p_s_per_user"] = sum(p2p) / len(p2p)
        report.metrics["deploy/oppu_s_per_user"] = sum(oppu_seconds) / len(oppu_seconds)
        figures.panel_figure({"cumulative seconds (log scale)": series}, figures_dir / "fig4_deployment.png",
                             title="Fig. 4: time to personalise N users", xlabel="users",
                             ylabels="cumulative seconds", note=note, logy=True, columns=1)
        report.figures["fig4_deployment.png"] = ("figures/fig4_deployment.png",
                                                 "Fig. 4: cumulative seconds to obtain N users' adapters, P2P vs OPPU")
        report.tables.append(tables.deployment_table(oppu_seconds, p2p, paper.deployment(), header, note))

    # Fig. 5: headline metric by history-length bucket, one figure per split.
    buckets = read_history_buckets(paths.report("eval") / "history_buckets.csv")
    if buckets is None:
        report.notes.append("Fig. 5: skipped: reports/eval/history_buckets.csv not found.")
    else:
        for split in cfg.evaluate.splits:
            name, where = f"fig5_history_{split}.png", tables.SPLIT_TITLES[split]
            figures.panel_figure(bucket_panels(buckets, split, cfg), figures_dir / name,
                                 title=f"Fig. 5: every method by the user's history length, {where}",
                                 xlabel="history items (bucket)", ylabels="headline metric")
            report.figures[name] = (f"figures/{name}",
                                    f"Fig. 5: headline metric by history-length bucket, "
                                    f"{tables.SPLIT_TITLES[split]}")
    report.metrics["ablation_rows"] = float(len(rows))
    return report


def index_markdown(report: Report) -> str:
    """reports/README.md: one line per table and figure, the provenance line, and what is missing and why."""
    lines = ["# Reports: the paper's tables and figures, ours beside the paper's", "", report.header, "",
             "Written by the `report` stage (`python -m flows.stage report`); the paper's numbers come from "
             "`p2p/report/paper/` (copies of the paper's tables).", "", "## Tables", ""]
    lines += [f"- [{t.title}](tables/{t.name}.md) ([CSV](tables/{t.name}.csv))" for t in report.tables]
    lines += ["", "## Figures", ""]
    for path, caption in sorted(report.figures.values()):
        lines += [f"### {caption}", "", f"![{caption}]({path})", ""]
    if report.notes:
        lines += ["", "## Notes", "", *(f"- {n}" for n in report.notes)]
    return "\n".join(lines) + "\n"


def run(cfg: Config, root: Path, rec: Recorder) -> None:
    """Build the report from the earlier stages' files and the comparable evaluate runs in MLflow (the ablations)."""
    params = default_params_path()
    grid = load_grid(cfg.preset, params if params.is_absolute() else root / params)
    report = report_stage(cfg, root, collect_rows(cfg, root), grid)
    rec.log_metrics(report.metrics)
    out = Paths(cfg, root).reports
    rec.log_artifact(out / "tables", "reports/tables")
    rec.log_artifact(out / "figures", "reports/figures")
    rec.log_artifact(out / "README.md", "reports")
    for table in ("table1", "table2"):  # every method on held-out users: random and OOD split
        rec.publish(out / "tables" / f"{table}.md", f"report-{table}")


def report_stage(cfg: Config, root: Path, rows: Sequence[EvalRow], grid: GridConfig) -> Report:
    """Build and write everything: reports/tables, reports/figures (each replaced whole) and reports/README.md."""
    out = Paths(cfg, root).reports
    made: dict[str, Report] = {}

    def fill_figures(tmp: Path) -> None:
        made["report"] = build_report(cfg, root, rows, tmp, grid)

    write_dir(out / "figures", fill_figures, ours=lambda entry: entry.suffix == ".png" and entry.is_file())
    report = made["report"]

    def fill_tables(tmp: Path) -> None:
        for table in report.tables:
            write_text(tmp / f"{table.name}.md", table.markdown)
            write_text(tmp / f"{table.name}.csv", table.csv)

    write_dir(out / "tables", fill_tables, ours=lambda entry: entry.suffix in (".md", ".csv") and entry.is_file())
    write_text(out / "README.md", index_markdown(report))
    log.info("report: %d tables, %d figures, %d notes", len(report.tables), len(report.figures), len(report.notes))
    return report
