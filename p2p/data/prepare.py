"""Which loader reads which dataset, and where its raw files sit under the raw-data dir.

The layout is the one `p2p data fetch` and `p2p data synth` write (see p2p/data/catalog.py); for the Hugging Face
datasets, which a user exports by hand, it is the layout the catalog's instructions describe.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path

from p2p.data.records import UserRecord
from p2p.data.sources.empathetic import load_empathetic
from p2p.data.sources.lamp import load_lamp
from p2p.data.sources.longlamp import load_longlamp
from p2p.data.sources.p2p_data import load_p2p_data
from p2p.data.sources.personal_reddit import load_personal_reddit
from p2p.io import check_manifest

log = logging.getLogger(__name__)

#: dataset -> the tasks it can provide (the first one for single-task datasets).
DATASET_TASKS = {
    "synth": ("LaMP-2M", "LaMP-3", "LaMP-7"),
    "lamp": ("LaMP-1", "LaMP-2N", "LaMP-2M", "LaMP-3", "LaMP-4", "LaMP-5", "LaMP-7"),
    "longlamp": ("LongLaMP-1", "LongLaMP-2", "LongLaMP-3"),
    "p2p_data": ("LaMP-1", "LaMP-2N", "LaMP-2M", "LaMP-3", "LaMP-4", "LaMP-5", "LaMP-7",
                 "LongLaMP-1", "LongLaMP-2", "LongLaMP-3", "PersonalReddit", "EmpatheticConv"),
    "personal_reddit": ("PersonalReddit",),
    "empathetic_conversations": ("EmpatheticConv",),
}


def load_source(dataset: str, task: str, raw_dir: str | os.PathLike) -> list[UserRecord]:
    """Load one task of one dataset from `raw_dir` as canonical records.

    Layout: `synth/<TASK>/`, `lamp/<TASK>/` (official questions/outputs JSON), `longlamp/<TASK>/` (JSON/JSONL
    exports), `p2p_data/<TASK>.jsonl` (one processed file per task), `personal_reddit/synthetic_dataset.jsonl`,
    `empathetic_conversations/` (the WASSA TSVs + articles CSV). A directory read that holds a manifest.json (the
    synthetic benchmark's do) must hold exactly the files it lists, with their sha256; this is checked after
    loading, so a broken record is still named precisely.
    """
    if dataset not in DATASET_TASKS:
        raise ValueError(f"unknown dataset {dataset!r}; expected one of {', '.join(DATASET_TASKS)}")
    if task not in DATASET_TASKS[dataset]:
        raise ValueError(f"dataset {dataset!r} has no task {task!r}; it has {', '.join(DATASET_TASKS[dataset])}")
    raw = Path(raw_dir) / dataset
    if not raw.exists():
        raise FileNotFoundError(f"{raw}: no raw data; run the fetch stage (`p2p data fetch {dataset}`) first")
    per_task = dataset in ("synth", "lamp", "longlamp")
    if dataset in ("synth", "lamp"):
        records = load_lamp(task, raw / task)
    elif dataset == "longlamp":
        records = load_longlamp(task, raw / task)
    elif dataset == "p2p_data":
        records = load_p2p_data(task, raw / f"{task}.jsonl")
    elif dataset == "personal_reddit":
        records = load_personal_reddit(raw / "synthetic_dataset.jsonl")
    else:
        records = load_empathetic(raw)
    check_manifest(raw / task if per_task else raw)
    return records


def hold_out_queries(records: list[UserRecord], queries_per_user: int | None) -> list[UserRecord]:
    """Each user's last `queries_per_user` queries stay queries; the others' gold items become plain history.

    Where every row is both a query and a history item (Personal Reddit, EC), all of a user's items are some query's
    gold, so no stage may show any of them (the leakage rule of p2p.data.sources) and the user has no visible past.
    Keeping only the last N rows as queries (at most all but one, so a user with two rows or more keeps a past)
    turns the other rows into history the profile, the prompts and OPPU may use. Queries whose gold is not a
    history item are capped the same way. None keeps the records as loaded.
    """
    if queries_per_user is None:
        blind = sum(1 for r in records if r.history and all("query_id" in item for item in r.history))
        if blind:
            log.warning("%d of %d users have no visible history: every item is some query's gold answer; set "
                        "data.queries_per_user to keep only the last N queries and show the rest", blind, len(records))
        return records
    out = []
    for record in records:
        shared = any("query_id" in item for item in record.history)
        keep = max(1, min(queries_per_user, len(record.queries) - 1 if shared else len(record.queries)))
        kept = record.queries[-keep:]
        kept_ids = {q.id for q in kept}
        history = [item if item.get("query_id") in kept_ids or "query_id" not in item
                   else {k: v for k, v in item.items() if k != "query_id"} for item in record.history]
        out.append(dataclasses.replace(record, history=history, queries=kept))
    return out
