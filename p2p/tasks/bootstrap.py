"""User-cluster bootstrap intervals of the task metrics, and paired intervals of the difference between two methods.

A test set's queries are not independent draws: the queries of one user share that user's history and taste. So
the unit of resampling is the user: each of B resamples draws as many users as the test set has, with replacement,
and takes every query of each drawn user (a user drawn twice counts twice); the metric is recomputed on the
resample. The 95% interval is the 2.5th and 97.5th percentile of the B values (percentile bootstrap). Two methods
scored on the same queries are compared on the same resamples, so the interval of their difference is paired (a
user who is hard for both methods cancels out), and a difference is resolved where that interval excludes 0.

A resample is a vector of query weights (how many times each query is in it), and a metric's values on B resamples
are a function of the (B, n) weight matrix. Metrics that are means over queries (accuracy, ROUGE, MAE) or built from
per-query counts (F1 from the weighted confusion counts, RMSE from the squared errors) are computed here for all B
resamples at once from per-query values, following p2p.tasks.metrics rule for rule (the official rating reading,
P2P-style unparsable ratings dropped: a resample without any scored answer has no value, NaN). Any other metric is
recomputed from scratch on each resample by a `score_of` callback, so a new metric gets its interval with no code
here, only slower. tests/test_bootstrap.py checks that each fast statistic equals recomputing the metric on the
resampled lists.

Seeded: the same owners, number of resamples and seed give the same resamples, so a rerun reproduces every interval.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable, Mapping, Sequence

import numpy as np

from p2p.tasks.metrics import first_number, gold_rating, label_index, official_rating, rouge_per_example
from p2p.tasks.registry import TaskSpec

log = logging.getLogger(__name__)

#: The coverage of every interval (the `_ci95` keys).
LEVEL = 0.95

#: (B, n) query weights -> (B,) values of a metric on each resample, NaN where it has no value.
Statistic = Callable[[np.ndarray], np.ndarray]


def resample_weights(owners: Sequence[str], resamples: int, seed: int) -> np.ndarray:
    """(B, n) integer weights: how many times query q (asked by user `owners[q]`) is in resample b.

    Each resample draws len(users) users with replacement (users in order of first appearance) and takes all
    their queries; the same arguments always give the same weights."""
    if resamples < 1:
        raise ValueError(f"resamples must be at least 1, got {resamples}")
    if not owners:
        raise ValueError("nothing to resample: no queries")
    users = list(dict.fromkeys(owners))
    column = {u: i for i, u in enumerate(users)}
    drawn = np.random.default_rng(seed).integers(0, len(users), size=(resamples, len(users)))
    offsets = len(users) * np.arange(resamples)[:, None]
    counts = np.bincount((drawn + offsets).ravel(), minlength=resamples * len(users)).reshape(resamples, len(users))
    return counts[:, [column[o] for o in owners]]


def resample_indices(weights: np.ndarray) -> np.ndarray:
    """The query indices of one resample (one row of `resample_weights`), each repeated by its weight."""
    return np.repeat(np.arange(len(weights)), weights)


def _ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """numerator / denominator, NaN where the denominator is 0 (no query to average over)."""
    safe = np.where(denominator > 0, denominator, 1.0)
    return np.where(denominator > 0, numerator / safe, np.nan)


def mean_statistic(values: Sequence[float], mask: Sequence[bool] | None = None) -> Statistic:
    """The weighted mean of per-query values (over the queries in `mask` only, when given)."""
    v = np.asarray(values, dtype=float)
    m = np.ones(len(v)) if mask is None else np.asarray(mask, dtype=float)
    v = np.where(m > 0, v, 0.0)
    return lambda w: _ratio(w @ v, w @ m)


def root_statistic(inner: Statistic) -> Statistic:
    return lambda w: np.sqrt(inner(w))


def f1_statistic(pred_idx: Sequence[int], gold_idx: Sequence[int], n_labels: int, average: str) -> Statistic:
    """F1 over the label indices 0..K-1 from the weighted confusion counts, as sklearn's `f1_score(labels=range(K),
    zero_division=0)`: per label 2TP / (2TP + FP + FN) = 2TP / (predicted + gold), 0 where a label is neither
    predicted nor gold; `macro` averages the K labels, `weighted` weighs them by their gold count. A prediction of
    -1 (no label) is a miss for its gold's label and a false positive for none."""
    if average not in ("macro", "weighted"):
        raise ValueError(f"unknown average {average!r}")
    labels = np.arange(n_labels)
    gold_is = (np.asarray(gold_idx)[:, None] == labels).astype(float)
    pred_is = (np.asarray(pred_idx)[:, None] == labels).astype(float)
    hit = gold_is * pred_is

    def statistic(w: np.ndarray) -> np.ndarray:
        gold = w @ gold_is
        both = gold + w @ pred_is
        f1 = np.where(both > 0, _ratio(2 * (w @ hit), both), 0.0)
        if average == "macro":
            return f1.mean(axis=1)
        return _ratio((f1 * gold).sum(axis=1), gold.sum(axis=1))

    return statistic


def task_statistics(spec: TaskSpec, preds: Sequence[str], golds: Sequence[str], style: str) -> dict[str, Statistic]:
    """The fast statistic of each metric `p2p.tasks.scoring.score(spec, preds, golds, style)` returns (same keys;
    counts such as `n_scored` get none): the metric of every resample from the per-query values."""
    if spec.kind == "classification":
        ignore_case = style == "p2p"
        gold_idx = [label_index(g, spec.labels, ignore_case=ignore_case) for g in golds]
        pred_idx = [label_index(p, spec.labels, ignore_case=ignore_case) for p in preds]
        average = "macro" if style == "official" else "weighted"
        return {"accuracy": mean_statistic([float(p == g) for p, g in zip(pred_idx, gold_idx)]),
                f"f1_{average}": f1_statistic(pred_idx, gold_idx, len(spec.labels), average)}
    if spec.kind == "rating":
        gold_values = [gold_rating(g) for g in golds]
        if style == "official":
            errors = [official_rating(p, g) - g for p, g in zip(preds, gold_values)]
            mask = None
        else:
            readings = [first_number(p) for p in preds]
            errors = [0.0 if r is None else r - g for r, g in zip(readings, gold_values)]
            mask = [r is not None for r in readings]
        return {"mae": mean_statistic([abs(e) for e in errors], mask),
                "rmse": root_statistic(mean_statistic([e * e for e in errors], mask))}
    if spec.kind == "generation":
        return {key: mean_statistic(values) for key, values in rouge_per_example(preds, golds).items()}
    return {}


def _agrees(fast: float, value: float | None) -> bool:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return math.isnan(fast)
    return not math.isnan(fast) and math.isclose(fast, value, rel_tol=1e-9, abs_tol=1e-12)


def resampled_values(keys: Iterable[str], weights: np.ndarray, full: Mapping[str, float | None],
                     fast: Mapping[str, Statistic],
                     score_of: Callable[[np.ndarray], Mapping[str, float | None]]) -> dict[str, np.ndarray]:
    """(B,) values of every metric in `keys` on the resamples `weights` (NaN where a resample has no value).

    `full` holds each metric on all queries (the point estimate), `fast` the statistics that compute a metric for
    all resamples at once, `score_of(indices)` every metric on the queries at `indices` (repeats included). A
    metric is recomputed with `score_of` on each resample when it has no fast statistic, or when its fast statistic
    on all queries disagrees with `full` (the metric changed and its statistic did not: logged)."""
    keys = list(keys)
    everything, as_float = np.ones((1, weights.shape[1])), weights.astype(float)
    out: dict[str, np.ndarray] = {}
    slow = []
    for key in keys:
        statistic = fast.get(key)
        if statistic is not None and _agrees(float(statistic(everything)[0]), full.get(key)):
            out[key] = np.asarray(statistic(as_float), dtype=float)
            continue
        if statistic is not None:
            log.warning("bootstrap: the fast statistic of %s disagrees with the metric; recomputing it per resample",
                        key)
        slow.append(key)
    if slow:
        values = np.full((len(slow), len(weights)), np.nan)
        for b, row in enumerate(weights):
            scores = score_of(resample_indices(row))
            for k, key in enumerate(slow):
                value = scores.get(key)
                values[k, b] = np.nan if value is None else float(value)
        out |= dict(zip(slow, values))
    return {key: out[key] for key in keys}


def percentile_interval(values: np.ndarray, level: float = LEVEL) -> list[float] | None:
    """[lo, hi]: the (1-level)/2 and (1+level)/2 quantiles (numpy's linear interpolation) of the resampled values
    that have one; None when no resample has a value."""
    values = np.asarray(values, dtype=float)
    values = values[np.isfinite(values)]
    if not values.size:
        return None
    tail = 100 * (1 - level) / 2
    lo, hi = np.percentile(values, [tail, 100 - tail])
    return [float(lo), float(hi)]


def paired_interval(a: np.ndarray, b: np.ndarray, level: float = LEVEL) -> list[float] | None:
    """The interval of a - b over the same resamples (a resample where either has no value is left out)."""
    return percentile_interval(np.asarray(a, dtype=float) - np.asarray(b, dtype=float), level)


def resolved(interval: Sequence[float] | None, tolerance: float = 1e-12) -> int:
    """+1 where the interval of a difference lies above 0, -1 where below, 0 where it holds 0 (or is None)."""
    if interval is None:
        return 0
    lo, hi = interval
    return 1 if lo > tolerance else -1 if hi < -tolerance else 0
