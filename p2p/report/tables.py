"""The paper's tables with our numbers beside the paper's: pure functions from loaded inputs to rows, markdown, CSV.

Every builder returns a `Table`: its CSV rows hold raw numbers (one value per cell, long format, so pandas or a
spreadsheet reads them back), its markdown the readable layout ("ours (paper)" per cell; in Tables 1-2 "ours [95%
interval] (paper)") under a header that says where our numbers come from. Nothing here reads files:
`p2p.report.stage` loads the inputs and writes the results.

Our numbers are the official LaMP metrics (`official/...`: macro F1, case-sensitive labels); the CSVs also carry the
P2P-style ones (`p2p/...`: weighted F1, lower-cased labels), the style of the authors' code behind the paper's
numbers.
"""

from __future__ import annotations

import csv
import io
import math
import shlex
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from p2p.methods import REFERENCE_METHODS
from p2p.methods import TITLES as METHOD_TITLES
from p2p.methods import names as method_names
from p2p.report.markdown import markdown_table, with_interval
from p2p.report.paper import KIND_COLUMNS, PAPER_SPLIT
from p2p.report.runs import ABLATION_PARAMS, EvalRow
from p2p.tasks import get_task

PAPER_METHODS = method_names(in_paper=True)
OURS_ONLY_METHODS = method_names(in_paper=False)  # P2P with another user's profile (Table 5); the synthetic
# benchmark's planted rule and user-blind best
SPLIT_TITLES = {"random_test": "random split", "ood_test": "OOD split"}

#: The paper's metric names -> our metric keys (the headline: choice-scored where the task has a fixed label set;
#: the generated answers' official style; their P2P style).
METRIC_KEYS = {"Acc": ("choice/accuracy", "official/accuracy", "p2p/accuracy"),
               "F1": ("choice/f1", "official/f1_macro", "p2p/f1_weighted"),
               "MAE": ("choice/mae", "official/mae", "p2p/mae"), "RMSE": ("choice/rmse", "official/rmse", "p2p/rmse"),
               "R-1": ("official/rouge1", "official/rouge1", "p2p/rouge1"),
               "R-L": ("official/rougeL", "official/rougeL", "p2p/rougeL"),
               "ms": ("ms_per_instance", "ms_per_instance", "ms_per_instance")}
LOWER_IS_BETTER = {"MAE", "RMSE", "ms"}
KIND_METRICS = {"classification": ("Acc", "F1"), "rating": ("MAE", "RMSE"), "generation": ("R-1", "R-L"),
                "open_ended": ()}
#: Tables 4-5 columns -> (task kind, paper metric name).
KIND_COLUMN_METRIC = {"class_acc": ("classification", "Acc"), "class_f1": ("classification", "F1"),
                      "gen_r1": ("generation", "R-1"), "gen_rl": ("generation", "R-L"),
                      "rating_mae": ("rating", "MAE"), "rating_rmse": ("rating", "RMSE")}
#: The paper's average rows of Tables 1-2: row name -> task kind.
AVERAGE_ROWS = {"AVG-classification": "classification", "AVG-generation": "generation"}
TIME_ROW = "INFER-TIME"

#: Table 5: our `profile.variant` values -> the paper's row names.
VARIANTS = {"full": "full", "random": "random_user_profile", "shuffled": "shuffle_user_profile",
            "summary_only": "summary_only", "retrieved_only": "retrieved_history_only",
            "full_history_only": "full_history_only"}
#: Table 4: the paper's rows -> (model.embedder, model.embedder_kind) that reproduce them. The paper's
#: "gte-large-en" is taken to be Alibaba-NLP/gte-large-en-v1.5; its last-layer row used its 7B base LLM.
PAPER_EMBEDDERS = {"Qwen3-Emb-0.6B": ("Qwen/Qwen3-Embedding-0.6B", "sentence"),
                   "Qwen3-Emb-4B": ("Qwen/Qwen3-Embedding-4B", "sentence"),
                   "Qwen3-Emb-8B": ("Qwen/Qwen3-Embedding-8B", "sentence"),
                   "Qwen2.5-7B-It": ("", "last_layer"),
                   "gte-large-en": ("Alibaba-NLP/gte-large-en-v1.5", "sentence")}
NON_PERSONALIZED = "Non-Personalized"
#: Table 3: our open-ended task ids -> the paper's dataset names.
JUDGE_DATASETS = {"PersonalReddit": "personal_reddit", "EmpatheticConv": "empathetic_conv"}
JUDGE_TITLES = {"personal_reddit": "Personal Reddit", "empathetic_conv": "Empathetic Conversations"}

CURRENT = "current"  # run_id of the rows read from this workspace's reports/eval/metrics.json

TaskKey = tuple[str, str]  # (dataset, canonical task id)
#: split -> (dataset, task) -> method -> metric -> value (reports/eval/metrics.json, task keys resolved)
EvalMetrics = Mapping[str, Mapping[TaskKey, Mapping[str, Mapping[str, Any]]]]


@dataclass(frozen=True)
class Table:
    """One report table: `name` is the file stem; `columns`/`rows` the CSV (raw values, None = empty)."""

    name: str
    title: str
    columns: tuple[str, ...]
    rows: list[tuple[Any, ...]]
    markdown: str

    @property
    def csv(self) -> str:
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(self.columns)
        writer.writerows([["" if v is None else v for v in row] for row in self.rows])
        return buf.getvalue()


# --- small helpers ---------------------------------------------------------------------------------------------


def num(value: Any) -> float | None:
    """A metric value as a float, or None when there is none (None, NaN as MLflow stores a missing value, text)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    return None if math.isnan(value) else value


def fmt(value: float | None, digits: int = 3) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def interval(value: Any) -> tuple[float, float] | None:
    """A metric's `_ci95` value as (lo, hi), or None when there is none."""
    if not isinstance(value, (list, tuple)) or len(value) != 2:
        return None
    lo, hi = num(value[0]), num(value[1])
    return None if lo is None or hi is None else (lo, hi)


def cell(ours: float | None, paper: float | None, digits: int = 3, *, ours_missing: str = "—",
         ci: tuple[float, float] | None = None) -> str:
    """`ours (paper)`, or `ours [lo, hi] (paper)` with our 95% interval; one side alone where the other has no
    value."""
    left = ours_missing if ours is None else with_interval(ours, ci, digits)
    return left if paper is None else f"{left} ({fmt(paper, digits)})"


def mean_or_none(values: Sequence[float | None]) -> float | None:
    """The mean, or None if any value is missing: an average over fewer tasks would not be comparable."""
    if not values or any(v is None for v in values):
        return None
    return sum(values) / len(values)


def task_ref(key: str, configured: Sequence[tuple[str, str]]) -> TaskKey:
    """`synth/LaMP-2M`, or a bare `LaMP-2M` as the evaluate stage keys its metrics -> (dataset, canonical task id).

    A bare id takes the first configured dataset with that task (ValueError for an unknown task)."""
    if "/" in key:
        dataset, name = key.split("/", 1)
        return dataset, get_task(name).id
    task = get_task(key).id
    dataset = next((d for d, t in configured if get_task(t).id == task), "")
    return dataset, task


def task_label(key: TaskKey) -> str:
    return f"{key[0]}/{key[1]}" if key[0] else key[1]


@dataclass(frozen=True)
class RunInfo:
    """What the tables say about the run their numbers come from (the report stage builds it from the config)."""

    preset: str
    base_llm: str
    embedder: str
    embedder_kind: str
    sources: tuple[tuple[str, tuple[str, ...]], ...]  # (dataset, its tasks), in params order
    params: Mapping[str, str]  # ABLATION_PARAMS -> this run's value, as MLflow logs it (a string)
    judge_base_url: str | None = None
    judge_model: str | None = None
    judge_local_model: str | None = None
    mlflow_ui: str = ""  # where the MLflow UI is: the ablation tables link each row's run there

    def tasks(self) -> list[tuple[str, str]]:
        """Every configured (dataset, task) pair, in params order."""
        return [(dataset, task) for dataset, tasks in self.sources for task in tasks]


def judge_label(info: RunInfo, reported: str | None = None) -> str:
    """Who judges: the label the judge stage reported, else what the config says."""
    if reported:
        return reported
    if info.judge_base_url:
        return f"{info.judge_model or '(model not set)'} at {info.judge_base_url}"
    return f"local model {info.judge_local_model or info.base_llm} (no judge endpoint configured)"


def data_label(info: RunInfo) -> str:
    return "; ".join(f"{dataset}: {', '.join(tasks)}" for dataset, tasks in info.sources)


def provenance(info: RunInfo, judge: str) -> str:
    """The line every table starts with: which setting our numbers come from, and that the paper's is another."""
    synthetic = any(dataset == "synth" for dataset, _ in info.sources)
    lines = [f"Ours: preset `{info.preset}`, base LLM `{info.base_llm}`, embedder `{info.embedder}` "
             f"({info.embedder_kind}), judge {judge}, data {data_label(info)}.",
             "The paper's numbers (in parentheses) come from Qwen2.5-7B-Instruct on the real LaMP/LongLaMP data, a "
             "far larger scale than ours: compare the pattern across methods, not the values."]
    if synthetic:
        lines.append("`synth/...` tasks are the embedded synthetic stand-ins of the LaMP tasks with the same ids "
                     "(same formats and metrics, planted personalisation), not the real benchmark.")
    return " ".join(lines)


def exp_command(info: RunInfo, changes: Mapping[str, str]) -> str:
    """The `dvc exp run` that runs this preset with `changes` (only the params that differ from the config)."""
    current = current_params(info)
    sets = [f"-S {shlex.quote(f'{k}={v}')}" for k, v in changes.items() if not same_value(current.get(k), v)]
    return " ".join(["dvc exp run", f"-S preset={info.preset}", *sets])


# --- Tables 1 and 2 ----------------------------------------------------------------------------------------------


def _method_values(by_method: Mapping[str, Mapping[str, Any]], metric: str) -> dict[str, tuple[Any, ...]]:
    """method -> (headline value, its 95% interval, official value, P2P-style value)."""
    headline, official, p2p_style = METRIC_KEYS[metric]
    return {m: (num(v.get(headline)), interval(v.get(headline + "_ci95")), num(v.get(official)),
                num(v.get(p2p_style))) for m, v in by_method.items()}


def _averages(ours: Mapping[TaskKey, Mapping[str, Mapping[str, Any]]], keys: Sequence[TaskKey], metric: str,
              methods: Sequence[str]) -> dict[str, tuple[Any, ...]]:
    """Means over tasks (without an interval: each task resamples its own users)."""
    out = {}
    for m in methods:
        values = [_method_values(ours[k], metric).get(m, (None,) * 4) for k in keys]
        out[m] = (mean_or_none([v[0] for v in values]), None, mean_or_none([v[2] for v in values]),
                  mean_or_none([v[3] for v in values]))
    return out


def _sample(by_method: Mapping[str, Mapping[str, Any]]) -> tuple[int | None, int | None]:
    """(queries, users) a task's results rest on (the same for every method)."""
    for scores in by_method.values():
        queries, users = num(scores.get("n_queries")), num(scores.get("n_users"))
        if queries is not None and users is not None:
            return int(queries), int(users)
    return None, None


def main_table(split: str, ours: Mapping[TaskKey, Mapping[str, Mapping[str, Any]]],
               paper: Mapping[tuple[str, str, str], float], header: str) -> Table:
    """Table 1 (`random_test`) or 2 (`ood_test`): per task and metric, every method's `ours [95% interval] (paper)`.

    Rows: the paper's tasks in its order (ours beside those with the same task id), then our tasks the paper does
    not have, then the per-kind averages (ours over our tasks of that kind) and milliseconds per instance.
    """
    number = {"random_test": 1, "ood_test": 2}[split]
    extra = [m for m in OURS_ONLY_METHODS if any(m in by_method for by_method in ours.values())]
    extra += [m for by_method in ours.values() for m in by_method if m not in PAPER_METHODS and m not in extra]
    methods = [*PAPER_METHODS, *dict.fromkeys(extra)]
    paper_metrics: dict[str, list[str]] = {}
    for task, metric, _ in paper:
        if metric not in paper_metrics.setdefault(task, []):
            paper_metrics[task].append(metric)
    by_id: dict[str, list[TaskKey]] = {}
    for key in ours:
        by_id.setdefault(key[1], []).append(key)

    # (task shown, our data, metric, method -> (headline, its interval, official, p2p-style), paper task row)
    specs: list[tuple[str, str, str, dict[str, tuple[Any, ...]], str | None]] = []
    for task, metrics in paper_metrics.items():
        if task in AVERAGE_ROWS or task == TIME_ROW:
            continue
        for key in by_id.get(task, [None]):
            for metric in metrics:
                values = _method_values(ours[key], metric) if key is not None else {}
                specs.append((task, "—" if key is None else task_label(key), metric, values, task))
    for key in ours:
        if key[1] not in paper_metrics:
            for metric in KIND_METRICS[get_task(key[1]).kind]:
                specs.append((key[1], task_label(key), metric, _method_values(ours[key], metric), None))
    for row, kind in AVERAGE_ROWS.items():
        keys = [k for k in ours if get_task(k[1]).kind == kind]
        for metric in paper_metrics.get(row, list(KIND_METRICS[kind])):
            label = "mean of " + ", ".join(task_label(k) for k in keys) if keys else "—"
            specs.append((row, label, metric, _averages(ours, keys, metric, methods) if keys else {}, row))
    time_keys = list(ours)
    specs.append((TIME_ROW, "mean over our tasks" if time_keys else "—", "ms",
                  _averages(ours, time_keys, "ms", methods) if time_keys else {}, TIME_ROW))

    samples = {task_label(key): _sample(by_method) for key, by_method in ours.items()}
    rows, lines = [], []
    for task, data, metric, values, paper_task in specs:
        arrow = "↓" if metric in LOWER_IS_BETTER else "↑"
        digits = 1 if metric == "ms" else 3
        n_queries, n_users = samples.get(data, (None, None))
        cells = []
        for m in methods:
            ours_value, ci, official, p2p_style = values.get(m, (None,) * 4)
            ref = paper.get((paper_task, metric, m)) if paper_task else None
            cells.append(cell(ours_value, ref, digits, ci=ci))
            rows.append((split, task, None if data == "—" else data, metric, m, ours_value,
                         *(ci or (None, None)), official, p2p_style, ref, n_queries, n_users))
        shown = data if n_users is None else f"{data} ({n_users} users, {n_queries} queries)"
        lines.append([task, shown, f"{metric} {arrow}", *cells])
    title = f"Table {number}: every method on held-out users, {SPLIT_TITLES[split]}"
    md = [f"# {title}", "", header, "",
          "Each cell: ours [95% interval] (paper). Ours: for the tasks with a fixed label set (classification, "
          "rating) the choice-scored answers (the label the model finds most likely after the method's prompt and "
          "adapter), else the official LaMP metrics of the generated answers (the CSV also has the generated "
          "answers' official and P2P-style metrics), with the 95% bootstrap interval over our test users (users "
          "resampled with all their queries; "
          "reports/eval/comparisons.json has P2P's paired differences); `—`: no value (the task or method is not "
          "in that run). "
          + ("‡ ours only: P2P with another test user's profile (Table 5's shuffled profile). "
             if "p2p_shuffled" in extra else "")
          + ("† ours only: the synthetic benchmark's planted rule with the true preference, and the best "
             "user-blind answer. " if set(REFERENCE_METHODS) & set(extra) else "")
          + "Averages of ours are over our tasks of that kind (no interval: each task resamples its own users); "
          "the paper's over its own tasks. ms: milliseconds per instance (ours: batched greedy generation on this "
          "machine, so not comparable with the paper's GPU timings).", "",
          *markdown_table(["task", "ours: data", "metric", *(METHOD_TITLES.get(m, m) for m in methods)], lines), ""]
    columns = ("split", "task", "our_task", "metric", "method", "ours", "ours_ci95_lo", "ours_ci95_hi",
               "ours_official", "ours_p2p_style", "paper", "n_queries", "n_users")
    return Table(f"table{number}", title, columns, rows, "\n".join(md))


# --- Table 3 -----------------------------------------------------------------------------------------------------


def judge_table(ours: Mapping[str, Mapping[TaskKey, Mapping[str, Mapping[str, Any]]]] | None,
                paper: Mapping[tuple[str, str, str], float], splits: Sequence[str], header: str,
                reason: str | None = None) -> Table:
    """Table 3: mean 1-5 judge score per dataset, split and method, `ours [scored/n] (paper)`.

    `ours` is reports/judge/metrics.json with task keys resolved (None when the judge stage wrote nothing);
    `reason` says why ours is missing, printed above the table."""
    datasets = list(dict.fromkeys(d for d, _, _ in paper))
    methods = list(dict.fromkeys(m for _, _, m in paper))
    ours = ours or {}
    for by_task in ours.values():
        methods += [m for by_method in by_task.values() for m in by_method if m not in methods]
    rows, lines = [], []
    for dataset in datasets:
        for split in splits:
            ours_task = next((by_method for key, by_method in ours.get(split, {}).items()
                              if JUDGE_DATASETS.get(key[1]) == dataset), None)
            cells = []
            for m in methods:
                ref = paper.get((dataset, PAPER_SPLIT[split], m))
                summary = (ours_task or {}).get(m)
                mean = num(summary.get("mean")) if summary else None
                text = "not run" if summary is None else (
                    f"{'n/a' if mean is None else fmt(mean, 2)} [{summary.get('scored', '?')}/{summary.get('n', '?')}]")
                cells.append(text if ref is None else f"{text} ({fmt(ref, 2)})")
                rows.append((JUDGE_TITLES.get(dataset, dataset), split, m, mean,
                             None if summary is None else summary.get("scored"),
                             None if summary is None else summary.get("n"),
                             None if summary is None else summary.get("forced"), ref,
                             reason if summary is None and reason else None))
            lines.append([JUDGE_TITLES.get(dataset, dataset), SPLIT_TITLES[split], *cells])
    title = "Table 3: LLM-as-a-judge scores (1-5) on the open-ended tasks"
    md = [f"# {title}", "", header, ""]
    if reason:
        md += [f"**Ours: not run — {reason}.**", ""]
    md += ["Each cell: ours [answers scored / answers] (paper, GPT-4o judge). A local judge's scores are not "
           "comparable with GPT-4o's; forced-choice scores (judge.forced_choice) are counted in the CSV.", "",
           *markdown_table(["dataset", "split", *(METHOD_TITLES.get(m, m) for m in methods)], lines), ""]
    columns = ("dataset", "split", "method", "ours_mean", "ours_scored", "ours_n", "ours_forced", "paper", "note")
    return Table("table3", title, columns, rows, "\n".join(md))


# --- ablation runs: which rows count -----------------------------------------------------------------------------


def current_params(info: RunInfo) -> dict[str, str]:
    """The ablation params of this run, as MLflow logs them (strings)."""
    return {k: info.params[k] for k in ABLATION_PARAMS}


def canonical(value: Any) -> str:
    """One spelling per value ("2", "2.0" -> "2.0"), so logged strings and config values compare equal."""
    try:
        return repr(float(value))
    except (TypeError, ValueError):
        return str(value)


def same_value(a: Any, b: Any) -> bool:
    return a is not None and b is not None and canonical(a) == canonical(b)


def current_rows(metrics: EvalMetrics, info: RunInfo) -> list[EvalRow]:
    """This workspace's evaluate results (reports/eval/metrics.json) as rows with the config's params: they count
    as a run of the current setting even when MLflow has none, and win over MLflow rows of the same setting."""
    params = current_params(info)
    return [EvalRow(method=m, task=task_label(key), split=split, params=params, metrics=numeric_scores(scores),
                    run_id=CURRENT)
            for split, by_task in metrics.items() for key, by_method in by_task.items()
            for m, scores in by_method.items()]


def numeric_scores(scores: Mapping[str, Any]) -> dict[str, float]:
    """One method's scores as the report reads MLflow rows: numbers only (a missing value has no key, where the
    evaluate stage logs NaN: p2p.evaluation.scores.flat_scores), each `<metric>_ci95` [lo, hi] as `_ci95_lo`/`_hi`."""
    out = {k: float(v) for k, v in scores.items() if num(v) is not None}
    for key, value in scores.items():
        bounds = interval(value) if key.endswith("_ci95") else None
        if bounds is not None:
            out[f"{key}_lo"], out[f"{key}_hi"] = bounds
    return out


def row_interval(row: EvalRow, metric: str) -> tuple[float, float] | None:
    """A row's 95% interval of `metric` (`<metric>_ci95_lo` and `_hi`), or None when it has none."""
    lo, hi = num(row.metrics.get(f"{metric}_ci95_lo")), num(row.metrics.get(f"{metric}_ci95_hi"))
    return None if lo is None or hi is None else (lo, hi)


@dataclass
class Setting:
    """One ablation setting's newest result per task (`rows`), and how to show it."""

    values: tuple[str, ...]
    rows: dict[TaskKey, EvalRow]

    @property
    def source(self) -> str:
        runs = sorted({r.run_id for r in self.rows.values()})
        if runs == [CURRENT]:
            return "current run"
        return ("current run + " if CURRENT in runs else "") + "MLflow run " + ", ".join(
            r[:8] for r in runs if r != CURRENT)

    def linked(self, ui: str) -> str:
        """`source` with each MLflow run a link to its page in the MLflow UI at `ui` (when the run's experiment is
        known)."""
        links = {r.run_id: f"[{r.run_id[:8]}]({ui}/#/experiments/{r.experiment_id}/runs/{r.run_id})"
                 for r in self.rows.values() if ui and r.experiment_id and r.run_id != CURRENT}
        text = self.source
        for run_id, link in links.items():
            text = text.replace(run_id[:8], link, 1)
        return text

    def averages(self) -> dict[str, float | None]:
        return kind_averages({key[1]: row.metrics for key, row in self.rows.items()})


def select(rows: Iterable[EvalRow], info: RunInfo, vary: Sequence[str], method: str, split: str,
           key: Callable[[Mapping[str, str]], tuple[str, ...]] | None = None) -> dict[tuple[str, ...], Setting]:
    """The settings of the params in `vary`, each with its newest row per configured task.

    Only rows of `method` and `split` whose other ablation params all equal this config's count (a k-sweep run
    must not land in the variant table). Newest: this workspace's own results first, then the latest start_time.
    `key` maps a row's params to its setting (default: the canonical values of `vary`)."""
    current = current_params(info)
    configured = info.tasks()
    wanted = {(d, get_task(t).id) for d, t in configured}
    key = key or (lambda params: tuple(canonical(params.get(p)) for p in vary))
    out: dict[tuple[str, ...], Setting] = {}
    for row in rows:
        if row.method != method or row.split != split:
            continue
        if not all(same_value(row.params.get(p), current[p]) for p in ABLATION_PARAMS if p not in vary):
            continue
        try:
            task = task_ref(row.task, configured)
        except ValueError:
            continue
        if task not in wanted:
            continue
        setting = out.setdefault(key(row.params), Setting(tuple(str(row.params.get(p)) for p in vary), {}))
        old = setting.rows.get(task)
        if old is None or (row.run_id == CURRENT, row.start_time) > (old.run_id == CURRENT, old.start_time):
            setting.rows[task] = row
    return out


def kind_averages(by_task: Mapping[str, Mapping[str, Any]]) -> dict[str, float | None]:
    """Tables 4-5 columns: each kind's headline metric (choice-scored for classification and rating) averaged over
    the tasks of that kind; None where there is no task of the kind or a task lacks the value."""
    out = {}
    for column, (kind, metric) in KIND_COLUMN_METRIC.items():
        values = [num(m.get(METRIC_KEYS[metric][0])) for task, m in by_task.items() if get_task(task).kind == kind]
        out[column] = mean_or_none(values)
    return out


# --- Tables 4 and 5 ----------------------------------------------------------------------------------------------

_KIND_HEADER = ["class Acc ↑", "class F1 ↑", "gen R-1 ↑", "gen R-L ↑", "rating MAE ↓", "rating RMSE ↓"]
_KIND_CSV = tuple(f"{side}_{c}" for c in KIND_COLUMNS for side in ("ours", "paper"))


def _kind_row(ours: Mapping[str, float | None] | None, paper: Mapping[str, float] | None,
              missing: str = "not run") -> tuple[list[str], list]:
    cells, raw = [], []
    for c in KIND_COLUMNS:
        o = None if ours is None else ours.get(c)
        p = None if paper is None else paper.get(c)
        cells.append(cell(o, p, ours_missing=missing if ours is None else "—"))
        raw += [o, p]
    return cells, raw


def _coverage(setting: Setting, n_tasks: int) -> str:
    return "" if len(setting.rows) >= n_tasks else f" ({len(setting.rows)} of {n_tasks} tasks)"


def ablation_table(rows: Sequence[EvalRow], info: RunInfo, paper: Mapping[str, Mapping[str, float]],
                   header: str, compare: str | None = None) -> Table:
    """Table 5: P2P on the OOD split per `profile.variant`, averages per task kind, `ours (paper)`; a variant with
    no run says `not run` and gives the `dvc exp run` that fills it.

    The shuffled profile comes two ways: the evaluate method `p2p_shuffled` (the full-profile hypernetwork, each
    OOD query given another test user's profile) and a `profile.variant=shuffled` run (shuffled in training too);
    each has its own row when it ran."""
    settings = select(rows, info, ("profile.variant",), "p2p", "ood_test")
    test_time = select(rows, info, ("profile.variant",), "p2p_shuffled", "ood_test").get((canonical("full"),))
    n_tasks = len(info.tasks())
    found = [s.values[0] for s in settings.values()]
    table_rows, lines = [], []

    def add(variant: str, method: str, label: str, setting: Setting | None) -> None:
        paper_name = VARIANTS.get(variant)
        command = None if setting else exp_command(info, {"profile.variant": variant})
        if paper_name and paper_name != variant:
            label += f" (paper: {paper_name})"
        cells, raw = _ablation_cells(setting, paper.get(paper_name) if paper_name else None, command, n_tasks,
                                     ui=info.mlflow_ui)
        lines.append([label, *cells])
        table_rows.append((variant, method, paper_name, *raw, command))

    for variant in dict.fromkeys([*VARIANTS, *found]):
        setting = settings.get((canonical(variant),))
        if variant == "shuffled" and test_time is not None:
            add(variant, "p2p_shuffled", "shuffled at test time (method p2p_shuffled)", test_time)
            if setting is None:
                continue
        add(variant, "p2p", variant if variant != "shuffled" or test_time is None
            else "shuffled in training and test (profile.variant=shuffled)", setting)
    title = "Table 5: component ablations of P2P, OOD split"
    md = _ablation_markdown(title, header, "P2P on the OOD test users with the profile variant `profile.variant`",
                            "`random`: random vectors instead of profile embeddings; `shuffled`: every user gets "
                            "another user's profile.", "profile.variant", lines)
    if compare:
        md += f"\nThese rows side by side in MLflow's compare view: {compare}\n"
    columns = ("variant", "method", "paper_variant", *_KIND_CSV, "source", "command")
    return Table("table5", title, columns, table_rows, md)


def _ablation_cells(setting: Setting | None, paper_value: Mapping[str, float] | None, command: str | None,
                    n_tasks: int, absent: bool = False, ui: str = "") -> tuple[list[str], tuple]:
    """An ablation table's markdown cells (per task kind, then where ours came from) and the same as CSV values
    (per task kind, then the source); a setting never run says so with the command that runs it (`make paper` runs
    every one), an `absent` one (hub weights not in the local Hugging Face cache) says that instead."""
    cells, raw = _kind_row(setting.averages() if setting else None, paper_value, "absent" if absent else "not run")
    if setting:
        source = f"{setting.linked(ui)}{_coverage(setting, n_tasks)}"
    elif absent:
        source = "absent: its weights are not in the local Hugging Face cache (download them, then `make paper`)"
    else:
        source = f"not run: `{command}` (or `make paper`)"
    return [*cells, source], (*raw, setting.source if setting else "absent" if absent else "not run")


def _ablation_markdown(title: str, header: str, what: str, note: str, first_column: str,
                       lines: list[list[str]]) -> str:
    """Tables 4 and 5 as markdown: what each cell holds, which runs count, the rows."""
    return "\n".join([f"# {title}", "", header, "",
                      f"Each cell: ours (paper): {what}, averaged over the tasks of each kind (official metrics). "
                      f"Only runs whose other ablation params equal this config's count; the newest run of a "
                      f"setting wins. {note}", "",
                      *markdown_table([first_column, *_KIND_HEADER, "ours from"], lines), ""])


def _embedder_key(params: Mapping[str, str]) -> tuple[str, ...]:
    """Table 4's setting: the embedder for sentence embedders; the last-layer kind alone (the name is unused)."""
    kind = str(params.get("model.embedder_kind"))
    return ("", kind) if kind == "last_layer" else (str(params.get("model.embedder")), kind)


def embedder_table(rows: Sequence[EvalRow], info: RunInfo, paper: Mapping[str, Mapping[str, float]],
                   header: str, absent: Sequence[str] = ()) -> Table:
    """Table 4: P2P on the OOD split per profile embedder (`model.embedder`, `model.embedder_kind`), plus the
    non-personalised base model; the paper's embedders we have not run say `not run` with their command."""
    settings = select(rows, info, ("model.embedder", "model.embedder_kind"), "p2p", "ood_test", key=_embedder_key)
    n_tasks = len(info.tasks())
    table_rows, lines = [], []

    def add(label: str, paper_name: str | None, setting: Setting | None, command: str | None,
            embedder: str, kind: str) -> None:
        cells, raw = _ablation_cells(setting, paper.get(paper_name) if paper_name else None, command, n_tasks,
                                     absent=embedder in absent, ui=info.mlflow_ui)
        lines.append([label, *cells])
        table_rows.append((paper_name, embedder, kind, *raw, command))

    for name, (embedder, kind) in PAPER_EMBEDDERS.items():
        if kind == "last_layer":
            label, changes = f"{name} — ours: last layer of {info.base_llm}", {"model.embedder_kind": kind}
        else:
            label, changes = f"{name} — ours: {embedder}", {"model.embedder": embedder, "model.embedder_kind": kind}
        setting = settings.pop((embedder, kind), None)
        add(label, name, setting, None if setting else exp_command(info, changes), embedder, kind)
    base = select(rows, info, (), "base", "ood_test").get(())
    add(f"{NON_PERSONALIZED} — ours: the base method", NON_PERSONALIZED, base,
        None if base else "dvc repro evaluate", "", "")
    for (embedder, kind), setting in settings.items():
        add(f"{embedder} ({kind}; not in the paper)", None, setting, None, embedder, kind)
    title = "Table 4: P2P with different profile embedders, OOD split"
    md = _ablation_markdown(title, header, "P2P on the OOD test users",
                            "The paper's hub embedders join `make paper` when their weights are in the local Hugging "
                            "Face cache (offline they fail at once, naming the command that fetches them)"
                            + (f"; absent on this machine: {', '.join(absent)}." if absent else "."),
                            "embedder", lines)
    columns = ("paper_variant", "embedder", "embedder_kind", *_KIND_CSV, "source", "command")
    return Table("table4", title, columns, table_rows, md)


# --- Fig. 4 numbers, Table 8 -------------------------------------------------------------------------------------


def deployment_table(oppu_seconds: Sequence[float], p2p_seconds: Sequence[float] | None,
                     paper: Mapping[str, float], header: str, note: str) -> Table:
    """Fig. 4's numbers: seconds per user to obtain an adapter, ours beside the paper's, and the speed-up."""
    def mean(values: Sequence[float] | None) -> float | None:
        return sum(values) / len(values) if values else None

    oppu, p2p = mean(oppu_seconds), mean(p2p_seconds)
    speedup = oppu / p2p if oppu is not None and p2p else None
    paper_speedup = paper["oppu_lora"] / paper["p2p"] if paper.get("p2p") and "oppu_lora" in paper else None
    rows = [("oppu", len(oppu_seconds), oppu, paper.get("oppu_lora")),
            ("p2p", len(p2p_seconds or []), p2p, paper.get("p2p")),
            ("speedup (oppu / p2p)", None, speedup, paper_speedup)]
    note += (" The paper's OPPU is its LoRA variant (as ours); its headline 33x is against its fastest OPPU variant "
             "(prompt tuning).")
    lines = [[name, "—" if n is None else str(n), fmt(o, 4), fmt(p, 2)] for name, n, o, p in rows]
    title = "Fig. 4 numbers: seconds per user to obtain a personalised adapter"
    md = [f"# {title}", "", header, "", note, "",
          *markdown_table(["method", "users", "ours, s per user", "paper, s per user"], lines), ""]
    return Table("deployment", title, ("method", "users", "ours_seconds_per_user", "paper_seconds_per_user"),
                 rows, "\n".join(md))


def split_table(ours: Mapping[TaskKey, Mapping[str, float]], queries: Mapping[TaskKey, Mapping[str, Any]],
                paper: Mapping[tuple[str, str], Mapping[str, float]], header: str) -> Table:
    """Table 8 (users and queries per split) for our tasks, the paper's numbers for the same task ids beside."""
    rows, lines = [], []
    for key, metrics in ours.items():
        for split in ("train", "random_test", "ood_test"):
            users = num(metrics.get(f"{split}_users"))
            n_queries = num(queries.get(key, {}).get(split))
            ref = paper.get((key[1], split), {})
            rows.append((task_label(key), split, users, n_queries, ref.get("users"), ref.get("queries")))
            lines.append([task_label(key), split, cell(users, ref.get("users"), 0),
                          cell(n_queries, ref.get("queries"), 0)])
    title = "Table 8: users and queries per split"
    md = [f"# {title}", "", header, "", "Each cell: ours (paper, same task id on the real data).", "",
          *markdown_table(["task", "split", "users", "queries"], lines), ""]
    return Table("table8", title, ("task", "split", "ours_users", "ours_queries", "paper_users",
                                          "paper_queries"), rows, "\n".join(md))
