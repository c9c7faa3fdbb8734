"""Stage `prepare`: each task's raw files -> canonical per-user JSONL (`data.prepared_dir/<dataset>/<task>.jsonl`)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from p2p.config import Config
from p2p.data.prepare import hold_out_queries, keep_answered, load_source, queries_per_source_split, task_location
from p2p.data.records import UserRecord, write_records
from p2p.paths import Paths
from p2p.stages.recorder import Recorder

log = logging.getLogger(__name__)


def run(cfg: Config, root: Path, rec: Recorder) -> None:
    for dataset, task in cfg.data.tasks():
        stats = rec.step(prepare_task, "prepare-task", f"prepare {dataset}/{task}", dataset, task, cfg, root)
        used = ", ".join(f"{key.removeprefix('queries_')} {n}" for key, n in stats.items()
                         if key.startswith("queries_") and key != "queries_without_gold")
        log.info("%s/%s: %d users, %d queries (%s; %d without a gold, left out)", dataset, task, stats["users"],
                 stats["queries"], used or "one split", stats["queries_without_gold"])
        rec.log_metrics(stats, prefix=f"{dataset}/{task}/")


def prepare_task(dataset: str, task: str, cfg: Config, root: Path) -> dict[str, Any]:
    """Load one task of one source, keep the queries with a gold and `data.queries_per_user` of them per user.

    Returns size statistics, with the queries used per source split (`queries_dev`, ...) and those left out for
    want of a gold (`queries_without_gold`): a run uses whichever splits are there.
    """
    paths = Paths(cfg, root)
    records = load_source(dataset, task, paths.raw)
    if not records:
        raise ValueError(f"{paths.raw / dataset}: the raw files hold no user of {task}")
    records, unanswered = keep_answered(records, task_location(dataset, task, paths.raw))
    records = hold_out_queries(records, cfg.data.queries_per_user)
    write_records(paths.prepared(dataset, task), records)
    per_split = queries_per_source_split(records)
    return {**record_stats(records), **{f"queries_{split}": n for split, n in per_split.items()},
            "queries_without_gold": unanswered}


def record_stats(records: list[UserRecord]) -> dict[str, Any]:
    history = np.array([len(r.history) for r in records])
    queries = [q for r in records for q in r.queries]
    return {"users": len(records), "queries": len(queries), "history_items_mean": float(history.mean()),
            "history_items_max": int(history.max()),
            "avg_input_chars": float(np.mean([len(q.input) for q in queries])) if queries else 0.0,
            "avg_output_chars": float(np.mean([len(q.output or "") for q in queries])) if queries else 0.0}
