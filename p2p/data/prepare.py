"""Which loader reads which dataset, and where its raw files sit under the raw-data dir.

The layout is the one `p2p data fetch` and `p2p data synth` write (see p2p/data/catalog.py); for the Hugging Face
datasets, which a user exports by hand, it is the layout the catalog's instructions describe.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path

from p2p.data.catalog import CATALOG, keeping_steps
from p2p.data.records import UserRecord
from p2p.data.sources.empathetic import load_empathetic
from p2p.data.sources.lamp import SPLITS, load_lamp
from p2p.data.sources.longlamp import load_longlamp
from p2p.data.sources.p2p_data import load_p2p_data
from p2p.data.sources.personal_reddit import load_personal_reddit
from p2p.io import InputError, check_manifest

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
    exports), `p2p_data/<TASK>/` (the authors' release: save_to_disk split folders) or `p2p_data/<TASK>.jsonl`,
    `personal_reddit/synthetic_dataset.jsonl`, `empathetic_conversations/` (the WASSA TSVs + articles CSV).
    Missing files are an InputError that says how to get them and keep them (`missing_data`). A directory read
    that holds a manifest.json (the synthetic benchmark's do) must hold exactly the files it lists, with their
    sha256; this is checked after loading, so a broken record is still named precisely.
    """
    if dataset not in DATASET_TASKS:
        raise ValueError(f"unknown dataset {dataset!r}; expected one of {', '.join(DATASET_TASKS)}")
    if task not in DATASET_TASKS[dataset]:
        raise ValueError(f"dataset {dataset!r} has no task {task!r}; it has {', '.join(DATASET_TASKS[dataset])}")
    raw = Path(raw_dir) / dataset
    missing = missing_data(dataset, task, Path(raw_dir))
    if missing:
        raise InputError(*missing)
    per_task = dataset in ("synth", "lamp", "longlamp")
    if dataset in ("synth", "lamp"):
        records = load_lamp(task, raw / task)
    elif dataset == "longlamp":
        records = load_longlamp(task, raw / task)
    elif dataset == "p2p_data":
        records = load_p2p_data(task, task_location(dataset, task, Path(raw_dir)))
    elif dataset == "personal_reddit":
        records = load_personal_reddit(raw / "synthetic_dataset.jsonl")
    else:
        records = load_empathetic(raw)
    check_manifest(raw / task if per_task else raw)
    return records


def task_location(dataset: str, task: str, raw_dir: Path) -> Path:
    """Where the loader of `dataset` reads `task`: a task folder, a file, or the dataset's folder (the authors'
    processed data: the release's split folders in `p2p_data/<TASK>/`, else a JSONL file `p2p_data/<TASK>.jsonl`)."""
    raw = raw_dir / dataset
    if dataset == "p2p_data":
        return raw / task if (raw / task).is_dir() else raw / f"{task}.jsonl"
    return {"lamp": raw / task, "longlamp": raw / task, "synth": raw / task,
            "personal_reddit": raw / "synthetic_dataset.jsonl"}.get(dataset, raw)


def missing_data(dataset: str, task: str, raw_dir: Path) -> tuple[Path, str] | None:
    """(where, what to do) when nothing of `task` stands where its loader reads, else None.

    The embedded benchmark is the fetch stage's to make; a real dataset is the user's input, fetched (or saved by
    hand) and then tracked with `dvc add`, so the message walks through exactly that.
    """
    where = task_location(dataset, task, raw_dir)
    present = os.path.lexists(where)
    if dataset in ("lamp", "synth") and present and where.is_dir():  # a task folder needs a questions file
        present = any(os.path.lexists(where / f"{split}_questions.json") for split in SPLITS)
    if present:
        return None
    if dataset == "synth":
        return where, "not generated; run the fetch stage (`dvc repro fetch`)"
    if CATALOG[dataset].files:
        extra = f" --task {task}" if dataset == "lamp" else ""
        how = (f"get it with `p2p data fetch {dataset}{extra}` (offline, that lists each URL and the path to save "
               f"it at)")
    else:
        how = f"`p2p data fetch {dataset}` says how to get it from Hugging Face"
    return where, f"no {task} data here; {how}. {keeping_steps(dataset, raw_dir)}"


def keep_answered(records: list[UserRecord], where: Path) -> tuple[list[UserRecord], int]:
    """The queries that have a gold output (and the users left with one), and how many were dropped.

    Training and evaluation need every query's gold, and LaMP withholds its test golds, so a test split beside
    dev or train is read but its queries, and so its users (LaMP's users never span splits), are left out. A task
    where no query has a gold is an InputError: there is nothing to train or score on.
    """
    kept, dropped = [], 0
    for record in records:
        answered = [q for q in record.queries if q.output is not None]
        dropped += len(record.queries) - len(answered)
        if answered:
            splits = record.meta.get("query_splits")
            meta = record.meta if splits is None else {**record.meta, "query_splits": {
                q.id: splits[q.id] for q in answered if q.id in splits}}
            kept.append(dataclasses.replace(record, queries=answered, meta=meta))
    if not kept:
        raise InputError(where, f"no query has a gold output ({dropped} without): training and evaluation need one "
                                f"per query. LaMP golds come in the *_outputs.json files and the test split's are "
                                f"withheld, so a LaMP task needs the dev or the train split's questions with "
                                f"their outputs")
    return kept, dropped


def queries_per_source_split(records: list[UserRecord]) -> dict[str, int]:
    """Queries per source split (train, dev, test; LongLaMP's val), for sources that record one; else {}."""
    counts: dict[str, int] = {}
    for record in records:
        for split in record.meta.get("query_splits", {}).values():
            counts[split] = counts.get(split, 0) + 1
    return dict(sorted(counts.items()))


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
