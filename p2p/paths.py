"""Every path of the pipeline, computed from params, and the per-task inputs the later stages load.

`Paths(cfg, root)` is the one place that knows where a stage reads and writes: no other module builds a pipeline
path. dvc.yaml lists the same folders as stage outputs (docs/architecture.md §3).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from p2p.config import Config
from p2p.data.records import UserRecord, read_records
from p2p.io import read_json, read_jsonl
from p2p.methods import CONFIGURABLE

#: Where the caches (models, summaries, embeddings, checkpoints, judge) live when not under the project root.
CACHE_ROOT_ENV = "P2P_CACHE_ROOT"


def shared_root(root: Path) -> Path:
    """Where the caches and a relative MLflow store live: $P2P_CACHE_ROOT, else the repository DVC runs in ($DVC_ROOT:
    a queued `dvc exp run` works in a temporary copy, and DVC points this at the project it came from), else `root`.
    So every experiment of `make paper` shares the project's caches and MLflow store."""
    return Path(os.environ.get(CACHE_ROOT_ENV) or os.environ.get("DVC_ROOT") or root)


@dataclass(frozen=True)
class Paths:
    cfg: Config
    root: Path

    def _at(self, path: Path) -> Path:
        return self.root / path

    # --- data, per task -------------------------------------------------------------------------------------------

    @property
    def raw(self) -> Path:
        return self._at(self.cfg.data.raw_dir)

    def synth_task(self, task: str) -> Path:
        """The generated benchmark's files of one task (and its planted preferences)."""
        return self.raw / "synth" / task

    def prepared(self, dataset: str, task: str) -> Path:
        return self._at(self.cfg.data.prepared_dir) / dataset / f"{task}.jsonl"

    def summaries(self, dataset: str, task: str) -> Path:
        return self._at(self.cfg.summarize.dir) / dataset / f"{task}.jsonl"

    def embeddings(self, dataset: str, task: str) -> Path:
        return self._at(self.cfg.embed.dir) / dataset / f"{task}.npz"

    def embedded_texts(self, dataset: str, task: str) -> Path:
        return self.embeddings(dataset, task).with_suffix(".texts.jsonl")

    def split(self, dataset: str, task: str) -> Path:
        return self._at(self.cfg.split.dir) / dataset / f"{task}.json"

    def split_report(self, dataset: str, task: str) -> Path:
        return self.split(dataset, task).with_suffix(".report.json")

    # --- trained models ------------------------------------------------------------------------------------------

    @property
    def hypernetwork(self) -> Path:
        return self._at(self.cfg.train.dir)

    @property
    def checkpoints(self) -> Path:
        """Resumable training state of the train, mt_lora and oppu stages (outside every DVC output)."""
        return self._cached(self.cfg.train.checkpoints)

    @property
    def mt_lora(self) -> Path:
        return self._at(self.cfg.mt_lora.dir)

    def mt_lora_checkpoint(self, key: str) -> Path:
        return self.checkpoints / f"mt-lora-{key}.pt"

    def oppu_adapters(self, dataset: str, task: str) -> Path:
        """The task's OPPU adapters stacked in user order; `.json` beside it holds users, seconds and steps."""
        return self._at(self.cfg.oppu.dir) / dataset / f"{task}.safetensors"

    def oppu_info(self, dataset: str, task: str) -> Path:
        return self.oppu_adapters(dataset, task).with_suffix(".json")

    def oppu_checkpoint(self, task: str, user_id: str, key: str) -> Path:
        return self.checkpoints / "oppu" / task / f"{user_id}-{key}.pt"

    # --- evaluation and judge -------------------------------------------------------------------------------------

    def method_eval(self, method: str) -> Path:
        """One evaluated method's folder (its own DVC stage's output); `golds` and the reference rules (the
        aggregating evaluate stage's) live under `reference/`."""
        where = method if method in CONFIGURABLE else f"reference/{method}"
        return self._at(self.cfg.evaluate.dir) / where

    def predictions(self, split: str, dataset: str, task: str, method: str) -> Path:
        """A method's answers (or `golds`) in the official LaMP format."""
        return self.method_eval(method) / split / dataset / f"{task}.json"

    def method_run(self, split: str, dataset: str, task: str, method: str) -> Path:
        """Beside a method's predictions: its seconds and choice-scored labels (what scoring needs besides)."""
        return self.predictions(split, dataset, task, method).with_suffix(".run.json")

    @property
    def eval(self) -> Path:
        return self._at(self.cfg.evaluate.dir)

    @property
    def judge(self) -> Path:
        return self._at(self.cfg.judge.dir)

    def judge_scores(self, split: str, dataset: str, task: str, method: str) -> Path:
        return self.judge / split / dataset / task / f"{method}.jsonl"

    # --- reports, caches ------------------------------------------------------------------------------------------

    @property
    def reports(self) -> Path:
        return self._at(self.cfg.report.dir)

    def report(self, name: str) -> Path:
        """A stage's report folder: `splits`, `p2p`, `eval`, `judge`; `tables`, `figures` of the report stage."""
        return self.reports / name

    @property
    def adapter_seconds(self) -> Path:
        """The train stage's seconds per test user's generated adapter (Fig. 4's P2P side)."""
        return self.report("p2p") / "adapter_seconds.json"

    def _cached(self, path: Path) -> Path:
        return shared_root(self.root) / path

    @property
    def model_cache(self) -> Path:
        return self._cached(self.cfg.model.cache_dir)

    def cache(self, path: Path) -> Path:
        """One of the caches params names (`summarize.cache`, `embed.cache`, `judge.cache`, ...)."""
        return self._cached(path)

    # --- the writer lock (p2p/lock.py) ----------------------------------------------------------------------------

    @property
    def lock(self) -> Path:
        """What a command that writes pipeline outputs locks: DVC's repository lock in a DVC project (so it and
        `dvc repro` exclude each other), else `.p2p.lock` at the root."""
        dvc = self.root / ".dvc"
        return dvc / "tmp" / "lock" if dvc.is_dir() else self.root / ".p2p.lock"

    @property
    def dvc_rwlock(self) -> Path | None:
        """Where DVC lists the outputs of the stage it is running (with its PID), in a DVC project."""
        dvc = self.root / ".dvc"
        return dvc / "tmp" / "rwlock" if dvc.is_dir() else None


# --- what the later stages load per task ----------------------------------------------------------------------------


def read_prepared(path: Path) -> list[UserRecord]:
    return list(read_records(path))


def read_summaries(path: Path) -> dict[str, str]:
    """user id -> LLM summary, from the summarize stage's JSONL."""
    return {row["user_id"]: row["summary"] for _, row in read_jsonl(path)}


def query_embeddings(path: Path) -> dict[str, np.ndarray]:
    """query id -> profile embedding, from the embed stage's <task>.npz."""
    with np.load(path, allow_pickle=False) as data:
        return dict(zip(data["query_ids"].tolist(), data["queries"].astype(np.float32)))


def user_embeddings(path: Path) -> dict[str, np.ndarray]:
    """user id -> user-level profile embedding, from the embed stage's <task>.npz."""
    with np.load(path, allow_pickle=False) as data:
        return dict(zip(data["user_ids"].tolist(), data["users"].astype(np.float32)))


@dataclass
class TaskData:
    """One task's prepared users, their profile embeddings and their split: what training and evaluation read."""

    dataset: str
    task: str
    records: list[UserRecord]
    queries: dict[str, np.ndarray]  # query id -> profile embedding
    users: dict[str, np.ndarray]  # user id -> user-level profile embedding
    split: dict[str, Any]


def load_task_data(paths: Paths, dataset: str, task: str, embeddings: bool = True) -> TaskData:
    """`embeddings`: read the embed stage's profile embeddings; without them `queries` and `users` are empty, and
    the stage needs no embed output (only P2P reads them: an ablation of its profile leaves the others' stages be)."""
    path = paths.embeddings(dataset, task)
    return TaskData(dataset, task, read_prepared(paths.prepared(dataset, task)),
                    query_embeddings(path) if embeddings else {}, user_embeddings(path) if embeddings else {},
                    read_json(paths.split(dataset, task)))
