"""The privacy audit's library (p2p.privacy, p2p.profiles.noise): golden figures, planted leaks caught, random
adapters at chance, the noise defence lowering a planted leak as its scale grows. No model: adapters are made here."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from p2p.data.records import Query, UserRecord
from p2p.data.synth import MOVIE_TAGS
from p2p.lora.hooks import Adapters
from p2p.privacy import audit
from p2p.privacy.attacks import adapter_features, cosine_similarity, ridge_probe
from p2p.privacy.metrics import (
    auc,
    auc_with_interval,
    gaussian_delta,
    gaussian_epsilon,
    ranks_of_truth,
    top_k,
    weighted_auc,
    with_interval,
)
from p2p.profiles.noise import EmbeddingNoise

LAYERS, RANK, D_IN, D_OUT = 3, 2, 12, 10


def test_auc_golden_values():
    assert auc([0.1, 0.4, 0.35, 0.8], [False, False, True, True]) == 0.75  # sklearn's documented example
    assert auc([1.0, 1.0, 0.0], [True, False, False]) == 0.75  # a tie counts one half
    assert auc([3.0, 2.0, 1.0], [True, True, False]) == 1.0
    assert auc([3.0, 2.0, 1.0], [False, False, True]) == 0.0
    assert math.isnan(auc([1.0, 2.0], [True, True]))  # no non-member: no AUC


def test_weighted_auc_equals_auc_on_the_resampled_rows():
    rng = np.random.default_rng(0)
    scores, members = rng.integers(0, 5, 30).astype(float), rng.random(30) < 0.5  # many ties
    weights = rng.integers(0, 3, size=(6, 30))
    for row, value in zip(weights, weighted_auc(scores, members, weights)):
        picked = np.repeat(np.arange(30), row)
        assert value == pytest.approx(auc(scores[picked], members[picked]))


def test_linkage_ranks_count_ties_against_the_attacker():
    similarity = np.array([[0.9, 0.1, 0.3], [0.5, 0.5, 0.5], [0.2, 0.8, 0.1]])
    ranks = ranks_of_truth(similarity, [0, 1, 2])
    assert ranks.tolist() == [1, 3, 3]
    assert top_k(ranks, 1).tolist() == [1.0, 0.0, 0.0] and top_k(ranks, 3).tolist() == [1.0, 1.0, 1.0]


def test_intervals_resample_users_and_report_the_sample():
    out = with_interval([1.0, 1.0, 0.0, 0.0], ["a", "a", "b", "b"], 200, 0)
    assert out["value"] == 0.5 and out["n"] == 4 and out["users"] == 2
    assert out["ci"] == [0.0, 1.0]  # two users: a resample holds a twice, b twice, or one of each
    figure = auc_with_interval([0.9, 0.1, 0.8, 0.2], [True, False, True, False], ["a", "a", "b", "b"], 100, 0)
    assert figure["value"] == 1.0 and figure["ci"] == [1.0, 1.0] and figure["members"] == 2


def test_gaussian_epsilon_golden_values():
    # Balle and Wang (2018): at epsilon 1, delta 1e-5 and sensitivity 1 the analytic mechanism needs sigma ~3.73
    # where the classic bound sqrt(2 ln(1.25/delta)) asks 4.84.
    assert gaussian_epsilon(1.0, 3.73, 1e-5) == pytest.approx(1.0, abs=0.01)
    assert gaussian_delta(gaussian_epsilon(2.0, 1.5, 1e-5), 2.0, 1.5) == pytest.approx(1e-5, rel=1e-3)
    epsilons = [gaussian_epsilon(1.0, s, 1e-5) for s in (0.5, 1.0, 2.0, 4.0, 8.0)]
    assert epsilons == sorted(epsilons, reverse=True) and epsilons[-1] < 1
    assert math.isinf(gaussian_epsilon(1.0, 0.0, 1e-5))
    assert gaussian_epsilon(2 * math.sqrt(384), 1.0, 1e-5) > 100  # noise as large as the profile: no real guarantee


def test_noise_is_off_at_scale_zero_and_keyed_by_secret_and_row():
    x = np.random.default_rng(0).standard_normal((3, 16)).astype(np.float32) * 10
    assert np.array_equal(EmbeddingNoise(0.0).apply(x, ["a", "b", "c"], "s"), x)
    noise = EmbeddingNoise(0.5, clip=1.0)
    once, again = noise.apply(x, ["a", "b", "c"], "s"), noise.apply(x, ["a", "b", "c"], "s")
    assert np.array_equal(once, again)  # the same profile twice: the same adapter, nothing to average away
    assert not np.allclose(once, noise.apply(x, ["a", "b", "c"], "other secret"))
    assert np.array_equal(noise.apply(x[:1], ["a"], "s"), once[:1])  # a row's noise does not depend on its batch
    clipped = EmbeddingNoise(1e-9, clip=0.5).apply(x, ["a", "b", "c"], "s")
    assert np.linalg.norm(clipped, axis=1).max() <= 0.5 * 4 + 1e-4  # clip * sqrt(16)
    with pytest.raises(ValueError, match="scale"):
        EmbeddingNoise(-1.0)


def _adapters(updates: np.ndarray, basis: int = 0) -> Adapters:
    """Adapters whose q update of row i (every layer) is B A with A made of `updates[i]` (RANK * D_IN numbers) and B
    fixed, factored as (G^-1 A, B G) with a random per-row G drawn from `basis`: B A is the same for every basis."""
    n = len(updates)
    a = torch.as_tensor(updates, dtype=torch.float32).reshape(n, 1, RANK, D_IN).repeat(1, LAYERS, 1, 1)
    b = torch.ones(n, LAYERS, D_OUT, RANK) + 0.1 * torch.randn(1, LAYERS, D_OUT, RANK,
                                                               generator=torch.Generator().manual_seed(0))
    g = torch.eye(RANK) + 0.3 * torch.randn(n, 1, RANK, RANK, generator=torch.Generator().manual_seed(basis))
    return Adapters({"q_proj": torch.linalg.solve(g, a)}, {"q_proj": b @ g})


def test_features_see_the_update_not_its_factorisation():
    updates = np.random.default_rng(1).standard_normal((4, RANK * D_IN))
    one = adapter_features(_adapters(updates, basis=0))
    assert one.shape == (4, LAYERS * 8 * 8)
    assert np.allclose(one, adapter_features(_adapters(updates, basis=1)), atol=1e-4)  # another (A, B), same B A
    assert not np.allclose(one, adapter_features(_adapters(updates[::-1].copy(), basis=0)), atol=1e-2)


def _tag_users(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """n users' planted tag indicators (2 of the 15 tags) and a profile embedding that encodes them, plus noise."""
    rng = np.random.default_rng(seed)
    truth = np.zeros((n, len(MOVIE_TAGS)))
    for row in truth:
        row[rng.choice(len(MOVIE_TAGS), 2, replace=False)] = 1.0
    mixing = np.random.default_rng(99).standard_normal((len(MOVIE_TAGS), RANK * D_IN))
    return truth, truth @ mixing + 0.3 * rng.standard_normal((n, RANK * D_IN))


def _attack(train_emb, train_y, test_emb, test_y, noise: float = 0.0) -> dict:
    """Attribute inference on adapters made from (noisy) embeddings by a fixed linear 'hypernetwork'."""
    def released(emb: np.ndarray, key: str) -> np.ndarray:
        noisy = EmbeddingNoise(noise, clip=100.0).apply(emb, [f"{key}{i}" for i in range(len(emb))], "secret")
        return adapter_features(_adapters(noisy))

    guesses = ridge_probe(adapter_features(_adapters(train_emb)), train_y)(released(test_emb, "t"))
    errors = audit.attribute_errors("LaMP-2M", guesses, test_y)
    return with_interval(errors, [str(i) for i in range(len(errors))], 500, 0)


def test_a_planted_preference_is_read_from_the_adapter_and_random_adapters_stay_at_chance():
    train_y, train_emb = _tag_users(300, 0)
    test_y, test_emb = _tag_users(150, 1)
    assert _attack(train_emb, train_y, test_emb, test_y)["value"] > 0.95
    random_emb = np.random.default_rng(5).standard_normal(test_emb.shape)  # adapters that know nothing of the users
    chance = 2 / len(MOVIE_TAGS)
    at_random = _attack(train_emb, train_y, random_emb, test_y)
    assert at_random["ci"][0] <= chance <= at_random["ci"][1]


def test_the_noise_defence_lowers_a_planted_leak_as_its_scale_grows():
    train_y, train_emb = _tag_users(300, 0)
    test_y, test_emb = _tag_users(150, 1)
    figures = [_attack(train_emb, train_y, test_emb, test_y, noise)["value"] for noise in (0.0, 1.0, 2.0, 4.0, 8.0)]
    assert figures == sorted(figures, reverse=True) and figures[0] > 0.95 and figures[-1] < 0.4


def test_a_planted_membership_leak_is_caught_and_a_blind_score_is_not():
    rng = np.random.default_rng(3)
    owners = [f"u{i // 8}" for i in range(400)]
    members = np.array([i % 2 == 0 for i in range(400)])
    leaky_loss = np.where(members, 0.5, 2.0) + 0.1 * rng.standard_normal(400)  # members: low loss under the adapter
    base_loss = 2.0 + 0.1 * rng.standard_normal(400)
    items = [audit.MembershipItem(o, {}, bool(m)) for o, m in zip(owners, members)]
    leak = audit.membership(items, leaky_loss, base_loss, 300, 0)
    assert leak["loss"]["value"] > 0.99 and leak["calibrated"]["value"] > 0.99
    blind = audit.membership(items, base_loss + 0.1 * rng.standard_normal(400), base_loss, 300, 0)
    for score in ("loss", "calibrated"):
        lo, hi = blind[score]["ci"]
        assert lo <= 0.5 <= hi


def test_linkage_by_regeneration_finds_a_deterministic_adapter_and_not_a_random_one():
    emb = np.random.default_rng(0).standard_normal((40, RANK * D_IN))
    pool = adapter_features(_adapters(emb))
    owners = [str(i) for i in range(10)]
    exact = audit.regenerated_linkage(pool[:10], pool, list(range(10)), owners, 100, 0)
    assert exact["top1"]["value"] == 1.0 and exact["pool"] == 40
    other = adapter_features(_adapters(np.random.default_rng(7).standard_normal((10, RANK * D_IN))))
    blind = audit.regenerated_linkage(other, pool, list(range(10)), owners, 100, 0)
    assert blind["top1"]["value"] <= 0.2
    assert cosine_similarity(np.zeros((1, 3)), np.ones((2, 3))).tolist() == [[0.0, 0.0]]


def _record(user: str, tags: list[str]) -> UserRecord:
    history = [{"id": f"{user}-{i}", "description": f"film {user} {i}", "tag": tag} for i, tag in enumerate(tags)]
    return UserRecord(user, "LaMP-2M", history, [Query(f"{user}-q", "x", "comedy")])


def test_membership_items_pair_each_member_with_another_audited_users_item_of_the_same_answer():
    # b is not audited and holds the only other "action" item: a's "action" member must not take it, because
    # non-members come from the audited users' population (an OOD user's members are from held-out clusters)
    records = [_record("a", ["comedy", "action", "romance"]), _record("b", ["comedy", "action"]),
               _record("c", ["romance", "sci-fi", "comedy"])]
    items = audit.membership_items(records, ["a", "c"], per_user=3, seed=0)
    assert [m.member for m in items] == [True, False] * 6
    owner_of = {item["id"]: r.user_id for r in records for item in r.history}
    tags = {u: {item["tag"] for item in r.history} for r in records for u in [r.user_id]}
    for member, other in zip(items[::2], items[1::2]):
        assert member.owner == other.owner == owner_of[member.item["id"]]
        source = owner_of[other.item["id"]]
        assert source in {"a", "c"} - {member.owner}
        if member.item["tag"] in tags[source]:  # an audited other user holds the same answer: it is matched
            assert other.item["tag"] == member.item["tag"]
    assert items == audit.membership_items(records, ["a", "c"], per_user=3, seed=0)  # seeded
    # a one-user split has no other audited user: its non-members come from every other user, so it still has some
    alone = audit.membership_items(records, ["a"], per_user=3, seed=0)
    assert [m.member for m in alone] == [True, False] * 3
    assert {owner_of[m.item["id"]] for m in alone[1::2]} <= {"b", "c"}
