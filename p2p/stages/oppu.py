"""Stage `oppu`: the OPPU baseline, a fresh LoRA per test user trained on that user's history alone.

Per task: every user of the evaluated test splits gets an adapter (`oppu` settings, a seed of (`train.seed` else
`seed`, user id)), `oppu.parallel_users` users training together in one batch, stacked in user order into
`Paths.oppu_adapters` with the seconds and steps per user beside it. Each finished user's adapter is kept under
`train.checkpoints`, named by everything that shaped it (not by who trained beside it, which does not change it), so a
rerun after a failure trains only the rest.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from p2p.baselines import oppu
from p2p.baselines.lora_training import LoRA, LoraRun
from p2p.cache import content_key
from p2p.config import Config
from p2p.data.records import UserRecord
from p2p.io import atomic_path, read_json
from p2p.lora.hooks import LoraShape, TargetLayout
from p2p.paths import Paths, read_prepared
from p2p.stages.common import base_model, evaluated_users, lora_shape
from p2p.stages.recorder import Recorder

log = logging.getLogger(__name__)


def checkpoint_path(cfg: Config, root: Path, record: UserRecord) -> Path:
    """Where a user's finished adapter is kept, named by everything that shapes it, so a rerun skips the user."""
    key = content_key(cfg.oppu.model_dump(mode="json", exclude={"dir", "parallel_users"}),
                      cfg.lora.model_dump(mode="json"), cfg.model.base_llm, cfg.train_seed, record.to_json())
    return Paths(cfg, root).oppu_checkpoint(record.task, record.user_id, key[:12])


def save_finished(path: Path, run: LoraRun) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        torch.save({"lora": run.lora.state_dict(), "steps": run.steps, "seconds": run.seconds,
                    "history": run.history}, tmp)


def load_finished(path: Path, layout: TargetLayout, lora: LoraShape) -> LoraRun:
    state = torch.load(path, map_location="cpu", weights_only=True)
    adapter = LoRA(layout, lora, torch.Generator())
    adapter.load_state_dict(state["lora"])
    return LoraRun(adapter.eval(), int(state["steps"]), float(state["seconds"]), list(state["history"]))


def run(cfg: Config, root: Path, rec: Recorder) -> None:
    """Train every task's test users, each group of `oppu.parallel_users` users one step of `rec` (under Prefect a
    task run `train-users`, so the UI shows every group's training and a failure names its users)."""
    paths = Paths(cfg, root)
    model, tokenizer, targets = base_model(cfg, root, training=True)
    lora = lora_shape(cfg)

    def train_group(name: str, records: list[UserRecord]) -> list[LoraRun]:
        return oppu.train_users(model, tokenizer, targets, lora, records, cfg.oppu, seed=cfg.train_seed, progress=True)

    def train_task(records: list[UserRecord]) -> list[LoraRun]:
        paths = {r.user_id: checkpoint_path(cfg, root, r) for r in records}
        done = {u: load_finished(p, targets, lora) for u, p in paths.items() if p.is_file()}
        todo = [r for r in records if r.user_id not in done]
        for start in range(0, len(todo), cfg.oppu.parallel_users):
            group = todo[start:start + cfg.oppu.parallel_users]
            name = f"{group[0].task}-{group[0].user_id}-{group[-1].user_id}"
            for record, trained in zip(group, rec.step(train_group, "train-users", f"oppu-{name}", name, group)):
                save_finished(paths[record.user_id], trained)
                done[record.user_id] = trained
        return [done[r.user_id] for r in records]

    for dataset, task in cfg.data.tasks():
        records = read_prepared(paths.prepared(dataset, task))
        users = evaluated_users(read_json(paths.split(dataset, task)), cfg.evaluate.splits)
        stats = oppu.oppu_task(records, users, train_task, paths.oppu_adapters(dataset, task))
        log.info("%s/%s: %d users, %.2f s per user", dataset, task, stats["users"], stats["seconds_per_user"])
        rec.log_metrics(stats, prefix=f"{dataset}/{task}/")
