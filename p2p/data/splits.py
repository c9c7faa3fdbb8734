"""Random and out-of-distribution (OOD) user splits from profile embeddings (paper App. H).

Both splits hold out whole *users*, so a test user's history never reaches training. Both start from one k-means
clustering of the L2-normalised embeddings, with k chosen by best silhouette over a size-dependent range. The OOD
split is drawn first and the random split from what it leaves, so the two test sets and the excluded users are
pairwise disjoint and one training set (`train`, everyone else) serves both:

- OOD: the test set is as unlike training as possible. Clusters are ranked by isolation
  (mean distance to the other centroids / (1 + size), so small far-away clusters come first); whole clusters of at
  least `min_cluster_size` users are taken while they fit, and the remainder is filled with the users farthest
  from their centroid in the next-ranked clusters of at least `min_cluster_size` users. Smaller clusters are
  used only when those cannot fill it, or when biting into a larger cluster would exclude so many users that the
  random test could not be drawn; the report names them and why. A cluster that gives any user to the OOD test
  gives none to training: its other users are `excluded`.
- random: the test set mirrors the population that trains, drawn from the users outside the OOD test and its
  excluded users. Each of their clusters gets a quota proportional to the users it can spare, all but one who
  stays to train (largest-remainder rounding, so the total is exact), and within a cluster the quota is spread
  over history-length bins (quantiles over the whole population) in proportion to their sizes, so test users look
  like train users in both topic and history length, and every random-test user's cluster is also in training.

Too few users: the procedure needs at least `max(K_MIN + 1, 2 * min_cluster_size)` users (10 by default): k-means
with the smallest k of the search (5) needs k + 1 points for a silhouette, and a population smaller than two
minimum-size clusters cannot lose a whole cluster to the OOD test and still be clustered meaningfully. Fewer users
raise ValueError naming the need; there is no silent fallback, because a split that is not what the report says
would make every downstream number misleading.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from sklearn.cluster import KMeans
from sklearn.metrics import silhouette_score

#: The smallest k of every search range (paper: max(5, ...)).
K_MIN = 5

#: The report's `ood_small_clusters_why`: why the OOD test took users from clusters below `min_cluster_size`.
SMALL_CLUSTERS_USED_UP = "the clusters of at least min_cluster_size users could not fill the OOD test"
SMALL_CLUSTERS_FOR_RANDOM = ("filling the OOD test from a larger cluster would have excluded users the random test "
                             "needed, so it took the best-ranked clusters whatever their size")


@dataclass(frozen=True)
class Clusters:
    """One k-means fit on normalised embeddings: a label per user and the k centroids."""

    labels: np.ndarray  # (n_users,) int
    centroids: np.ndarray  # (k, dim)

    @property
    def sizes(self) -> np.ndarray:
        return np.bincount(self.labels, minlength=len(self.centroids))


@dataclass
class Splits:
    """The two evaluations of one population, as user-id lists (each sorted as in the input).

    `random_test`, `ood_test` and `excluded` (the rest of the clusters that gave users to the OOD test) are pairwise
    disjoint. `train` = everyone else: one training set that both test sets can evaluate, the layout of the paper's
    Table 8. `train_random` = everyone but `random_test` and `train_ood` = everyone but `ood_test` and `excluded`
    are each split's training set had it been drawn alone (the report's similarities compare against them).
    """

    random_test: list[str]
    train_random: list[str]
    ood_test: list[str]
    excluded: list[str]
    train_ood: list[str]
    train: list[str]
    cluster_labels: list[int]  # the clustering both splits used, aligned with the input user order
    report: dict[str, Any] = field(default_factory=dict)


def normalize_rows(X: np.ndarray) -> np.ndarray:
    """L2-normalise each row; an all-zero row stays zero (it has no direction)."""
    X = np.asarray(X, dtype=np.float64)
    norms = np.linalg.norm(X, axis=1, keepdims=True)
    return X / np.where(norms == 0, 1.0, norms)


def n_test_users(n_users: int, test_users: int = 200, small_population: int = 1000, test_fraction: float = 0.2) -> int:
    """Users per test set: `min(test_users, n_users)`, or `test_fraction` of them (rounded half up, at least 1)
    when the population is smaller than `small_population`."""
    if n_users < 1:
        raise ValueError(f"need at least 1 user, got {n_users}")
    if n_users < small_population:
        return max(1, math.floor(test_fraction * n_users + 0.5))
    return min(test_users, n_users)


def k_search_range(n_users: int) -> list[int]:
    """The k values tried by the silhouette search for `n_users` users.

    The paper's range is [max(5, min(10, n//100)), min(50, max(20, n//50))], clipped to k <= n - 1 (a silhouette
    needs 2 <= k <= n - 1). About ten evenly spaced values, step ceil(span / 9), with the maximum always included.
    Empty when n_users <= K_MIN.
    """
    low = max(K_MIN, min(10, n_users // 100))
    high = min(50, max(20, n_users // 50), n_users - 1)
    if high < low:
        return []
    step = max(1, math.ceil((high - low) / 9))
    ks = list(range(low, high + 1, step))
    if ks[-1] != high:
        ks.append(high)
    return ks


def fit_clusters(X_normalized: np.ndarray, k: int, seed: int, n_init: int) -> Clusters:
    """k-means on already-normalised embeddings; deterministic for a seed."""
    model = KMeans(n_clusters=k, n_init=n_init, random_state=seed).fit(X_normalized)
    return Clusters(labels=model.labels_.astype(np.int64), centroids=model.cluster_centers_)


def choose_k(X_normalized: np.ndarray, ks: Sequence[int], seed: int, n_init: int = 5) -> tuple[int, dict[int, float]]:
    """The k with the best silhouette (ties: the smaller k), and the silhouette of every k tried.

    A k whose fit has fewer than 2 distinct labels (duplicate embeddings) has no silhouette and is left out.
    """
    curve: dict[int, float] = {}
    for k in ks:
        labels = fit_clusters(X_normalized, k, seed, n_init).labels
        if 2 <= len(np.unique(labels)) <= len(labels) - 1:
            curve[k] = float(silhouette_score(X_normalized, labels))
    if not curve:
        raise ValueError(f"no k in {list(ks)} gives 2 or more distinct clusters: the embeddings are (nearly) identical")
    best = max(curve, key=lambda k: (curve[k], -k))
    return best, curve


def largest_remainder(counts: Sequence[int], total: int, rng: np.random.Generator | None = None) -> np.ndarray:
    """Split `total` into integer shares proportional to `counts` that sum exactly to `total`.

    Each share gets the floor of its exact quota total * count / sum(counts); the leftover units go to the
    largest fractional parts (integer arithmetic, so no float rounding). Ties go in a random order drawn from
    `rng` (by index without one), so equal strata are not always favoured in input order. Every share is the floor
    or ceil of its exact quota, hence never above its count when total <= sum(counts).
    """
    counts = np.asarray(counts, dtype=np.int64)
    population = int(counts.sum())
    if total < 0 or population <= 0:
        raise ValueError(f"cannot split {total} over counts summing to {population}")
    shares, remainder = np.divmod(total * counts, population)
    tie_key = rng.permutation(len(counts)) if rng is not None else np.arange(len(counts))
    order = np.lexsort((tie_key, -remainder))
    shares[order[: total - int(shares.sum())]] += 1
    return shares


def history_bins(history_lengths: Sequence[int], bins: int) -> np.ndarray:
    """Bin index per user from `bins` quantiles of the population's history lengths (ties share a bin)."""
    lengths = np.asarray(history_lengths, dtype=np.float64)
    edges = np.quantile(lengths, np.linspace(0, 1, bins + 1)[1:-1])
    return np.searchsorted(edges, lengths, side="right")


def spare_users(labels: np.ndarray) -> int:
    """How many users a random test may take from these clusters: all but one per cluster (see `random_split`)."""
    return len(labels) - len(np.unique(labels))


def random_split(labels: np.ndarray, strata: np.ndarray, *, n_test: int, seed: int) -> np.ndarray:
    """Indices of a random test set that mirrors the population's clusters, and within each cluster its strata,
    while every cluster keeps at least one user out of it.

    `labels` are cluster labels, `strata` history-length bins (all zeros for no stratification). Cluster quotas are
    proportional to the users each cluster can spare, its size minus one: the one left is a training user of that
    cluster, so no test user comes from a cluster that never trains (largest remainder keeps each quota within
    what the cluster spares). Each cluster's quota is spread over its strata in proportion to their sizes; users
    are drawn uniformly inside each (cluster, stratum) cell. Deterministic per seed. Returns sorted indices.
    """
    rng = np.random.default_rng(seed)
    clusters = np.unique(labels)
    if n_test > spare_users(labels):
        raise ValueError(f"a random test of {n_test} users cannot be drawn from {len(labels)} users in "
                         f"{len(clusters)} clusters: each cluster keeps one user to train, which leaves "
                         f"{spare_users(labels)}")
    quotas = largest_remainder([int(np.sum(labels == c)) - 1 for c in clusters], n_test, rng)
    chosen: list[np.ndarray] = []
    for cluster, quota in zip(clusters, quotas):
        members = np.flatnonzero(labels == cluster)
        cell_ids = np.unique(strata[members])
        cell_quotas = largest_remainder([np.sum(strata[members] == s) for s in cell_ids], int(quota), rng)
        for stratum, cell_quota in zip(cell_ids, cell_quotas):
            cell = members[strata[members] == stratum]
            chosen.append(rng.choice(cell, size=int(cell_quota), replace=False))
    return np.sort(np.concatenate(chosen)) if chosen else np.empty(0, dtype=np.int64)


def isolation_scores(centroids: np.ndarray, sizes: Sequence[int]) -> np.ndarray:
    """Per cluster: mean Euclidean distance from its centroid to the other centroids, divided by (1 + size).

    High for small clusters far from the rest: the outliers the OOD test is made of.
    """
    centroids = np.asarray(centroids, dtype=np.float64)
    k = len(centroids)
    if k < 2:
        raise ValueError("isolation needs at least 2 clusters")
    distances = np.linalg.norm(centroids[:, None, :] - centroids[None, :, :], axis=-1)
    mean_to_others = distances.sum(axis=1) / (k - 1)
    return mean_to_others / (1.0 + np.asarray(sizes, dtype=np.float64))


def ood_split(X_normalized: np.ndarray, clusters: Clusters, *, n_test: int, min_cluster_size: int = 5,
              small_last: bool = True) -> tuple[np.ndarray, np.ndarray, list[dict[str, Any]]]:
    """Indices of the OOD test set, of the users excluded from training, and which clusters were used how.

    Clusters are ranked by descending isolation score (ties by index). First, clusters of at least
    `min_cluster_size` users go to the test set whole, in rank order, while they fit in `n_test`; the walk stops
    at the first that does not fit. Then the rest is filled from the remaining clusters, in rank order, each giving
    its users farthest from its centroid (ties by index) until `n_test` is reached: with `small_last`, first those
    of at least `min_cluster_size` users and smaller ones only when these run out; without it, in rank order alone.
    Tiny clusters rank high only because the score divides by 1 + size; a few stray users are not a region of the
    population to hold out, so by default they come last (`make_splits` reports when the fill needed them). A
    cluster's users not taken are excluded from training.
    """
    sizes = clusters.sizes
    scores = isolation_scores(clusters.centroids, sizes)
    ranked = [int(c) for c in np.lexsort((np.arange(len(sizes)), -scores)) if sizes[c] > 0]
    whole: list[int] = []
    remaining = n_test
    for cluster in ranked:
        if sizes[cluster] < min_cluster_size:
            continue
        if sizes[cluster] > remaining:
            break
        whole.append(cluster)
        remaining -= int(sizes[cluster])
    fill = [c for c in ranked if c not in whole]
    if small_last:
        fill.sort(key=lambda c: bool(sizes[c] < min_cluster_size))  # stable: rank order within each group

    distance = np.linalg.norm(X_normalized - clusters.centroids[clusters.labels], axis=1)
    test: list[np.ndarray] = []
    excluded: list[np.ndarray] = []
    used: list[dict[str, Any]] = []
    remaining = n_test
    for cluster in whole + fill:
        if remaining == 0:
            break
        members = np.flatnonzero(clusters.labels == cluster)
        farthest_first = members[np.lexsort((members, -distance[members]))]
        take = min(remaining, len(members))
        test.append(farthest_first[:take])
        excluded.append(farthest_first[take:])
        used.append({"cluster": cluster, "size": len(members), "score": float(scores[cluster]),
                     "taken": take, "whole": take == len(members)})
        remaining -= take
    return np.sort(np.concatenate(test)), np.sort(np.concatenate(excluded)), used


def mean_cosine(X_normalized: np.ndarray, from_idx: np.ndarray, to_idx: np.ndarray) -> float | None:
    """Mean over users `u` in `from_idx` of the mean cosine similarity of `u` to the users in `to_idx`, leaving
    `u` itself out when it is in both (so train->train excludes self-similarity). Zero-vector users count 0;
    None (undefined, and JSON-safe) when a set is empty or a user has no one to compare with.

    Computed from sums (cosine of unit vectors = dot product), so it is O(n * dim), not O(n^2).
    """
    if len(from_idx) == 0:
        return None
    x = X_normalized[from_idx]
    in_both = np.isin(from_idx, to_idx)
    totals = x @ X_normalized[to_idx].sum(axis=0) - in_both * np.einsum("ij,ij->i", x, x)
    others = len(to_idx) - in_both
    if np.any(others == 0):
        return None
    return float(np.mean(totals / others))


def minimum_users(min_cluster_size: int) -> int:
    """The smallest population the split procedure accepts (see the module docstring)."""
    return max(K_MIN + 1, 2 * min_cluster_size)


def make_splits(embeddings: np.ndarray, user_ids: Sequence[str], history_lengths: Sequence[int] | None = None, *,
                seed: int, test_users: int = 200, small_population: int = 1000, test_fraction: float = 0.2,
                min_cluster_size: int = 5, n_init_search: int = 5, n_init_final: int = 10,
                bins: int = 10) -> Splits:
    """Random and OOD user splits of one population, with a report.

    `embeddings` is users x dim (any float embedding, normalised here); `history_lengths` (history items per user)
    stratifies the random test set, None to skip that. One clustering (k by best silhouette over
    `k_search_range`, refitted with `n_init_final`) serves both splits. The OOD split comes first and the random
    test is drawn from the users it leaves to training, so no user is in two of random_test, ood_test and excluded.
    If the OOD fill, keeping to clusters of at least `min_cluster_size`, excludes so many users that the random
    test cannot be drawn from the rest, it is redone in rank order alone (`ood_split(small_last=False)`).
    Deterministic per seed.

    Report: sizes; k and the silhouette curve; cluster sizes, the random test's count per cluster, the clusters the
    OOD test used, `ood_small_clusters` (those of them smaller than `min_cluster_size`, usually none) and
    `ood_small_clusters_why` (a sentence when there are some); per split, `test_to_train` = mean over test users of
    their mean cosine to the split's train users, and `train_to_train` = the same over train users, self excluded
    (OOD should be lower than train->train, random about equal); history-length summary per set; the seed.
    """
    X = np.asarray(embeddings, dtype=np.float64)
    ids = [str(u) for u in user_ids]
    n = len(ids)
    if X.ndim != 2 or X.shape[0] != n:
        raise ValueError(f"embeddings must be users x dim with {n} rows, got shape {X.shape}")
    if len(set(ids)) != n:
        raise ValueError("user ids must be unique")
    if not np.all(np.isfinite(X)):
        raise ValueError("embeddings contain NaN or infinite values")
    if history_lengths is not None and len(history_lengths) != n:
        raise ValueError(f"history_lengths has {len(history_lengths)} entries for {n} users")
    needed = minimum_users(min_cluster_size)
    if n < needed:
        raise ValueError(f"{n} users are too few to split: the random and OOD splits need at least {needed} "
                         f"(k-means with k >= {K_MIN} and room for a whole cluster of {min_cluster_size} users)")
    n_test = n_test_users(n, test_users, small_population, test_fraction)
    if n_test >= n:
        raise ValueError(f"a test set of {n_test} users leaves no training user out of {n}")

    X = normalize_rows(X)
    k, curve = choose_k(X, k_search_range(n), seed, n_init_search)
    clusters = fit_clusters(X, k, seed, n_init_final)
    strata = history_bins(history_lengths, bins) if history_lengths is not None else np.zeros(n, dtype=np.int64)

    everyone = np.arange(n)
    ood_test, excluded, ood_clusters = ood_split(X, clusters, n_test=n_test, min_cluster_size=min_cluster_size)
    train_ood = np.setdiff1d(everyone, np.concatenate([ood_test, excluded]))
    small_why = SMALL_CLUSTERS_USED_UP
    if spare_users(clusters.labels[train_ood]) < n_test:
        ood_test, excluded, ood_clusters = ood_split(X, clusters, n_test=n_test, min_cluster_size=min_cluster_size,
                                                     small_last=False)
        train_ood = np.setdiff1d(everyone, np.concatenate([ood_test, excluded]))
        small_why = SMALL_CLUSTERS_FOR_RANDOM
    if len(train_ood) == 0:
        raise ValueError(f"the OOD split leaves no training user: the clusters it drew {n_test} test users from hold "
                         f"all {n} users (cluster sizes {clusters.sizes.tolist()}); the embeddings show no cluster "
                         f"structure to hold out, so use a better profile embedding or more users")
    random_test = train_ood[random_split(clusters.labels[train_ood], strata[train_ood], n_test=n_test, seed=seed)]
    train_random = np.setdiff1d(everyone, random_test)
    train = np.setdiff1d(train_ood, random_test)

    small_clusters = [used["cluster"] for used in ood_clusters if used["size"] < min_cluster_size]
    sets = {"random_test": random_test, "train_random": train_random, "ood_test": ood_test,
            "excluded": excluded, "train_ood": train_ood, "train": train}
    report: dict[str, Any] = {
        "seed": seed,
        "n_users": n,
        "n_test": n_test,
        "sizes": {name: len(idx) for name, idx in sets.items()},
        "k": k,
        "silhouette": [{"k": kk, "silhouette": s} for kk, s in curve.items()],
        "cluster_sizes": clusters.sizes.tolist(),
        "random_test_per_cluster": np.bincount(clusters.labels[random_test], minlength=k).tolist(),
        "ood_clusters": ood_clusters,
        "min_cluster_size": min_cluster_size,
        "ood_small_clusters": small_clusters,
        "ood_small_clusters_why": small_why if small_clusters else None,
        "similarity": {
            "random": {"test_to_train": mean_cosine(X, random_test, train_random),
                       "train_to_train": mean_cosine(X, train_random, train_random)},
            "ood": {"test_to_train": mean_cosine(X, ood_test, train_ood),
                    "train_to_train": mean_cosine(X, train_ood, train_ood)},
        },
    }
    if history_lengths is not None:
        lengths = np.asarray(history_lengths, dtype=np.float64)
        report["history_length"] = {name: _summary(lengths[idx]) for name, idx in sets.items()}
    return Splits(**{name: [ids[i] for i in idx] for name, idx in sets.items()},
                  cluster_labels=clusters.labels.tolist(), report=report)


def _summary(values: np.ndarray) -> dict[str, float] | None:
    if len(values) == 0:
        return None
    p25, median, p75 = np.quantile(values, [0.25, 0.5, 0.75])
    return {"mean": float(values.mean()), "min": float(values.min()), "p25": float(p25), "median": float(median),
            "p75": float(p75), "max": float(values.max())}
