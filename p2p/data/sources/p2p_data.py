"""The P2P authors' processed data (Hugging Face `Zhaoxuan/P2P_data`) -> canonical records.

Two forms are read:

- **The published release** (checked against the dataset's file tree and the authors' `data_p13n/
  create_hf_datasets.py`, which wrote it): `datasets.save_to_disk` folders, e.g. `LaMP/news_headline_train/`,
  `..._random_test/`, `..._ood_test/` (and `LongLaMP/<task>_<split>/`, `EC/train/`, ...), each holding
  `data-00000-of-00001.arrow` (an Arrow IPC stream), `dataset_info.json` and `state.json`. One row per sample:
  `user_id`, `question_id`, `input`, `output`, `profile_text` (a generated summary, or ""), `profile_all_history`
  (the user's history rendered as text: "Recent User Activity:\n" + items joined by " || ", each item
  "Display Name: value | ..." with values cut at 800 characters), `profile_retrieval_k1/k2/k4` and, for tagging,
  `history_stat`. The rendered history is parsed back into items with the task's LaMP/LongLaMP field names
  (`DISPLAY_FIELDS`). Rows the authors made from a history item to pad small training sets (`question_id`
  containing `_history_`) are skipped: their gold is one of the user's own history items, and
  `train.min_samples_per_task` pads the same way without that leak. Point the loader at a task's split folders,
  copied into one folder (`p2p_data/<TASK>/`), or at one of them.
- **JSONL** (the layout the authors' processing scripts read, inferred from their code): one object per line with
  `user_id`, `history` (the user's items, with the task's keys, not enforced here: the code shows variants such as
  `rating` for `overall`), and the query as top-level `input` / `output` (optionally `id` or `question_id`) or as a
  list `query` of `{"input", "gold"}` (or `output`) objects; optionally `profile_text`.

Rows are grouped by `user_id`; histories are merged by item identity (`id` when present, else the whole item) and
every query is kept. Queries without an id get `<user_id>-<n>`.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from p2p.data.records import Query, UserRecord, check_history_item
from p2p.data.sources import item_identity, require_id, require_key, require_text
from p2p.io import InputError, read_jsonl

#: Per task, the display names the authors' release renders history items with (their TASK_KEY_MAPPINGS) -> the
#: LaMP / LongLaMP field each came from. Their LongLaMP-3 items leave out the review text itself.
DISPLAY_FIELDS: dict[str, dict[str, str]] = {
    "LaMP-1": {"Paper Title": "title", "Citation": "citation"},
    "LaMP-2N": {"Article": "text", "Category": "category"},
    "LaMP-2M": {"Description": "description", "Tag": "tag"},
    "LaMP-3": {"Review": "text", "Score": "score"},
    "LaMP-4": {"Article": "text", "Headline": "title"},
    "LaMP-5": {"Abstract": "abstract", "Title": "title"},
    "LaMP-7": {"Tweet": "text"},
    "LongLaMP-1": {"Paper Title": "title", "Abstract": "abstract"},
    "LongLaMP-2": {"Topic": "summary", "Post": "content"},
    "LongLaMP-3": {"Product Description": "description", "Rating": "overall", "Review Summary": "summary"},
}
_HISTORY_PREFIX = "Recent User Activity:"
#: Marks the rows the authors made from a history item (`lamp_<task>_<user>_history_<i>`), skipped (module doc).
_FROM_HISTORY = "_history_"
ARROW_FILE_GLOB = "*.arrow"


@dataclass
class _User:
    user_id: str
    first_seen: tuple[Path, str]  # (file, record) of the user's first row, for errors about the user as a whole
    items: dict[str, dict[str, Any]] = field(default_factory=dict)
    queries: dict[str, Query] = field(default_factory=dict)
    profile_text: str | None = None


def load_p2p_data(task: str, path: str | os.PathLike) -> list[UserRecord]:
    """Read one processed JSONL file, or the release's save_to_disk folder(s) under `path`; one record per user,
    in order of first appearance."""
    path = Path(path)
    users: dict[str, _User] = {}
    for where, record, obj in _rows(path):
        if not isinstance(obj, dict):
            raise InputError(where, f"expected an object, got {type(obj).__name__}", record=record)
        if _FROM_HISTORY in str(obj.get("question_id", "")):
            continue
        user_id = require_id(require_key(obj, "user_id", where, record), where, record, "user_id")
        user = users.get(user_id)
        if user is None:
            user = users[user_id] = _User(user_id=user_id, first_seen=(where, record))
        if "history" in obj or "profile_all_history" not in obj:
            _merge_history(user, obj.get("history", []), where, record)
        else:
            _merge_history(user, _rendered_items(task, obj["profile_all_history"], where, record), where, record)
        for query in _queries(obj, user, where, record):
            known = user.queries.get(query.id)
            if known is not None and known != query:
                raise InputError(where, f"query id {query.id} of user {user_id} already seen with other content",
                                 record=record, field="id")
            user.queries[query.id] = query
        if obj.get("profile_text") and user.profile_text is None:
            user.profile_text = _profile_text(obj["profile_text"], where, record)
    if not users:
        raise InputError(path, "empty: no records (a broken download?)")
    records = []
    for user in users.values():
        if not user.items:
            where, record = user.first_seen
            raise InputError(where, f"user {user.user_id} has no history items in any row (a set without history, "
                                    f"such as PersonalReddit/EC? use their source loaders)", record=record,
                             field="history")
        records.append(UserRecord(user_id=user.user_id, task=task, history=list(user.items.values()),
                                  queries=list(user.queries.values()), profile_text=user.profile_text,
                                  meta={"source": "p2p_data", "file": path.name}))
    return records


def _rows(path: Path) -> Iterator[tuple[Path, str, Any]]:
    """(file, record name, row) of a JSONL file, or of every save_to_disk folder at or under `path`, in name order."""
    if not path.is_dir():
        for lineno, obj in read_jsonl(path):
            yield path, f"line {lineno}", obj
        return
    files = sorted(path.rglob(ARROW_FILE_GLOB))
    if not files:
        raise InputError(path, "no .arrow files here: expected the release's save_to_disk folders (e.g. "
                               "news_headline_train/ with data-00000-of-00001.arrow, dataset_info.json, state.json)")
    for file in files:
        for index, row in enumerate(read_arrow_rows(file)):
            yield file, f"row {index}", row


def read_arrow_rows(path: Path) -> list[dict[str, Any]]:
    """The rows of one Arrow IPC stream file (what `datasets.save_to_disk` writes), as dicts; a file that is not one
    is an InputError."""
    import pyarrow as pa  # a dependency of mlflow; imported here so JSONL users never load it

    try:
        with pa.memory_map(str(path)) as source:
            table = pa.ipc.open_stream(source).read_all()
    except (pa.ArrowInvalid, OSError) as err:
        raise InputError(path, f"not an Arrow IPC stream ({str(err).splitlines()[0]})") from None
    return table.to_pylist()


def _rendered_items(task: str, text: Any, where: Path, record: str) -> list[dict[str, Any]]:
    """History items back from the release's `profile_all_history` text ("Display: value | ..." joined by " || ")."""
    text = require_text(text, where, record, "profile_all_history").strip()
    text = text.removeprefix(_HISTORY_PREFIX).strip()
    fields = DISPLAY_FIELDS.get(task, {})
    items = []
    for chunk in filter(None, (c.strip() for c in text.split(" || "))):
        item: dict[str, Any] = {}
        last = None
        for part in chunk.split(" | "):
            name, sep, value = part.partition(": ")
            if sep and name in fields:
                last = fields[name]
                item[last] = value
            elif last is not None:  # a value that itself held " | "
                item[last] += " | " + part
            else:
                item.setdefault("text", "")
                item["text"] = f"{item['text']} | {part}" if item["text"] else part
        items.append(item)
    return items


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
