"""Random and OOD user splits: properties on synthetic clustered populations, hand-checked helpers, real data."""

from __future__ import annotations

import json
import math
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from p2p.data.splits import (
    SMALL_CLUSTERS_FOR_RANDOM,
    SMALL_CLUSTERS_USED_UP,
    Clusters,
    choose_k,
    isolation_scores,
    k_search_range,
    largest_remainder,
    make_splits,
    mean_cosine,
    minimum_users,
    n_test_users,
    ood_split,
    random_split,
)
from p2p.profiles.text_embedding import tfidf_embeddings
from p2p.report.stage_reports import split_summary

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
FAST = {"n_init_search": 2, "n_init_final": 3}  # k-means restarts: enough for well-separated blobs, and quick
PROPERTY = settings(max_examples=8, deadline=None)


def clustered_population(seed: int, main_blobs: int, blob_size: int, far_blobs: int, far_size: int, dim: int = 16):
    """Users as blobs: `main_blobs` near one direction (the bulk of the population) and `far_blobs` small blobs,
    each along its own orthogonal direction (the outliers an OOD split should find)."""
    rng = np.random.default_rng(seed)
    axis = np.eye(dim)
    parts, truth = [], []
    for blob in range(main_blobs):
        center = 10 * axis[0] + rng.normal(0, 2, dim) * (1 - axis[0])
        parts.append(center + rng.normal(0, 0.7, (blob_size, dim)))
        truth += [blob] * blob_size
    for far in range(far_blobs):
        parts.append(10 * axis[dim - 1 - far] + rng.normal(0, 0.5, (far_size, dim)))
        truth += [100 + far] * far_size
    X = np.vstack(parts)
    ids = [f"user-{i:04d}" for i in range(len(X))]
    history = rng.integers(1, 40, len(X))
    return X, ids, history, np.array(truth)


populations = st.builds(
    clustered_population,
    seed=st.integers(0, 10_000),
    main_blobs=st.integers(2, 5),
    blob_size=st.integers(10, 40),
    far_blobs=st.integers(1, 3),
    far_size=st.integers(5, 8),
)

# Populations with at least as many natural clusters as the smallest k tried (5) and a test set that can hold a far
# blob whole. Below that, k-means must cut big blobs into fragments, and the isolation score (which divides by
# 1 + size) can rank a small fragment of the bulk above a genuinely far blob: the OOD test is then not "far".
separated_populations = st.builds(
    clustered_population,
    seed=st.integers(0, 10_000),
    main_blobs=st.integers(4, 5),
    blob_size=st.integers(20, 40),
    far_blobs=st.integers(1, 3),
    far_size=st.integers(5, 8),
)


@PROPERTY
@given(population=populations, seed=st.integers(0, 1000))
def test_splits_are_user_disjoint_and_exactly_sized(population, seed):
    X, ids, history, _ = population
    splits = make_splits(X, ids, history, seed=seed, **FAST)
    n_test = n_test_users(len(ids))
    everyone = set(ids)
    random_test, train_random = set(splits.random_test), set(splits.train_random)
    ood_test, excluded, train_ood = set(splits.ood_test), set(splits.excluded), set(splits.train_ood)

    assert len(splits.random_test) == len(random_test) == n_test
    assert len(splits.ood_test) == len(ood_test) == n_test
    assert random_test.isdisjoint(train_random) and random_test | train_random == everyone
    assert ood_test.isdisjoint(train_ood) and excluded.isdisjoint(train_ood) and ood_test.isdisjoint(excluded)
    assert ood_test | excluded | train_ood == everyone
    assert set(splits.train) == everyone - random_test - ood_test - excluded
    assert splits.report["sizes"] == {"random_test": n_test, "train_random": len(ids) - n_test, "ood_test": n_test,
                                      "excluded": len(excluded), "train_ood": len(train_ood),
                                      "train": len(splits.train)}


@PROPERTY
@given(population=populations, seed=st.integers(0, 1000))
def test_splits_are_deterministic_per_seed(population, seed):
    X, ids, history, _ = population
    assert make_splits(X, ids, history, seed=seed, **FAST) == make_splits(X, ids, history, seed=seed, **FAST)


def test_different_seeds_draw_different_random_tests():
    X, ids, history, _ = clustered_population(0, main_blobs=3, blob_size=30, far_blobs=1, far_size=6)
    drawn = {tuple(make_splits(X, ids, history, seed=seed, **FAST).random_test) for seed in range(4)}
    assert len(drawn) > 1


@PROPERTY
@given(population=populations, seed=st.integers(0, 1000))
def test_ood_clusters_give_no_user_to_train(population, seed):
    X, ids, history, _ = population
    splits = make_splits(X, ids, history, seed=seed, **FAST)
    cluster_of = dict(zip(ids, splits.cluster_labels))
    ood_clusters = {cluster_of[u] for u in splits.ood_test}
    assert ood_clusters.isdisjoint(cluster_of[u] for u in splits.train_ood)
    assert {cluster_of[u] for u in splits.excluded} <= ood_clusters
    assert {entry["cluster"] for entry in splits.report["ood_clusters"]} == ood_clusters


@PROPERTY
@given(population=separated_populations, seed=st.integers(0, 1000))
def test_ood_test_is_less_similar_to_train_than_train_is_to_itself(population, seed):
    X, ids, history, _ = population
    similarity = make_splits(X, ids, history, seed=seed, **FAST).report["similarity"]
    assert similarity["ood"]["test_to_train"] < similarity["ood"]["train_to_train"]
    assert similarity["ood"]["test_to_train"] < similarity["random"]["test_to_train"]


@PROPERTY
@given(seed=st.integers(0, 10_000), n_users=st.integers(10, 60), dim=st.integers(2, 16))
def test_test_sets_and_excluded_are_disjoint_and_the_random_test_comes_from_clusters_that_train(seed, n_users, dim):
    rng = np.random.default_rng(seed)
    X, ids = rng.normal(size=(n_users, dim)), [f"user-{i:04d}" for i in range(n_users)]
    splits = make_splits(X, ids, rng.integers(1, 40, n_users), seed=seed, **FAST)
    random_test, ood_test, excluded, train = (set(splits.random_test), set(splits.ood_test), set(splits.excluded),
                                              set(splits.train))
    assert random_test.isdisjoint(ood_test) and random_test.isdisjoint(excluded) and ood_test.isdisjoint(excluded)
    assert train.isdisjoint(random_test | ood_test | excluded)
    assert train | random_test | ood_test | excluded == set(ids)
    cluster_of = dict(zip(ids, splits.cluster_labels))
    assert {cluster_of[u] for u in random_test} <= {cluster_of[u] for u in train}
    # clusters below min_cluster_size (5) only when the report says why, and "used up" means used up
    report, sizes = splits.report, np.bincount(splits.cluster_labels)
    assert report["ood_small_clusters"] == [u["cluster"] for u in report["ood_clusters"] if u["size"] < 5]
    assert (report["ood_small_clusters_why"] is None) == (not report["ood_small_clusters"])
    assert report["ood_small_clusters_why"] in (None, SMALL_CLUSTERS_USED_UP, SMALL_CLUSTERS_FOR_RANDOM)
    if report["ood_small_clusters_why"] == SMALL_CLUSTERS_USED_UP:
        large = {c for c in range(len(sizes)) if sizes[c] >= 5}
        assert large <= set(cluster_of[u] for u in ood_test) and not large & set(cluster_of[u] for u in excluded)


def test_random_test_avoids_the_ood_test_and_its_excluded_users():
    """Regression (issue 17): the random test was drawn from all users before the OOD split, so here 6 of its 14
    users were also OOD-test or excluded users, from clusters that never train."""
    X, ids, history, _ = clustered_population(1, main_blobs=3, blob_size=20, far_blobs=2, far_size=6)
    splits = make_splits(X, ids, history, seed=0, **FAST)
    held_out = set(splits.ood_test) | set(splits.excluded)
    assert len(splits.random_test) == len(splits.ood_test) == 14 and len(held_out) == 32
    assert not set(splits.random_test) & held_out
    cluster_of = dict(zip(ids, splits.cluster_labels))
    assert {cluster_of[u] for u in splits.random_test} <= {cluster_of[u] for u in splits.train}


@PROPERTY
@given(population=populations, seed=st.integers(0, 1000))
def test_random_test_mirrors_the_clusters_that_train(population, seed):
    X, ids, history, _ = population
    splits = make_splits(X, ids, history, seed=seed, **FAST)
    cluster_of = dict(zip(ids, splits.cluster_labels))
    candidates = np.array([cluster_of[u] for u in splits.train_ood])  # everyone outside the OOD test and excluded
    in_test = np.isin(splits.train_ood, splits.random_test)
    n_test = len(splits.random_test)
    clusters = np.unique(candidates)
    spare = len(candidates) - len(clusters)  # each cluster keeps one user to train
    for cluster in clusters:
        exact = n_test * (np.sum(candidates == cluster) - 1) / spare
        assert math.floor(exact) <= np.sum(in_test & (candidates == cluster)) <= math.ceil(exact)


@settings(max_examples=30, deadline=None)
@given(labels=st.lists(st.integers(0, 4), min_size=2, max_size=80), data=st.data())
def test_random_split_mirrors_history_strata_within_each_cluster(labels, data):
    labels = np.array(labels)
    clusters = np.unique(labels)
    spare = len(labels) - len(clusters)  # each cluster keeps one user out of the test
    assume(spare >= 1)
    strata = np.array(data.draw(st.lists(st.integers(0, 3), min_size=len(labels), max_size=len(labels))))
    n_test = data.draw(st.integers(1, spare))
    chosen = random_split(labels, strata, n_test=n_test, seed=data.draw(st.integers(0, 100)))
    assert len(chosen) == len(set(chosen.tolist())) == n_test
    for cluster in clusters:
        members = labels == cluster
        picked = np.isin(np.arange(len(labels)), chosen) & members
        quota = picked.sum()
        exact_quota = n_test * (members.sum() - 1) / spare
        assert math.floor(exact_quota) <= quota < members.sum()
        assert quota <= math.ceil(exact_quota)
        for stratum in np.unique(strata[members]):
            exact = quota * np.sum(members & (strata == stratum)) / members.sum()
            assert math.floor(exact) <= np.sum(picked & (strata == stratum)) <= math.ceil(exact)


def test_random_split_that_would_empty_a_cluster_is_a_clear_error():
    with pytest.raises(ValueError, match="random test of 2 users cannot be drawn from 4 users in 3 clusters: each "
                                         "cluster keeps one user to train, which leaves 1"):
        random_split(np.array([0, 0, 1, 2]), np.zeros(4, dtype=int), n_test=2, seed=0)


def test_too_few_users_is_a_clear_error():
    X, ids, history, _ = clustered_population(0, main_blobs=1, blob_size=9, far_blobs=0, far_size=0)
    assert minimum_users(5) == 10
    with pytest.raises(ValueError, match="9 users are too few to split: .* at least 10"):
        make_splits(X, ids, history, seed=0)
    X, ids, history, _ = clustered_population(0, main_blobs=1, blob_size=10, far_blobs=0, far_size=0)
    splits = make_splits(X, ids, history, seed=0)
    assert len(splits.random_test) == len(splits.ood_test) == 2


# duplicate points: k-means finds fewer distinct clusters than k and warns
@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
def test_identical_embeddings_are_a_clear_error():
    with pytest.raises(ValueError, match="nearly\\) identical"):
        make_splits(np.ones((20, 4)), [str(i) for i in range(20)], seed=0)


def test_bad_input_shapes_and_ids_are_errors():
    X, ids, history, _ = clustered_population(0, main_blobs=2, blob_size=10, far_blobs=0, far_size=0)
    with pytest.raises(ValueError, match="20 rows"):
        make_splits(X[:-1], ids, seed=0)
    with pytest.raises(ValueError, match="unique"):
        make_splits(X, ids[:-1] + ids[:1], seed=0)
    with pytest.raises(ValueError, match="history_lengths has 3 entries"):
        make_splits(X, ids, history[:3], seed=0)
    X[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        make_splits(X, ids, seed=0)


def test_n_test_users_follows_the_paper_rule():
    assert n_test_users(40) == 8  # 20% of a small population
    assert n_test_users(150) == 30
    assert n_test_users(999) == 200  # 199.8 rounds to 200
    assert n_test_users(1000) == 200 and n_test_users(50_000) == 200
    assert n_test_users(3) == 1  # 0.6 -> 1
    assert n_test_users(2) == 1  # 0.4 rounds to 0, but a test set has at least one user
    assert n_test_users(12, test_fraction=0.125) == 2  # 1.5 rounds half up
    assert n_test_users(5000, test_users=100) == 100


def test_k_search_range_by_hand():
    assert k_search_range(5) == []  # k must be <= n - 1 and >= 5
    assert k_search_range(6) == [5]
    assert k_search_range(10) == [5, 6, 7, 8, 9]  # clipped to n - 1, step ceil(4 / 9) = 1
    assert k_search_range(40) == [5, 7, 9, 11, 13, 15, 17, 19, 20]  # [5, 20], step ceil(15 / 9) = 2, max added
    assert k_search_range(1500) == [10, 13, 16, 19, 22, 25, 28, 30]  # [10, 30], step 3
    assert k_search_range(5000) == [10, 15, 20, 25, 30, 35, 40, 45, 50]  # [10, 50], step 5
    assert k_search_range(200_000) == [10, 15, 20, 25, 30, 35, 40, 45, 50]


def test_isolation_score_by_hand():
    centroids = np.array([[0.0, 0.0], [3.0, 0.0], [0.0, 4.0]])  # pairwise distances 3, 4, 5
    scores = isolation_scores(centroids, [1, 2, 3])
    assert scores == pytest.approx([(3 + 4) / 2 / 2, (3 + 5) / 2 / 3, (4 + 5) / 2 / 4])


def test_largest_remainder_by_hand():
    assert largest_remainder([5, 3, 2], 4).tolist() == [2, 1, 1]  # exact 2, 1.2, 0.8: the 0.8 gets the spare unit
    assert largest_remainder([1, 1, 1], 2).tolist() == [1, 1, 0]  # ties by index without an rng
    assert sorted(largest_remainder([1, 1, 1], 2, np.random.default_rng(0)).tolist()) == [0, 1, 1]
    assert largest_remainder([7, 0, 3], 10).tolist() == [7, 0, 3]


def test_mean_cosine_by_hand():
    X = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    assert mean_cosine(X, np.array([0]), np.array([1, 2])) == pytest.approx(0.5)  # (0 + 1) / 2
    # self excluded: user 0 -> (0 + 1) / 2, user 1 -> (0 + 0) / 2, user 2 -> (1 + 0) / 2
    assert mean_cosine(X, np.arange(3), np.arange(3)) == pytest.approx(1 / 3)
    assert mean_cosine(X, np.array([], dtype=int), np.arange(3)) is None


def test_ood_split_takes_whole_isolated_clusters_then_farthest_users():
    far = [(10.0 + 0.1 * i, 0.0) for i in range(5)]  # cluster 0: 5 users, far away
    mid = [(0.0, 10.0 + i) for i in range(1, 7)]  # cluster 1: 6 users at distance 1..6 from its centroid (0, 10)
    bulk = [(0.1 * i, 0.0) for i in range(20)]  # cluster 2: 20 users near the origin
    X = np.array(far + mid + bulk)
    labels = np.array([0] * 5 + [1] * 6 + [2] * 20)
    centroids = np.array([[10.2, 0.0], [0.0, 10.0], [0.95, 0.0]])
    test, excluded, used = ood_split(X, Clusters(labels, centroids), n_test=7, min_cluster_size=5)
    # cluster 0 fits whole (5); cluster 1 does not fit in the remaining 2, so its two farthest users (10, 9) go
    assert test.tolist() == [0, 1, 2, 3, 4, 9, 10]
    assert excluded.tolist() == [5, 6, 7, 8]
    assert [(u["cluster"], u["taken"], u["whole"]) for u in used] == [(0, 5, True), (1, 2, False)]


def test_ood_fill_takes_a_large_cluster_before_tiny_outlier_clusters():
    X = np.array([[0.0, 0.0]] * 10 + [[5.0, 5.0]] * 2 + [[-5.0, 5.0]])
    labels = np.array([0] * 10 + [1] * 2 + [2])
    centroids = np.array([[0.0, 0.0], [5.0, 5.0], [-5.0, 5.0]])
    # the tiny clusters 1 and 2 rank first, but hold fewer than min_cluster_size users: the fill bites cluster 0
    test, excluded, used = ood_split(X, Clusters(labels, centroids), n_test=3, min_cluster_size=5)
    assert test.tolist() == [0, 1, 2] and excluded.tolist() == [3, 4, 5, 6, 7, 8, 9]
    assert [(u["cluster"], u["taken"]) for u in used] == [(0, 3)]
    # only when the larger clusters are used up does it go on to the tiny ones, best-ranked first
    test, excluded, used = ood_split(X, Clusters(labels, centroids), n_test=12, min_cluster_size=5)
    assert test.tolist() == [*range(11), 12] and excluded.tolist() == [11]
    assert [(u["cluster"], u["taken"]) for u in used] == [(0, 10), (2, 1), (1, 1)]


def test_ood_fill_takes_a_tiny_cluster_when_biting_a_large_one_would_starve_the_random_test():
    """A whole cluster of 7 leaves one OOD user to find; taking it from the cluster of 18 would exclude 17 users and
    leave 15 users in 9 clusters, only 6 to spare for a random test of 8, so the fill takes a singleton instead."""
    rng = np.random.default_rng(0)
    sizes = [18, 7, 4, 3, 2, 1, 1, 1, 1, 1, 1]
    X = np.vstack([10 * np.eye(16)[i] + rng.normal(0, 0.3, (size, 16)) for i, size in enumerate(sizes)])
    splits = make_splits(X, [f"user-{i:02d}" for i in range(len(X))], seed=0, **FAST)
    report = splits.report
    assert sorted(report["cluster_sizes"]) == sorted(sizes)
    assert [(u["size"], u["taken"]) for u in report["ood_clusters"]] == [(7, 7), (1, 1)]
    assert report["ood_small_clusters"] == [report["ood_clusters"][1]["cluster"]]
    assert report["ood_small_clusters_why"] == SMALL_CLUSTERS_FOR_RANDOM
    assert report["sizes"]["excluded"] == 0 and len(splits.random_test) == 8


def test_report_and_summary_name_an_ood_test_that_had_to_take_small_clusters():
    X, ids, history, _ = clustered_population(0, main_blobs=1, blob_size=10, far_blobs=0, far_size=0)
    small = make_splits(X, ids, history, seed=0, **FAST).report  # 10 users in 6 clusters of at most 4
    assert small["min_cluster_size"] == 5 and small["ood_small_clusters"] == [2, 1]
    assert small["ood_small_clusters_why"] == SMALL_CLUSTERS_USED_UP
    X, ids, history, _ = clustered_population(1, main_blobs=3, blob_size=20, far_blobs=2, far_size=6)
    large = make_splits(X, ids, history, seed=0, **FAST).report
    assert large["ood_small_clusters"] == [] and large["ood_small_clusters_why"] is None
    text = split_summary([{"dataset": "d", "task": "small", **small}, {"dataset": "d", "task": "large", **large}])
    assert f"- d/small: clusters 2 (size 1), 1 (size 1); min_cluster_size 5: {SMALL_CLUSTERS_USED_UP}" in text
    assert "- d/large: clusters" not in text
    assert "smaller than `split.min_cluster_size`" not in split_summary([{"dataset": "d", "task": "large", **large}])


def test_choose_k_finds_the_planted_number_of_blobs():
    X, _, _, truth = clustered_population(3, main_blobs=3, blob_size=25, far_blobs=2, far_size=8)
    X = X / np.linalg.norm(X, axis=1, keepdims=True)
    best, curve = choose_k(X, [2, 3, 4, 5, 6, 7, 8], seed=0, n_init=3)
    assert set(curve) == {2, 3, 4, 5, 6, 7, 8}
    assert best == len(np.unique(truth)) == 5


def test_report_is_json_ready_and_names_what_it_measured():
    X, ids, history, _ = clustered_population(1, main_blobs=3, blob_size=20, far_blobs=2, far_size=6)
    splits = make_splits(X, ids, history, seed=7, **FAST)
    report = json.loads(json.dumps(splits.report, allow_nan=False))
    assert report["seed"] == 7 and report["n_users"] == len(ids)
    assert [row["k"] for row in report["silhouette"]] == k_search_range(len(ids))
    assert report["k"] == max(report["silhouette"], key=lambda row: row["silhouette"])["k"]
    assert sum(report["cluster_sizes"]) == len(ids) and sum(report["random_test_per_cluster"]) == report["n_test"]
    assert set(report["history_length"]) == {"random_test", "train_random", "ood_test", "excluded", "train_ood",
                                             "train"}


def test_real_personal_reddit_personas_split_cleanly():
    path = SHARED_DATA / "personal_reddit" / "synthetic_dataset.jsonl"
    if not path.is_file():
        pytest.skip(f"real data not present at {path}")
    responses: dict[str, list[str]] = defaultdict(list)
    for line in path.read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        responses[json.dumps(row["personality"], sort_keys=True)].append(row["response"])
    ids = [f"persona-{i}" for i in range(len(responses))]
    X = tfidf_embeddings([" ".join(texts) for texts in responses.values()], dim=16, seed=0)
    splits = make_splits(X, ids, [len(texts) for texts in responses.values()], seed=0)
    assert len(ids) == 40 and len(splits.random_test) == len(splits.ood_test) == 8
    assert set(splits.ood_test).isdisjoint(splits.train_ood) and set(splits.random_test).isdisjoint(splits.train_random)
    assert set(splits.random_test).isdisjoint(set(splits.ood_test) | set(splits.excluded))
    assert splits == make_splits(X, ids, [len(texts) for texts in responses.values()], seed=0)


def test_the_default_preset_tests_at_least_96_queries_of_32_users_per_task_and_split(tmp_path):
    """Issue 17.5: the default run's test sets have power; issue 28.4: at least 700 users per task train, each with
    its queries (no padding needed). Here on TF-IDF embeddings (no model); the test sizes are exact for any
    embedding, the excluded users (the rest of the OOD test's clusters) depend on it: here 783 (LaMP-2M) and 796
    (LaMP-3) train; on MiniLM embeddings of the profile (a fixed stand-in summary) 760 and 802."""
    from p2p.config import load_config
    from p2p.data import synth
    from p2p.data.sources.lamp import load_lamp
    from p2p.stages.split import held_out, split_records

    cfg = load_config("params.yaml")
    ((_, tasks),) = [(s.dataset, s.tasks) for s in cfg.data.sources]
    sc = cfg.data.synth
    synth.generate(tmp_path, seed=cfg.seed, users=sc.users, history_items=sc.history_items,
                   queries_per_user=sc.queries_per_user, tasks=tuple(tasks))
    for task in tasks:
        records = load_lamp(task, tmp_path / task)
        assignment, report = split_records(records, cfg)
        for split in ("random_test", "ood_test"):
            assert len(assignment[split]) >= 32 and report["queries"][split] >= 96, (task, split, report["queries"])
        assert len(assignment["train"]) >= 700 and report["queries"]["train"] >= 2000, report["sizes"]
        held = held_out(tmp_path / task, assignment)
        assert held["random_test"]["unseen_scene"] == 0  # every random-test user's cluster trains (as its scene)
        for split, shares in held.items():
            assert shares["users"] == len(assignment[split])
            assert shares["unseen_preference_share"] == shares["unseen_preference"] / shares["users"]
    assert cfg.train.min_samples_per_task == 0  # 2,000+ query samples per task: nothing to pad


def test_split_report_says_what_each_test_split_holds_out_on_the_embedded_benchmark(tmp_path):
    from p2p.config import load_config
    from p2p.data import synth
    from p2p.data.sources.lamp import load_lamp
    from p2p.stages.split import held_out, split_metrics, split_records

    cfg = load_config("params.yaml", preset="smoke")
    task_dir = synth.generate(tmp_path, seed=0, users=40, history_items=6, queries_per_user=2,
                              tasks=("LaMP-2M",))["LaMP-2M"]
    assignment, report = split_records(load_lamp("LaMP-2M", task_dir), cfg)
    report = {"dataset": "synth", "task": "LaMP-2M", **report, "held_out": held_out(task_dir, assignment)}
    ood = report["held_out"]["ood_test"]
    unseen = synth.unseen_preference_users(task_dir, assignment["train"], assignment["ood_test"])
    assert ood["unseen_preference"] == len(unseen) and ood["users"] == len(assignment["ood_test"]) == 8
    metrics = split_metrics(report)
    assert metrics["ood_test_unseen_preference_share"] == len(unseen) / 8
    assert "random_test_unseen_scene_share" in metrics
    text = split_summary([report])
    assert f"| synth | LaMP-2M | ood_test | 8 | {ood['unseen_scene']} of 8 (" in text
    assert "no train user has" in text


def test_held_out_preferences_leave_training_so_their_test_users_are_unseen(tmp_path):
    """split.holdout_preferences (issue 28.4): the drawn test users' planted preferences reach no training user, the
    withheld users are exactly the train users who share one, and the test splits stay as drawn."""
    from p2p.config import load_config
    from p2p.data import synth
    from p2p.data.sources.lamp import load_lamp
    from p2p.stages.split import held_out, hold_out_preferences, split_records

    cfg = load_config("params.yaml", preset="smoke")
    task_dir = synth.generate(tmp_path, seed=0, users=300, history_items=6, queries_per_user=2,
                              tasks=("LaMP-2M",))["LaMP-2M"]
    assignment, report = split_records(load_lamp("LaMP-2M", task_dir), cfg)
    before = {name: list(users) for name, users in assignment.items() if name != "cluster"}
    unseen_before = held_out(task_dir, assignment)["ood_test"]["unseen_preference"]

    held = hold_out_preferences(task_dir, assignment, 4, seed=0)
    planted = synth.planted_preferences(task_dir)
    key = {u: synth.preference_key("LaMP-2M", p) for u, p in planted.items()}
    assert {key[u] for u in assignment["withheld"]} <= set(held["preferences"]) and 1 <= len(held["preferences"]) <= 8
    assert not {key[u] for u in assignment["train"]} & set(held["preferences"])
    assert sorted(assignment["train"] + assignment["withheld"]) == sorted(before["train"])
    assert held["train_users_moved"] == len(assignment["withheld"]) > 0
    for name in ("random_test", "ood_test", "excluded"):
        assert assignment[name] == before[name]
    for split in ("random_test", "ood_test"):
        unseen = synth.unseen_preference_users(task_dir, assignment["train"], assignment[split])
        holding = {u for u in assignment[split] if key[u] in held["preferences"]}
        assert len(holding) >= 4 and holding <= unseen
    assert held_out(task_dir, assignment)["ood_test"]["unseen_preference"] > unseen_before
    again = {name: list(users) for name, users in before.items()}
    assert hold_out_preferences(task_dir, again, 4, seed=0) == held and again["withheld"] == assignment["withheld"]
    report = {"dataset": "synth", "task": "LaMP-2M", **report, "holdout_preferences": held,
              "held_out": held_out(task_dir, assignment)}
    assert (f"the planted preferences of 4 users per test split are held out of training "
            f"(`split.holdout_preferences`): {len(held['preferences'])} preferences") in split_summary([report])
