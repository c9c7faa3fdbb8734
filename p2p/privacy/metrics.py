"""The privacy audit's figures as small pure functions: ROC AUC, top-k linkage accuracy, their user-bootstrap
intervals, chance levels, and the differential-privacy epsilon of the Gaussian noise defence.

Intervals resample the audited *users* (p2p.tasks.bootstrap.resample_weights: a user drawn twice counts twice, with
all of that user's rows), so a membership AUC over many items of few users is not made to look surer than its users
allow. Every function takes plain arrays and is checked against hand-computed values in tests/test_privacy.py.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from p2p.tasks.bootstrap import percentile_interval, resample_weights


def weighted_auc(scores: np.ndarray, members: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """ROC AUC of `scores` (higher: more likely a member) for the labels `members`, under each row of `weights`
    ((B, n) or (n,)): the weighted probability that a member outscores a non-member, a tie counting one half
    (the Mann-Whitney statistic). NaN where a resample holds no member or no non-member."""
    scores, members = np.asarray(scores, dtype=float), np.asarray(members, dtype=bool)
    weights = np.atleast_2d(np.asarray(weights, dtype=float))
    order = np.argsort(scores, kind="stable")
    scores, members, weights = scores[order], members[order], weights[:, order]
    _, group = np.unique(scores, return_inverse=True)  # rows with equal scores share a group
    groups = group.max() + 1 if len(group) else 0
    pos = np.where(members, weights, 0.0)
    neg = np.where(members, 0.0, weights)
    pos_by = np.zeros((len(weights), groups))
    neg_by = np.zeros((len(weights), groups))
    for b in range(len(weights)):  # B is ~1000: cheap next to the model work the audit does
        pos_by[b] = np.bincount(group, pos[b], minlength=groups)
        neg_by[b] = np.bincount(group, neg[b], minlength=groups)
    below = np.cumsum(neg_by, axis=1) - neg_by  # non-member weight strictly below each group
    wins = (pos_by * (below + 0.5 * neg_by)).sum(axis=1)
    total = pos_by.sum(axis=1) * neg_by.sum(axis=1)
    return np.where(total > 0, wins / np.where(total > 0, total, 1.0), np.nan)


def auc(scores: Sequence[float], members: Sequence[bool]) -> float:
    """ROC AUC (0.5: the attack cannot tell members from non-members; 1: it always can)."""
    return float(weighted_auc(np.asarray(scores), np.asarray(members), np.ones(len(scores)))[0])


def ranks_of_truth(similarity: np.ndarray, truth: Sequence[int]) -> np.ndarray:
    """Rank (1 = best) of each row's true candidate among the row's similarities; a tie ranks the truth last,
    so an attack that scores every candidate alike gets no credit."""
    similarity = np.asarray(similarity, dtype=float)
    true = similarity[np.arange(len(similarity)), np.asarray(truth)]
    return (similarity >= true[:, None]).sum(axis=1)


def top_k(ranks: np.ndarray, k: int) -> np.ndarray:
    """1.0 where the truth ranks within the top k, else 0.0 (per row)."""
    return (np.asarray(ranks) <= k).astype(float)


def with_interval(values: Sequence[float], owners: Sequence[str], resamples: int, seed: int,
                  statistic: str = "mean") -> dict[str, object]:
    """A per-row figure averaged over rows (`mean`), with the 95% user-bootstrap interval and the sample sizes."""
    values = np.asarray(values, dtype=float)
    weights = resample_weights(list(owners), resamples, seed)
    resampled = (weights * values).sum(axis=1) / weights.sum(axis=1)
    return {"value": float(values.mean()), "ci": percentile_interval(resampled), "n": len(values),
            "users": len(set(owners))}


def auc_with_interval(scores: Sequence[float], members: Sequence[bool], owners: Sequence[str], resamples: int,
                      seed: int) -> dict[str, object]:
    """ROC AUC with its 95% user-bootstrap interval (rows owned by `owners`) and the sample sizes."""
    weights = resample_weights(list(owners), resamples, seed)
    members = np.asarray(members, dtype=bool)
    resampled = weighted_auc(np.asarray(scores), members, weights)
    return {"value": auc(scores, members), "ci": percentile_interval(resampled), "n": len(members),
            "members": int(members.sum()), "users": len(set(owners))}


def gaussian_delta(epsilon: float, sensitivity: float, sigma: float) -> float:
    """delta of the Gaussian mechanism with L2 `sensitivity` and noise `sigma` at `epsilon`: the exact (analytic)
    curve of Balle and Wang (ICML 2018, Theorem 8), Phi(D/2s - e s/D) - exp(e) Phi(-D/2s - e s/D)."""
    if sigma <= 0:
        return 1.0
    a, b = sensitivity / (2 * sigma), epsilon * sigma / sensitivity

    def phi(x: float) -> float:
        return 0.5 * math.erfc(-x / math.sqrt(2))

    tail = phi(-a - b)
    return phi(a - b) - (math.exp(epsilon + math.log(tail)) if tail > 0 else 0.0)


def gaussian_epsilon(sensitivity: float, sigma: float, delta: float) -> float:
    """The smallest epsilon at which Gaussian noise `sigma` on a query of L2 `sensitivity` is (epsilon, delta)-DP
    (the analytic Gaussian mechanism); inf without noise. Bisection on `gaussian_delta`, which falls in epsilon."""
    if sigma <= 0:
        return math.inf
    if gaussian_delta(0.0, sensitivity, sigma) <= delta:
        return 0.0
    lo, hi = 0.0, 1.0
    while gaussian_delta(hi, sensitivity, sigma) > delta:
        lo, hi = hi, 2 * hi
        if hi > 1e6:
            return math.inf
    for _ in range(100):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if gaussian_delta(mid, sensitivity, sigma) > delta else (lo, mid)
    return hi
