"""Stage `oppu`: the OPPU baseline, a fresh LoRA per test user trained on that user's history alone.

Per task: every user of the evaluated test splits gets an adapter (`oppu` settings, a seed of (seed, user id)),
stacked in user order into `Layout.oppu_adapters` with the seconds and steps per user beside it. Each finished
user's adapter is kept under `train.checkpoints`, named by everything that shaped it, so a rerun after a failure
trains only the rest.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from p2p.baselines import oppu
from p2p.baselines.lora_training import LoraRun
from p2p.cache import content_key
from p2p.config import Config
from p2p.data.records import UserRecord
from p2p.io import read_json
from p2p.layout import Layout, read_prepared
from p2p.stages.common import base_model, lora_shape

TrainUser = Callable[[UserRecord], LoraRun]
OnTask = Callable[[str, str, dict[str, float]], None]  # (dataset, task, statistics)


def checkpoint_path(cfg: Config, root: Path, record: UserRecord) -> Path:
    """Where a user's finished adapter is kept, named by everything that shapes it, so a rerun skips the user."""
    key = content_key(cfg.oppu.model_dump(mode="json", exclude={"dir"}), cfg.lora.model_dump(mode="json"),
                      cfg.model.base_llm, cfg.seed, cfg.train.grad_clip, record.to_json())
    return Layout(cfg, root).oppu_checkpoint(record.task, record.user_id, key[:12])


def oppu_stage(cfg: Config, root: Path, wrap: Callable[[TrainUser], TrainUser] | None = None,
               on_task: OnTask | None = None) -> None:
    """Train every task's test users. `wrap(train_user)` may wrap each user's training (the flow makes it a Prefect
    task); `on_task` gets each task's statistics."""
    layout = Layout(cfg, root)
    model, tokenizer, targets = base_model(cfg, root)
    lora = lora_shape(cfg)

    def train_user(record: UserRecord) -> LoraRun:
        return oppu.train_user(model, tokenizer, targets, lora, record, cfg.oppu, seed=cfg.seed,
                               grad_clip=cfg.train.grad_clip, checkpoint=checkpoint_path(cfg, root, record))

    train = wrap(train_user) if wrap else train_user
    for dataset, task in cfg.data.tasks():
        records = read_prepared(layout.prepared(dataset, task))
        users = oppu.evaluated_users(read_json(layout.split(dataset, task)), cfg.evaluate.splits)
        stats = oppu.oppu_task(records, users, train, layout.oppu_adapters(dataset, task))
        if on_task is not None:
            on_task(dataset, task, stats)
