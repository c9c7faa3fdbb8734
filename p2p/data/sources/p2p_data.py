"""The P2P authors' processed data (Hugging Face `Zhaoxuan/P2P_data`) -> canonical records.

The layout below was INFERRED from the authors' code (their data-processing and dataset-building scripts), not
checked against the real files, which could not be reached from the machines this loader was written on. What the
code reads: JSONL files such as `LaMP/LaMP_processed_movie_data.jsonl` and per-split sets (`*_random_train.jsonl`,
`*_random_test.jsonl`, `*_ood_test.jsonl`), each line an object with
  - `user_id` (several lines may share one);
  - `history`: the user's items, with the task's LaMP/LongLaMP keys (the authors' code also shows variants such as
    `rating` for `overall`, so the task's keys are not enforced here);
  - the query, either as top-level `input` / `output` (optionally `id` or `question_id`), or as a list `query` of
    `{"input", "gold"}` (or `output`) objects;
  - optionally `profile_text`; any other keys are ignored.
Lines are grouped by `user_id`; histories are merged by item identity (`id` when present, else the whole item) and
every query is kept. Queries without an id get `<user_id>-<n>`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from p2p.data.records import Query, UserRecord, check_history_item
from p2p.data.sources import item_identity, require_id, require_key, require_text
from p2p.io import InputError, read_jsonl


@dataclass
class _User:
    user_id: str
    first_line: str
    items: dict[str, dict[str, Any]] = field(default_factory=dict)
    queries: dict[str, Query] = field(default_factory=dict)
    profile_text: str | None = None


def load_p2p_data(task: str, path: str | os.PathLike) -> list[UserRecord]:
    """Read one processed JSONL file and return one record per user, in order of first appearance."""
    path = Path(path)
    users: dict[str, _User] = {}
    for lineno, obj in read_jsonl(path):
        record = f"line {lineno}"
        if not isinstance(obj, dict):
            raise InputError(path, f"expected an object, got {type(obj).__name__}", record=record)
        user_id = require_id(require_key(obj, "user_id", path, record), path, record, "user_id")
        user = users.get(user_id)
        if user is None:
            user = users[user_id] = _User(user_id=user_id, first_line=record)
        _merge_history(user, obj.get("history", []), path, record)
        for query in _queries(obj, user, path, record):
            known = user.queries.get(query.id)
            if known is not None and known != query:
                raise InputError(path, f"query id {query.id} of user {user_id} already seen with other content",
                                 record=record, field="id")
            user.queries[query.id] = query
        if obj.get("profile_text") is not None and user.profile_text is None:
            user.profile_text = _profile_text(obj["profile_text"], path, record)
    if not users:
        raise InputError(path, "empty: the file holds no records (a broken download?)")
    records = []
    for user in users.values():
        if not user.items:
            raise InputError(path, f"user {user.user_id} has no history items in any line (a file without "
                                   "`history`, such as the PersonalReddit/EC sets? use their source loaders)",
                             record=user.first_line, field="history")
        records.append(UserRecord(user_id=user.user_id, task=task, history=list(user.items.values()),
                                  queries=list(user.queries.values()), profile_text=user.profile_text,
                                  meta={"source": "p2p_data", "file": path.name}))
    return records


def _merge_history(user: _User, history: Any, path: Path, record: str) -> None:
    if not isinstance(history, list):
        raise InputError(path, f"expected a list, got {type(history).__name__}", record=record, field="history")
    for i, item in enumerate(history):
        check_history_item(item, path, record, f"history[{i}]")
        user.items.setdefault(item_identity(item), dict(item))


def _queries(obj: dict, user: _User, path: Path, record: str) -> list[Query]:
    if "query" in obj:
        entries = obj["query"] if isinstance(obj["query"], list) else [obj["query"]]
        prefix = "query"
    elif "input" in obj:
        entries, prefix = [obj], None
    else:
        raise InputError(path, "missing: a line needs the query as `input`/`output` or as a `query` list",
                         record=record, field="input")
    queries = []
    for i, entry in enumerate(entries):
        where = f"{prefix}[{i}]." if prefix else ""
        if not isinstance(entry, dict):
            raise InputError(path, f"expected an object, got {type(entry).__name__}", record=record,
                             field=f"{prefix}[{i}]")
        text = require_text(require_key(entry, "input", path, record, f"{where}input"), path, record, f"{where}input")
        gold_key = "gold" if "gold" in entry else "output"
        output = entry.get(gold_key)
        output = None if output is None else require_text(output, path, record, f"{where}{gold_key}")
        id_key = next((k for k in ("id", "question_id") if k in entry), None)
        qid = (require_id(entry[id_key], path, record, f"{where}{id_key}") if id_key
               else f"{user.user_id}-{len(user.queries) + len(queries)}")
        queries.append(Query(id=qid, input=text, output=output))
    return queries


def _profile_text(value: Any, path: Path, record: str) -> str:
    """The authors' code joins a list-valued profile_text with spaces; do the same."""
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        value = " ".join(value)
    return require_text(value, path, record, "profile_text")
