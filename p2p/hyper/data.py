"""Training and evaluation samples for the hypernetwork (`p2p.training.Sample`, tokenised by `p2p.training.encode`).

A sample is one query of one user: the task's prompt (App. J, without any profile: the profile reaches the model
only through the generated adapter), the gold answer, and the profile embedding of that query (the embed stage
embeds one profile text per query, since its BM25 items depend on the query). Prompts go through the base model's
chat template as a user turn; the answer is the assistant turn.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np

from p2p.data.records import UserRecord
from p2p.paths import TaskData
from p2p.tasks import get_task
from p2p.tasks.registry import history_query
from p2p.training import Sample

log = logging.getLogger(__name__)

HISTORY_SAMPLE = "#history"  # the query_id suffix of a sample made from a history item (padding)

#: Profile embeddings of history items asked as queries: (record, item, query input) -> one row each, of the profile
#: built without that item (p2p.profiles.build.item_profile; the train stage embeds them as the embed stage does).
ItemEmbeddings = Callable[[list[tuple[UserRecord, dict[str, Any], str]]], np.ndarray]


def build_samples(records: Iterable[UserRecord], embeddings: dict[str, np.ndarray], users: Iterable[str] | None = None,
                  *, require_gold: bool = True) -> list[Sample]:
    """One sample per query of the chosen users (all users when `users` is None), in record order."""
    chosen = set(users) if users is not None else None
    samples = []
    for record in records:
        if chosen is not None and record.user_id not in chosen:
            continue
        spec = get_task(record.task)
        for query in record.queries:
            if query.output is None and require_gold:
                raise ValueError(f"{record.task}: user {record.user_id} query {query.id} has no gold output; "
                                 f"training needs the outputs file")
            if query.id not in embeddings:
                raise ValueError(f"{record.task}: no profile embedding for query {query.id}; rerun the embed stage")
            samples.append(Sample(record.task, record.user_id, query.id, spec.build_prompt(query.input),
                                  query.output or "", embeddings[query.id]))
    return samples


def history_samples(records: Iterable[UserRecord], needed: int, seed: int,
                    embed_items: ItemEmbeddings) -> list[Sample]:
    """Up to `needed` extra samples made from history items (the item's text is the query, its label the answer).

    Only tasks whose history items carry a label (classification, rating) can be padded this way. Items that are
    another query's gold (`query_id`) are skipped (leakage rule). The profile is `embed_items`' embedding of the
    user's profile without that item, never the user's whole profile: at test a query's answer is never in its
    profile, and a padding row whose profile showed its own answer would teach the hypernetwork to look for it.
    """
    pool = []
    for record in records:
        for item in record.history:
            if "query_id" in item:
                continue
            made = history_query(record.task, item)
            if made is not None:
                pool.append((record, item, made))
    rng = np.random.default_rng(seed)
    chosen = [pool[i] for i in sorted(rng.permutation(len(pool))[:needed])]
    if not chosen:
        return []
    vectors = embed_items([(record, item, prompt_input) for record, item, (prompt_input, _) in chosen])
    return [Sample(record.task, record.user_id, f"{item.get('id', 'h')}{HISTORY_SAMPLE}",
                   get_task(record.task).build_prompt(prompt_input), target, vector.astype(np.float32))
            for (record, item, (prompt_input, target)), vector in zip(chosen, vectors)]


def select_train_users(users: list[str], clusters: dict[str, int], user_fraction: float, cluster_fraction: float,
                       seed: int, max_users: int | None = None) -> list[str]:
    """Fig. 3's training populations: the users of a seeded `cluster_fraction` of their clusters (diversity), then a
    seeded `user_fraction` of those users (quantity), at most `max_users` of them (diversity at matched user counts);
    at least one cluster and one user. 1.0, 1.0 and None: everyone."""
    rng = np.random.default_rng([seed, 3])
    names = sorted({clusters[u] for u in users})
    kept = {names[i] for i in rng.permutation(len(names))[:max(1, round(cluster_fraction * len(names)))]}
    pool = sorted(u for u in users if clusters[u] in kept)
    count = max(1, round(user_fraction * len(pool)))
    if max_users is not None:
        if max_users > count:
            log.warning("train.max_users %d: only %d users in the chosen clusters; training on those", max_users,
                        count)
        count = min(count, max_users)
    chosen = {pool[i] for i in rng.permutation(len(pool))[:count]}
    return [u for u in users if u in chosen]


def train_samples(data: TaskData, *, user_fraction: float, cluster_fraction: float, min_samples: int,
                  seed: int, embed_items: ItemEmbeddings, max_users: int | None = None) -> list[Sample]:
    """The task's training samples: every query of every `train` user (or the share `user_fraction` and
    `cluster_fraction` choose), padded from history items up to `min_samples` (`history_samples`, their profiles
    from `embed_items`). A test user in `train` is an error."""
    everyone = set(data.split["train"])
    leaked = everyone & (set(data.split["random_test"]) | set(data.split["ood_test"]))
    if leaked:
        raise ValueError(f"{data.dataset}/{data.task}: test users in the train split: {sorted(leaked)[:5]}")
    train_users = everyone
    if user_fraction < 1 or cluster_fraction < 1 or max_users is not None:
        train_users = set(select_train_users(data.split["train"], data.split["cluster"], user_fraction,
                                             cluster_fraction, seed, max_users))
        log.info("%s: training on %d of %d train users", data.task, len(train_users), len(everyone))
    samples = build_samples(data.records, data.queries, train_users)
    needed = min_samples - len(samples)
    if needed > 0:
        train_records = [r for r in data.records if r.user_id in train_users]
        padding = history_samples(train_records, needed, seed, embed_items)
        if len(padding) < needed:  # real LaMP subsets: one or two history items per user, few to spare
            log.info("%s: %d query samples + %d from history items, short of train.min_samples_per_task %d: "
                     "the train users' history holds no more", data.task, len(samples), len(padding), min_samples)
        samples += padding
    return samples
