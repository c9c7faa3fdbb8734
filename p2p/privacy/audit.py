"""One task's privacy audit: what the attacks of p2p.privacy.attacks recover from P2P's and OPPU's adapters, and
from the profile embedding itself, for the test users of a split (docs/privacy.md).

The unit audited is a user's *released adapter*: P2P's made from the profile embedding of the user's first query
(the adapter P2P evaluated that query with, the defence's noise included), OPPU's trained on the user's history.
The attacker holds that adapter, the public hypernetwork and base model, and the users he learns from:

- attribute inference (synthetic tasks with a planted preference): a ridge probe from adapter features to the
  preference, fitted on the *training* users' adapters (P2P, and the embedding itself as the reference); OPPU
  trains adapters for test users only, so its probe is cross-fitted: fitted on the other folds of the evaluated
  test users and scored on the held-out fold (`FOLDS`). LaMP-2M: the share of the user's 2 preferred tags among
  the probe's top 2 (chance 2/15); LaMP-3: the absolute error of the guessed rating bias (-2..2).
- linkage: the rank of the user's own profile among every profile of the task (the pool) by cosine similarity,
  (a) `regenerated`: each candidate's adapter made through the public hypernetwork (P2P only: OPPU's would mean
  training one per candidate), compared with the released one; (b) `inverted`: the adapter mapped back to an
  embedding by a ridge regression (fitted on training users for P2P, cross-fitted for OPPU), compared with the
  candidates' embeddings.
- membership: for a history item, is it the user's? Members are up to `members_per_user` of the user's own visible
  items; each is paired with a non-member: an item of another user with the same answer (tag, rating), so the
  attack must recognise the item, not the user's taste. Scores: `loss` (minus the item's loss under the user's
  adapter) and `calibrated` (the base model's loss minus the adapter's: LoRA-Leak's reference calibration).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from p2p.baselines.oppu import item_example
from p2p.data.records import UserRecord
from p2p.data.synth import MOVIE_TAGS
from p2p.lora.hooks import Adapters, LoraShape, TargetLayout, adapters_applied
from p2p.privacy.attacks import cosine_similarity, ridge_probe
from p2p.privacy.metrics import auc_with_interval, ranks_of_truth, top_k, with_interval
from p2p.profiles.build import visible_items
from p2p.tasks.registry import history_query
from p2p.training import Encoded, left_pad, sample_losses

FOLDS = 4  # cross-fitting of the probes on OPPU's adapters
ATTRIBUTE_TASKS = ("LaMP-2M", "LaMP-3")  # the synthetic tasks whose planted preference is a label or a number


# --- attribute inference -----------------------------------------------------------------------------------------


def attribute_targets(task: str, preferences: Sequence[dict[str, Any]]) -> np.ndarray:
    """The attacker's regression targets: LaMP-2M one indicator per tag (the user's 2 are 1), LaMP-3 the bias."""
    if task == "LaMP-2M":
        return np.array([[float(tag in p["tags"]) for tag in MOVIE_TAGS] for p in preferences])
    if task == "LaMP-3":
        return np.array([float(p["bias"]) for p in preferences])
    raise ValueError(f"no planted attribute to infer for {task}; the attribute tasks are {ATTRIBUTE_TASKS}")


def attribute_errors(task: str, guesses: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Per user: LaMP-2M the share of the 2 true tags among the 2 highest guesses (higher is better for the
    attacker); LaMP-3 the absolute error of the guess rounded to a bias in -2..2 (lower is better)."""
    if task == "LaMP-2M":
        top = np.argsort(-guesses, axis=1, kind="stable")[:, :2]
        return np.take_along_axis(truth, top, axis=1).sum(axis=1) / 2
    return np.abs(np.clip(np.rint(guesses), -2, 2) - truth)


def constant_guess(task: str, train_y: np.ndarray, n: int) -> np.ndarray:
    """The best guess without any adapter: the training users' most common tags, or their median bias."""
    if task == "LaMP-2M":
        return np.tile(train_y.mean(axis=0), (n, 1))
    return np.full(n, float(np.median(train_y)))


def cross_fitted(x: np.ndarray, y: np.ndarray, folds: int = FOLDS) -> np.ndarray:
    """Each row predicted by a ridge probe fitted on the other folds (rows dealt to folds in turn)."""
    fold = np.arange(len(x)) % folds
    out = np.zeros((len(x), *y.shape[1:]))
    for f in range(folds):
        held = fold == f
        if held.any() and (~held).sum() >= 2:
            out[held] = ridge_probe(x[~held], y[~held])(x[held])
    return out


# --- linkage ----------------------------------------------------------------------------------------------------


def linkage(similarity: np.ndarray, truth: Sequence[int], owners: Sequence[str], resamples: int,
            seed: int) -> dict[str, Any]:
    """Top-1 and top-5 accuracy of picking each row's own profile from the pool, with intervals and the pool size."""
    ranks = ranks_of_truth(similarity, truth)
    return {"top1": with_interval(top_k(ranks, 1), owners, resamples, seed),
            "top5": with_interval(top_k(ranks, 5), owners, resamples, seed), "pool": int(similarity.shape[1]),
            "chance_top1": 1 / similarity.shape[1], "chance_top5": min(5, similarity.shape[1]) / similarity.shape[1]}


def regenerated_linkage(released: np.ndarray, candidates: np.ndarray, truth: Sequence[int], owners: Sequence[str],
                        resamples: int, seed: int) -> dict[str, Any]:
    """Linkage by regeneration: released adapters' features against every candidate's regenerated adapter's."""
    return linkage(cosine_similarity(released, candidates), truth, owners, resamples, seed)


def inverted_linkage(invert: Callable[[np.ndarray], np.ndarray], released: np.ndarray, pool_embeddings: np.ndarray,
                     truth: Sequence[int], owners: Sequence[str], resamples: int, seed: int) -> dict[str, Any]:
    """Linkage by inversion: released adapters mapped back to embeddings, against every candidate's embedding."""
    return linkage(cosine_similarity(invert(released), pool_embeddings), truth, owners, resamples, seed)


# --- membership -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MembershipItem:
    owner: str  # the audited user (whose adapter scores the item)
    item: dict[str, Any]
    member: bool  # the item is in the owner's history


def _answer(task: str, item: dict[str, Any]) -> str | None:
    made = history_query(task, item)
    return None if made is None else made[1]


def membership_items(records: Sequence[UserRecord], audited: Sequence[str], per_user: int,
                     seed: int) -> list[MembershipItem]:
    """Up to `per_user` visible items of each audited user (members), each followed by a non-member: a visible item
    of another audited user with the same answer where one exists, else any other audited user's item; seeded.

    Non-members come from the audited users, so members and non-members are drawn from one population: drawn from
    every user of the task, an OOD user's members came from held-out clusters and its non-members mostly from the
    training clusters, and an attack scored the difference between the populations (docs/privacy.md). Only where no
    other audited user has an item (a one-user split) do they come from every other user of the task."""
    by_user = {r.user_id: visible_items(r) for r in records}
    task = records[0].task if records else ""
    pool = [u for u in dict.fromkeys(audited) if u in by_user]
    if sum(bool(by_user[u]) for u in pool) < 2:
        pool = list(by_user)
    others: dict[str | None, list[tuple[str, dict[str, Any]]]] = {}
    for user in pool:
        for item in by_user[user]:
            others.setdefault(_answer(task, item), []).append((user, item))
    everyone = [pair for pairs in others.values() for pair in pairs]
    out = []
    for user in audited:
        rng = random.Random(f"{seed}:membership:{user}")
        own = by_user.get(user, [])
        for item in rng.sample(own, min(per_user, len(own))):
            same = [(u, i) for u, i in others.get(_answer(task, item), []) if u != user]
            candidates = same or [(u, i) for u, i in everyone if u != user]
            if not candidates:
                continue
            out += [MembershipItem(user, item, True), MembershipItem(user, rng.choice(candidates)[1], False)]
    return out


def item_losses(model: Any, tokenizer: Any, examples: Sequence[Encoded], *, batch_size: int,
                layout: TargetLayout | None = None, lora: LoraShape | None = None,
                adapters: Adapters | None = None) -> np.ndarray:
    """Each example's mean answer-token loss, under the base model or, with `adapters`, row i under adapter i."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    out = []
    with torch.no_grad():
        for start in range(0, len(examples), batch_size):
            rows = list(range(start, min(start + batch_size, len(examples))))
            batch = left_pad([examples[i] for i in rows], pad, model.device)
            if adapters is None:
                out.append(sample_losses(model, batch, 0.0))
                continue
            with adapters_applied(model, layout, lora, adapters.rows(rows)):
                out.append(sample_losses(model, batch, 0.0))
    return torch.cat(out).float().cpu().numpy() if out else np.zeros(0)


def encode_items(items: Sequence[MembershipItem], task: str, tokenizer: Any, max_length: int) -> list[Encoded]:
    return [item_example(task, m.owner, m.item, tokenizer, max_length) for m in items]


def membership(items: Sequence[MembershipItem], adapter_loss: np.ndarray, base_loss: np.ndarray, resamples: int,
               seed: int) -> dict[str, Any]:
    """AUC of the loss attack and of the reference-calibrated attack, each with its user-bootstrap interval."""
    owners = [m.owner for m in items]
    members = [m.member for m in items]
    return {"loss": auc_with_interval(-adapter_loss, members, owners, resamples, seed),
            "calibrated": auc_with_interval(base_loss - adapter_loss, members, owners, resamples, seed)}

