"""Scoring the methods' answers alike: both metric styles, intervals over test users, P2P's paired differences.

A method's answers (`MethodRun`, as p2p.evaluation.answers makes them or the evaluate stages read them back) are
scored in both metric styles (`official/...` primary, `p2p/...` the paper's), choice-scored where the task has a
fixed label set, plus milliseconds per instance (wall time of the method's generation over its queries, adapters
included). Every metric gets a 95% bootstrap interval over the test users and P2P's difference from every other
method a paired one, all methods of a task and split on the same user resamples (`SplitScorer`,
p2p.tasks.bootstrap); Fig. 5 splits the headline by history length. Open-ended tasks get `n` and timing only: the
judge stage scores them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from p2p.data.records import UserRecord
from p2p.methods import PROPOSED
from p2p.profiles.build import visible_items
from p2p.tasks import get_task, headline_key
from p2p.tasks.bootstrap import (
    mean_statistic,
    paired_interval,
    percentile_interval,
    resample_weights,
    resampled_values,
    task_statistics,
)
from p2p.tasks.metrics import STYLES
from p2p.tasks.registry import choice_labels
from p2p.tasks.scoring import choice_score, format_valid, score


@dataclass
class MethodRun:
    method: str
    predictions: dict[str, str]  # query id -> answer, in query order
    seconds: float | None  # None for the reference rules, which cost nothing
    #: choice scoring, for tasks with a fixed label set: query id -> the most likely label, summed log-probability
    #: (`choice`) and per token (`choice_norm`); None for other tasks
    choices: dict[str, dict[str, str]] | None = None


#: MethodRun.choices' variants: the label of the highest summed log-probability, and per token.
CHOICE_VARIANTS = ("choice", "choice_norm")


def method_scores(task: str, run: MethodRun, golds: dict[str, str]) -> dict[str, float | None]:
    """`n`, `ms_per_instance`, then for tasks with a fixed label set the choice-scored metrics (`choice/...`, the
    headline; `choice_norm/...` length-normalised) and `format_valid` (the share of generated answers that are a
    label), then every metric of the generated answers in both styles (`official/...`, `p2p/...`). A metric that
    has no value (P2P-style MAE when no answer holds a number) is None, so every method of a task has the same keys."""
    spec = get_task(task)
    ids = list(run.predictions)
    out: dict[str, float | None] = {"n": float(len(ids))}
    if run.seconds is not None and ids:
        out["ms_per_instance"] = 1000 * run.seconds / len(ids)
    if spec.kind == "open_ended":
        return out
    preds, gold = [run.predictions[i] for i in ids], [golds[i] for i in ids]
    if run.choices is not None:
        for variant in CHOICE_VARIANTS:
            chosen = [run.choices[i][variant] for i in ids]
            out |= {f"{variant}/{key}": float(value) for key, value in choice_score(spec, chosen, gold).items()}
        out["format_valid"] = float(format_valid(spec, preds))
    for style in ("official", "p2p"):
        for key, value in score(spec, preds, gold, style).items():
            out[f"{style}/{key}"] = None if value is None else float(value)
    return out


#: The suffix of a metric's 95% interval in the scores: `official/accuracy_ci95` -> [lo, hi] (or None).
CI = "_ci95"


def interval_keys(scores: Mapping[str, Any]) -> list[str]:
    """The metrics of `method_scores` that get an interval: all but the sample size `n`, `ms_per_instance`, counts
    (`p2p/n_scored`, `p2p/n_dropped`) and the intervals themselves; a future metric key is covered unchanged."""
    return [k for k in scores if k not in ("n", "n_queries", "n_users", "ms_per_instance") and not k.endswith(CI)
            and not k.rsplit("/", 1)[-1].startswith("n_")]


def method_resamples(task: str, run: MethodRun, golds: dict[str, str], weights: np.ndarray,
                     scores: Mapping[str, float | None] | None = None) -> dict[str, np.ndarray]:
    """Every interval metric of `run` on each user resample (`weights`: B x the queries of `golds`, in their order;
    p2p.tasks.bootstrap.resample_weights): the fast statistics of both styles, and `method_scores` recomputed per
    resample for any metric without one. `scores`: the run's `method_scores`, when already computed."""
    spec = get_task(task)
    scores = method_scores(task, run, golds) if scores is None else scores
    keys = interval_keys(scores)
    if not keys:
        return {}
    ids = list(golds)
    if set(run.predictions) != set(ids):
        raise ValueError(f"{task} {run.method}: predictions and golds have different query ids")
    preds, gold = [run.predictions[i] for i in ids], [golds[i] for i in ids]
    fast = {f"{style}/{key}": statistic for style in STYLES
            for key, statistic in task_statistics(spec, preds, gold, style).items()}
    if run.choices is not None:  # chosen labels are always in format: the official rules score them exactly
        names = {"accuracy": "accuracy", "f1_macro": "f1", "mae": "mae", "rmse": "rmse"}
        for variant in CHOICE_VARIANTS:
            chosen = [run.choices[i][variant] for i in ids]
            fast |= {f"{variant}/{names[key]}": statistic
                     for key, statistic in task_statistics(spec, chosen, gold, "official").items() if key in names}
        labels = set(choice_labels(spec))
        fast["format_valid"] = mean_statistic([float(p.strip() in labels) for p in preds])

    def score_of(indices: np.ndarray) -> dict[str, float | None]:
        names = [str(j) for j in range(len(indices))]  # a query drawn twice is two entries
        picked = [ids[i] for i in indices]
        choices = None if run.choices is None else {n: run.choices[i] for n, i in zip(names, picked)}
        return method_scores(task, MethodRun(run.method, {n: run.predictions[i] for n, i in zip(names, picked)}, None,
                                             choices), {n: golds[i] for n, i in zip(names, picked)})

    return resampled_values(keys, weights, scores, fast, score_of)


def with_intervals(scores: Mapping[str, Any], resampled: Mapping[str, np.ndarray], n_users: int) -> dict[str, Any]:
    """The scores with each metric's `<metric>_ci95` ([lo, hi] or None) right after it, then `n_queries` and
    `n_users` (the sample the intervals resample)."""
    out: dict[str, Any] = {}
    for key, value in scores.items():
        out[key] = value
        if key in resampled:
            out[key + CI] = percentile_interval(resampled[key])
    out["n_queries"] = int(scores["n"])
    out["n_users"] = int(n_users)
    return out


def compare_methods(resampled: Mapping[str, Mapping[str, np.ndarray]], scores: Mapping[str, Mapping[str, Any]],
                    reference: str = PROPOSED) -> dict[str, dict[str, dict[str, Any]]]:
    """`<reference>-<method>` -> metric -> {"diff": reference's value - method's, "ci95": the paired interval of
    the difference over the same resamples}, for every other method; {} when the reference did not run."""
    if reference not in resampled:
        return {}
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for method, values in resampled.items():
        if method == reference:
            continue
        by_metric = {}
        for key, ours in resampled[reference].items():
            if key not in values:
                continue
            a, b = scores[reference].get(key), scores[method].get(key)
            diff = None if a is None or b is None else float(a) - float(b)
            by_metric[key] = {"diff": diff, "ci95": None if diff is None else paired_interval(ours, values[key])}
        if by_metric:
            out[f"{reference}-{method}"] = by_metric
    return out


class SplitScorer:
    """Scores the methods of one task x split as each finishes, every metric with its interval over the same user
    resamples, and compares the reference method (p2p) with every other once all are in (`comparisons`)."""

    def __init__(self, task: str, golds: dict[str, str], owner: dict[str, str], resamples: int, seed: int):
        self.task, self.golds = task, golds
        owners = [owner[i] for i in golds]
        self.n_users = len(set(owners))
        self.weights = resample_weights(owners, resamples, seed)
        self.scores: dict[str, dict[str, Any]] = {}
        self.resampled: dict[str, dict[str, np.ndarray]] = {}

    def add(self, run: MethodRun) -> dict[str, Any]:
        """`method_scores` of the run with `<metric>_ci95`, `n_queries` and `n_users`."""
        scores = method_scores(self.task, run, self.golds)
        self.resampled[run.method] = method_resamples(self.task, run, self.golds, self.weights, scores)
        self.scores[run.method] = with_intervals(scores, self.resampled[run.method], self.n_users)
        return self.scores[run.method]

    def comparisons(self, reference: str = PROPOSED) -> dict[str, dict[str, dict[str, Any]]]:
        return compare_methods(self.resampled, self.scores, reference)


def flat_scores(scores: Mapping[str, Any]) -> dict[str, float]:
    """Scores as MLflow metrics (floats only): `<metric>_ci95` becomes `<metric>_ci95_lo` and `_hi`; a missing value
    is NaN, so every run of a task has the same keys."""
    out: dict[str, float] = {}
    for key, value in scores.items():
        if key.endswith(CI):
            lo, hi = (None, None) if value is None else value
            out[f"{key}_lo"] = float("nan") if lo is None else float(lo)
            out[f"{key}_hi"] = float("nan") if hi is None else float(hi)
        else:
            out[key] = float("nan") if value is None else float(value)
    return out


def history_buckets(lengths: dict[str, int], buckets: int) -> dict[str, str]:
    """user -> history-length bucket label (`lo-hi` items), by quantiles of the given users' lengths (Fig. 5)."""
    values = np.array(sorted(lengths.values()))
    edges = np.unique(np.quantile(values, np.linspace(0, 1, buckets + 1)).round().astype(int))
    out = {}
    for user, n in lengths.items():
        i = min(int(np.searchsorted(edges, n, side="right")) - 1, max(0, len(edges) - 2))
        lo, hi = edges[i], edges[min(i + 1, len(edges) - 1)]
        out[user] = f"{lo}-{hi}"
    return out


def bucket_scores(task: str, run: MethodRun, golds: dict[str, str], owner: dict[str, str],
                  bucket_of: dict[str, str]) -> dict[str, dict[str, float]]:
    """The headline metric (`headline_key`: choice-scored where the task has a fixed label set) per history-length
    bucket: bucket -> {n, value}; value None when no answer of the bucket could be scored."""
    spec = get_task(task)
    if spec.kind == "open_ended":
        return {}
    key = headline_key(task)
    groups: dict[str, list[str]] = {}
    for qid in run.predictions:
        groups.setdefault(bucket_of[owner[qid]], []).append(qid)
    out = {}
    for bucket, ids in sorted(groups.items()):
        choices = None if run.choices is None else {i: run.choices[i] for i in ids}
        value = method_scores(task, MethodRun(run.method, {i: run.predictions[i] for i in ids}, None, choices),
                              {i: golds[i] for i in ids}).get(key)
        out[bucket] = {"n": float(len(ids)), "value": None if value is None else float(value)}
    return out


def user_history_lengths(records: list[UserRecord], users: list[str]) -> dict[str, int]:
    chosen = set(users)
    return {r.user_id: len(visible_items(r)) for r in records if r.user_id in chosen}
