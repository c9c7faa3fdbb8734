"""Official LaMP files (and our synthetic benchmark, written in the same format) -> canonical records.

A task directory holds `{train,dev,test}_questions.json` (`[{"id", "input", "profile": [{"id", ...}]}]`) and the
matching `{split}_outputs.json` (`{"task": "LaMP_N", "golds": [{"id", "output"}]}`) where golds are published (test
golds are withheld, so test queries get output None). LaMP has no user ids: every question carries its user's
profile, so questions are grouped into users by an optional `user_id` key (our synthetic data and the authors'
processed data have one) or else by the set of profile item ids (same items = same user). A user's history is the
union of the profile items of their questions, deduplicated by item id. Task ids are the canonical ones
(`LaMP-2M`, ...); the caller resolves official names such as `LaMP_2`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from p2p.data.records import Query, UserRecord
from p2p.data.sources import require_id, require_items, require_key, require_text, stable_id
from p2p.io import InputError, read_json

SPLITS = ("train", "dev", "test")
_TEXT = (str,)
#: Profile item fields each task needs (beyond `id`), with the types allowed; other keys (e.g. `date`) are kept.
PROFILE_FIELDS: dict[str, dict[str, tuple[type, ...]]] = {
    "LaMP-1": {"title": _TEXT, "abstract": _TEXT},
    "LaMP-2N": {"title": _TEXT, "text": _TEXT, "category": _TEXT},
    "LaMP-2M": {"description": _TEXT, "tag": _TEXT},
    "LaMP-3": {"text": _TEXT, "score": (str, int, float)},
    "LaMP-4": {"title": _TEXT, "text": _TEXT},
    "LaMP-5": {"title": _TEXT, "abstract": _TEXT},
    "LaMP-7": {"text": _TEXT},
}
LAMP_TASKS = tuple(PROFILE_FIELDS)


@dataclass
class _Question:
    id: str
    input: str
    user_key: tuple
    profile: list[dict[str, Any]]


@dataclass
class _User:
    user_id: str
    items: dict[str, dict[str, Any]] = field(default_factory=dict)  # item id -> item, first-seen order
    item_origin: dict[str, str] = field(default_factory=dict)  # item id -> "file, question id" for conflict errors
    queries: list[Query] = field(default_factory=list)
    query_splits: dict[str, str] = field(default_factory=dict)


def load_lamp(task: str, task_dir: str | os.PathLike) -> list[UserRecord]:
    """Read every split present in `task_dir` and return one record per user, in order of first appearance."""
    if task not in PROFILE_FIELDS:
        raise ValueError(f"unknown LaMP task {task!r}; expected one of {', '.join(LAMP_TASKS)}")
    task_dir = Path(task_dir)
    # Present = anything at the name (a broken link or a directory too), so reading it says what is wrong with it.
    present = [split for split in SPLITS if os.path.lexists(task_dir / f"{split}_questions.json")]
    for split in SPLITS:
        outputs = task_dir / f"{split}_outputs.json"
        if os.path.lexists(outputs) and split not in present:
            raise InputError(outputs, f"golds without questions: {split}_questions.json is missing")
    if not present:
        raise InputError(task_dir, "no LaMP questions file here (expected train_questions.json, dev_questions.json "
                                   "or test_questions.json)")
    users: dict[tuple, _User] = {}
    query_files: dict[str, Path] = {}
    for split in present:
        questions_path = task_dir / f"{split}_questions.json"
        questions = _read_questions(questions_path, task)
        outputs_path = task_dir / f"{split}_outputs.json"
        golds = _read_golds(outputs_path, questions_path, questions) if os.path.lexists(outputs_path) else {}
        for question in questions:
            if question.id in query_files:
                raise InputError(questions_path, f"question id also used in {query_files[question.id].name}",
                                 record=f"id {question.id}", field="id")
            query_files[question.id] = questions_path
            user = users.get(question.user_key)
            if user is None:
                user = users[question.user_key] = _User(user_id=_user_id(question.user_key))
            _add_profile(user, question, questions_path)
            user.queries.append(Query(id=question.id, input=question.input, output=golds.get(question.id)))
            user.query_splits[question.id] = split
    return [UserRecord(user_id=u.user_id, task=task, history=list(u.items.values()), queries=u.queries,
                       meta={"source": "lamp", "query_splits": u.query_splits}) for u in users.values()]


def _user_id(user_key: tuple) -> str:
    kind, value = user_key
    return value if kind == "user_id" else stable_id("lamp-", list(value))


def _read_questions(path: Path, task: str) -> list[_Question]:
    data = read_json(path)
    if not isinstance(data, list):
        raise InputError(path, f"expected a JSON array of questions, got {type(data).__name__}")
    if not data:
        raise InputError(path, "empty: the file holds no questions (a broken download?)")
    questions, seen = [], set()
    for index, obj in enumerate(data):
        record = f"item {index}"
        if not isinstance(obj, dict):
            raise InputError(path, f"expected an object, got {type(obj).__name__}", record=record)
        qid = require_id(require_key(obj, "id", path, record), path, record, "id")
        record = f"id {qid}"
        if qid in seen:
            raise InputError(path, "duplicate question id", record=record, field="id")
        seen.add(qid)
        text = require_text(require_key(obj, "input", path, record), path, record, "input")
        items = require_items(obj, "profile", PROFILE_FIELDS[task], path, record, need_id=True)
        if "user_id" in obj:
            user_key = ("user_id", require_id(obj["user_id"], path, record, "user_id"))
        else:
            user_key = ("profile", tuple(sorted({str(item["id"]) for item in items})))
        questions.append(_Question(id=qid, input=text, user_key=user_key, profile=items))
    return questions


def read_lamp_outputs(path: str | os.PathLike) -> tuple[str | None, dict[str, str]]:
    """Read an official outputs file (`{"task", "golds": [{"id", "output"}]}`; predictions use the same shape).

    Returns the file's `task` name (None when absent) and {id: output}; every malformed entry, and a repeated id,
    is an InputError naming the entry and field.
    """
    path = Path(path)
    data = read_json(path)
    if not isinstance(data, dict):
        raise InputError(path, f"expected an object with 'task' and 'golds', got {type(data).__name__}")
    entries = require_key(data, "golds", path, None)
    if not isinstance(entries, list):
        raise InputError(path, f"expected a list, got {type(entries).__name__}", field="golds")
    name = data.get("task")
    if name is not None and not isinstance(name, str):
        raise InputError(path, f"expected a string, got {type(name).__name__}", field="task")
    outputs: dict[str, str] = {}
    first_seen: dict[str, int] = {}
    for i, entry in enumerate(entries):
        record, field_name = f"item {i}", f"golds[{i}]"
        if not isinstance(entry, dict):
            raise InputError(path, f"expected an object with 'id' and 'output', got {type(entry).__name__}",
                             record=record, field=field_name)
        entry_id = entry.get("id")
        if entry_id is None:
            raise InputError(path, "missing", record=record, field=f"{field_name}.id")
        if isinstance(entry_id, bool) or not isinstance(entry_id, (str, int)):
            raise InputError(path, f"expected a string, got {type(entry_id).__name__}", record=record,
                             field=f"{field_name}.id")
        entry_id = str(entry_id)
        if entry_id in first_seen:
            raise InputError(path, f"duplicate id (first at item {first_seen[entry_id]})", record=f"id {entry_id}",
                             field=f"{field_name}.id")
        first_seen[entry_id] = i
        output = require_key(entry, "output", path, f"id {entry_id}", f"{field_name}.output")
        outputs[entry_id] = require_text(output, path, f"id {entry_id}", f"{field_name}.output")
    return name, outputs


def _read_golds(path: Path, questions_path: Path, questions: list[_Question]) -> dict[str, str]:
    """Gold outputs by question id; every gold needs its question and every question its gold."""
    _, golds = read_lamp_outputs(path)
    question_ids = {q.id for q in questions}
    for gold_id in golds:
        if gold_id not in question_ids:
            raise InputError(path, f"gold without a question in {questions_path.name}", record=f"id {gold_id}",
                             field="id")
    for question in questions:
        if question.id not in golds:
            raise InputError(path, f"no gold for this question of {questions_path.name}", record=f"id {question.id}")
    return golds


def _add_profile(user: _User, question: _Question, path: Path) -> None:
    """Merge a question's profile into its user's history; one item id must always mean the same item."""
    for i, item in enumerate(question.profile):
        item_id = str(item["id"])
        known = user.items.get(item_id)
        if known is None:
            user.items[item_id] = item
            user.item_origin[item_id] = f"{path.name}, question id {question.id}"
        elif known != item:
            raise InputError(path, f"profile item id {item_id} differs from the item with that id in "
                                   f"{user.item_origin[item_id]}", record=f"id {question.id}", field=f"profile[{i}]")
