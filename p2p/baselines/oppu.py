"""OPPU (One PEFT Per User): for each test user, a fresh LoRA trained on that user's history alone.

Training data per user: each visible history item made into a task query and its answer where the task allows
(a movie description and its tag, a review and its score: `p2p.tasks.registry.history_query`), else the item's
text itself with a language-modelling loss (a tweet, an essay: the user's writing). Items that are another query's
gold are never used (the leakage rule). `oppu.loss`: `completion` trains on the answer only, `causal_lm` on prompt
and answer (the authors' cf-x/P2P oppu_trainer.py).

Each user starts from scratch: the LoRA's initialisation and dropout come from a seed derived from (seed, user id)
and its optimizer state is its own, so a user's adapter depends on that user's data alone, not on which users were
trained before it (the original OPPU code accidentally accumulated earlier users' data) or beside it:
`parallel_users` users train together, each row of a batch with its own user's LoRA
(`p2p.baselines.lora_training.train_loras`).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from p2p.baselines.lora_training import (
    LoRA,
    LoraJob,
    LoraRecipe,
    LoraRun,
    epoch_steps,
    stack_adapters,
    train_loras,
)
from p2p.data.records import UserRecord
from p2p.lora.hooks import LoraShape, TargetLayout
from p2p.lora.stacked import save_adapters
from p2p.profiles.build import visible_items
from p2p.tasks import get_task
from p2p.tasks.registry import history_query
from p2p.training import Encoded, Sample, encode

if TYPE_CHECKING:
    from p2p.config import OppuConfig

log = logging.getLogger(__name__)

NO_EMBEDDING = np.zeros(0, dtype=np.float32)  # OPPU samples carry no profile


def user_seed(seed: int, user_id: str) -> int:
    """A per-user seed that does not depend on the order users are trained in."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{user_id}".encode()).digest()[:4], "little")


def item_example(task: str, user_id: str, item: dict[str, Any], tokenizer: Any, max_length: int,
                 completion_only: bool = True) -> Encoded:
    """One history item as a training example: the task query it makes and its answer where the task allows,
    else the item's text with a language-modelling loss (see the module docstring)."""
    spec = get_task(task)
    made = history_query(task, item)
    if made is not None:
        sample = Sample(task, user_id, str(item.get("id", "")), spec.build_prompt(made[0]), made[1], NO_EMBEDDING)
        return encode(tokenizer, sample, max_length=max_length, completion_only=completion_only)
    ids = tokenizer(spec.item_text(item) + (tokenizer.eos_token or ""), add_special_tokens=False)["input_ids"]
    return Encoded(ids[-max_length:], ids[-max_length:])


def user_examples(record: UserRecord, tokenizer: Any, max_length: int, completion_only: bool = True) -> list[Encoded]:
    """The user's history as training examples (`item_example` of every visible item)."""
    return [item_example(record.task, record.user_id, item, tokenizer, max_length, completion_only)
            for item in visible_items(record)]


def recipe(oc: OppuConfig) -> LoraRecipe:
    return LoraRecipe(lr=oc.lr, weight_decay=oc.weight_decay, warmup=oc.warmup, schedule=oc.schedule,
                      grad_clip=oc.grad_clip)


def train_users(model: Any, tokenizer: Any, layout: TargetLayout, lora: LoraShape, records: Sequence[UserRecord],
                oc: OppuConfig, *, seed: int, progress: bool = False) -> list[LoraRun]:
    """Each user's fresh LoRA (`oppu` settings, the run's `seed`), `oc.parallel_users` users per batch; `model`
    must be frozen."""
    runs: list[LoraRun | None] = [None] * len(records)
    jobs: list[tuple[int, LoraJob]] = []
    for index, record in enumerate(records):
        examples = user_examples(record, tokenizer, oc.max_length, oc.loss == "completion")
        job_seed = user_seed(seed, record.user_id)
        if not examples:  # e.g. a one-essay EC speaker: nothing to learn from, so OPPU is the base model (B = 0)
            log.warning("%s: user %s has no visible history item; its OPPU adapter stays at the initialisation (the "
                        "base model)", record.task, record.user_id)
            runs[index] = LoraRun(LoRA(layout, lora, torch.Generator().manual_seed(job_seed)), steps=0, seconds=0.0)
            continue
        steps = epoch_steps(len(examples), oc.epochs, oc.batch_size, oc.grad_accum, job_seed)
        jobs.append((index, LoraJob(examples, steps, job_seed)))
    for start in range(0, len(jobs), oc.parallel_users):
        group = jobs[start:start + oc.parallel_users]
        trained = train_loras(model, tokenizer, layout, lora, [job for _, job in group], recipe(oc),
                              progress=progress, desc=f"oppu users {start + 1}-{start + len(group)} of {len(jobs)}")
        for (index, _), run in zip(group, trained):
            runs[index] = run
    return [run for run in runs if run is not None]


def oppu_task(records: list[UserRecord], users: list[str],
              train: Callable[[list[UserRecord]], list[LoraRun]], out: Path) -> dict[str, float]:
    """Train every listed user's adapter with `train(records)` and write them stacked to `out` (with the users,
    seconds and steps in `.json` beside it); returns timing statistics."""
    by_id = {r.user_id: r for r in records}
    runs = train([by_id[u] for u in users])
    seconds = [run.seconds for run in runs]
    save_adapters(out, stack_adapters([run.lora for run in runs]), users,
                  {"seconds": seconds, "steps": [run.steps for run in runs],
                   "final_loss": [run.history[-1]["loss"] if run.history else None for run in runs]})
    return {"users": float(len(users)), "seconds_per_user": sum(seconds) / max(1, len(seconds)),
            "steps_per_user": sum(run.steps for run in runs) / max(1, len(runs))}
