"""The train stage's check: P2P's scores on held-out users with their own profile, another user's, and none.

Same model and prompts for every condition, greedy: `p2p` (each user's own profile embedding), `p2p_shuffled`
(another test user's, users permuted without fixed points), `base` (no adapter). A hypernetwork that uses the
profile beats shuffled. On the synthetic benchmark the planted oracle and the best user-blind answer are scored on
the same users (`reference_scores`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from p2p.data import synth
from p2p.hyper.data import build_samples
from p2p.hyper.personalize import Personalizer
from p2p.methods import CHECK_CONDITIONS
from p2p.models.decoding import TransformersBackend
from p2p.models.generation import Sampling
from p2p.paths import TaskData
from p2p.profiles.embeddings import ablate
from p2p.tasks import get_task
from p2p.tasks.scoring import score
from p2p.training import Sample


def shuffled_embeddings(samples: list[Sample], seed: int) -> np.ndarray:
    """Each sample gets a profile embedding of another user (users permuted without fixed points)."""
    return ablate(np.stack([s.embedding for s in samples]), [s.user_id for s in samples], "shuffled", seed)


def evaluate_users(personalizer: Personalizer, data: TaskData, split: str, *, max_new_tokens: int, seed: int,
                   conditions: tuple[str, ...] = CHECK_CONDITIONS) -> dict[str, dict[str, Any]]:
    """Scores (P2P style) of one task's users in `split` (e.g. ood_test) per condition; greedy decoding of
    `max_new_tokens` at most (a budget that never looks at the golds)."""
    samples = build_samples(data.records, data.queries, data.split[split])
    if not samples:
        return {}
    spec = get_task(data.task)
    sampling = Sampling(max_new_tokens=max_new_tokens)
    prompts, golds = [s.prompt for s in samples], [s.target for s in samples]
    own = np.stack([s.embedding for s in samples])
    results = {}
    for condition in conditions:
        if condition == "base":
            texts = _base_answers(personalizer, prompts, sampling)
        else:
            embeddings = own if condition == "p2p" else shuffled_embeddings(samples, seed)
            texts = [g.text for g in personalizer.generate(prompts, embeddings, data.task, sampling)]
        results[condition] = {"n": len(samples), **score(spec, texts, golds, "p2p")}
    return results


def _base_answers(personalizer: Personalizer, prompts: list[str], sampling: Sampling) -> list[str]:
    backend = TransformersBackend(personalizer.model, personalizer.tokenizer, "base",
                                  batch_size=personalizer.batch_size, progress=False)
    return [g.text for g in backend.generate([[{"role": "user", "content": p}] for p in prompts], sampling)]


def reference_scores(data: TaskData, split: str, synth_dir: Path) -> dict[str, dict[str, Any]]:
    """For the synthetic benchmark (its task's files in `synth_dir`): the oracle's and the best user-blind answer's
    scores on the same users; nothing for real data."""
    if data.dataset != "synth":
        return {}
    users = set(data.split[split])
    ids = [q.id for r in data.records if r.user_id in users for q in r.queries]
    golds = {q.id: q.output for r in data.records for q in r.queries}
    spec = get_task(data.task)
    out = {}
    for name, predict in (("oracle", synth.oracle_predictions), ("query_only", synth.query_only_predictions)):
        predicted = predict(synth_dir)
        out[name] = {"n": len(ids), **score(spec, [predicted[i] for i in ids], [golds[i] for i in ids], "p2p")}
    return out
