"""LongLaMP records (Hugging Face `LongLaMP/LongLaMP`) -> canonical records.

Schema of the public release (configs `abstract_generation_user`, `topic_writing_user`, `product_review_user` and
their `_temporal` twins; splits `train`, `val`, `test`), as read by code that loads it: every row has `input` (the
full instruction), `output` (the text to write) and `profile` (the user's earlier items), plus the user's id under a
config-specific key -- `name` (abstract: items `title`, `abstract`, also `id`, `year`), `author` (topic: items
`summary`, `content`), `reviewerId` (review: items `overall`, `summary`, `description`, `reviewText`). Rows of the
same user are merged (a generic `user_id` key works too; without any, the set of profile items is the user), and
where one row's target text sits in another row's profile (the temporal configs) that history item gets the
row's `query_id` -- see the leakage rule in `p2p.data.sources`.

Offline, export the rows as JSON or JSONL and use `load_longlamp(task, path)`; `load_longlamp_hf` needs the optional
`datasets` package and the network.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from p2p.data.records import Query, UserRecord
from p2p.data.sources import (
    item_identity,
    require_id,
    require_items,
    require_key,
    require_text,
    stable_id,
)
from p2p.io import InputError, read_json, read_jsonl

HF_DATASET = "LongLaMP/LongLaMP"
HF_SPLITS = ("train", "val", "test")
_TEXT = (str,)


@dataclass(frozen=True)
class LongLaMPTask:
    config: str  # the `_user` config; `_temporal` is the same data split by time
    user_key: str
    profile_fields: dict[str, tuple[type, ...]]
    target_field: str  # the profile field that holds the kind of text the task writes


LONGLAMP_TASKS: dict[str, LongLaMPTask] = {
    "LongLaMP-1": LongLaMPTask("abstract_generation_user", "name", {"title": _TEXT, "abstract": _TEXT}, "abstract"),
    "LongLaMP-2": LongLaMPTask("topic_writing_user", "author", {"summary": _TEXT, "content": _TEXT}, "content"),
    "LongLaMP-3": LongLaMPTask("product_review_user", "reviewerId",
                               {"overall": (str, int, float), "summary": _TEXT, "description": _TEXT,
                                "reviewText": _TEXT}, "reviewText"),
}


@dataclass
class _User:
    user_id: str
    items: dict[str, dict[str, Any]] = field(default_factory=dict)  # identity -> item, first-seen order
    queries: list[Query] = field(default_factory=list)
    query_splits: dict[str, str] = field(default_factory=dict)


def load_longlamp(task: str, path: str | os.PathLike) -> list[UserRecord]:
    """Read LongLaMP rows from a JSON array or JSONL file, or from every such file in a directory.

    The file's stem (`train`, `val`, `test`) names the split; queries without an `id` get `<split>-<row index>`.
    """
    spec = _spec(task)
    path = Path(path)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix in (".json", ".jsonl") and p.is_file())
        if not files:
            raise InputError(path, "no .json or .jsonl files in this directory")
    else:
        files = [path]
    users: dict[tuple, _User] = {}
    query_ids: set[str] = set()
    for file in files:
        _add_rows(users, query_ids, spec, _read_rows(file), file, file.stem)
    if not users:
        raise InputError(path, "empty: no records (a broken download?)")
    return _records(task, spec, users)


def load_longlamp_hf(task: str, config: str | None = None, split: str = "train") -> list[UserRecord]:
    """Load one split of a LongLaMP config through `datasets.load_dataset` (needs the network)."""
    spec = _spec(task)
    config = config or spec.config
    base = spec.config.removesuffix("_user")
    if config not in (spec.config, f"{base}_temporal"):
        raise ValueError(f"config {config!r} is not {task}; use {spec.config!r} or '{base}_temporal'")
    try:
        import datasets
    except ImportError:
        raise ImportError("loading LongLaMP from Hugging Face needs the `datasets` package: `pip install datasets` "
                          "(or `pip install 'p2p[hf]'`); offline, export the rows as JSONL "
                          "(`ds.to_json('train.jsonl')`) and pass the file to load_longlamp") from None
    rows = datasets.load_dataset(HF_DATASET, config, split=split)
    where = f"hf://datasets/{HF_DATASET}/{config}/{split}"
    users: dict[tuple, _User] = {}
    _add_rows(users, set(), spec, ((f"row {i}", row) for i, row in enumerate(rows)), where, split)
    return _records(task, spec, users)


def _spec(task: str) -> LongLaMPTask:
    if task not in LONGLAMP_TASKS:
        raise ValueError(f"unknown LongLaMP task {task!r}; expected one of {', '.join(LONGLAMP_TASKS)}")
    return LONGLAMP_TASKS[task]


def _read_rows(path: Path) -> Iterable[tuple[str, Any]]:
    if path.suffix == ".jsonl":
        return ((f"line {lineno}", obj) for lineno, obj in read_jsonl(path))
    data = read_json(path)
    if not isinstance(data, list):
        raise InputError(path, f"expected a JSON array of records, got {type(data).__name__}")
    return ((f"item {i}", obj) for i, obj in enumerate(data))


def _add_rows(users: dict[tuple, _User], query_ids: set[str], spec: LongLaMPTask,
              rows: Iterable[tuple[str, Any]], where: str | os.PathLike, split: str) -> None:
    for index, (record, row) in enumerate(rows):
        if not isinstance(row, dict):
            raise InputError(where, f"expected an object, got {type(row).__name__}", record=record)
        qid = require_id(row["id"], where, record, "id") if "id" in row else f"{split}-{index}"
        if qid in query_ids:
            raise InputError(where, f"query id {qid} already used", record=record, field="id")
        query_ids.add(qid)
        text = require_text(require_key(row, "input", where, record), where, record, "input")
        output = row.get("output")
        output = None if output is None else require_text(output, where, record, "output")
        items = require_items(row, "profile", spec.profile_fields, where, record)
        key = _user_key(row, spec, items, where, record)
        user = users.get(key)
        if user is None:
            user = users[key] = _User(user_id=key[1] if key[0] == "user" else stable_id("longlamp-", list(key[1])))
        for item in items:
            user.items.setdefault(item_identity(item), item)
        user.queries.append(Query(id=qid, input=text, output=output))
        user.query_splits[qid] = split


def _user_key(row: dict, spec: LongLaMPTask, items: list[dict], where: str | os.PathLike, record: str) -> tuple:
    for key in (spec.user_key, "user_id"):
        if key in row:
            return ("user", require_id(row[key], where, record, key))
    return ("profile", tuple(sorted({item_identity(item) for item in items})))


def _records(task: str, spec: LongLaMPTask, users: dict[tuple, _User]) -> list[UserRecord]:
    records = []
    for user in users.values():
        history = list(user.items.values())
        _mark_query_items(history, user.queries, spec.target_field)
        records.append(UserRecord(user_id=user.user_id, task=task, history=history, queries=user.queries,
                                  meta={"source": "longlamp", "query_splits": user.query_splits}))
    return records


def _mark_query_items(history: list[dict], queries: list[Query], target_field: str) -> None:
    """Tag each history item whose target text is some query's gold with that query's id (the leakage rule)."""
    by_output = {q.output: q.id for q in queries if q.output}
    for item in history:
        qid = by_output.get(item.get(target_field))
        if qid is not None:
            item["query_id"] = qid
