"""Personal Reddit, synthetic release (eth-sri/llmprivacy `synthetic_dataset.jsonl`) -> canonical records.

Each row is one synthetic persona answering one question. A user is a distinct `personality` dict (id: a hash of
its sorted JSON, so it survives reordering); the persona rendered as "key: value; ..." is the profile text. Every
row is both a query (input `question_asked`, gold `response`) and a history item `{question, response, query_id}`
of its user: the `query_id` lets later stages drop a query's own answer from what the model sees (the rule is in
`p2p.data.sources`). The study's `feature`, `hardness` and `guess*` fields are not used.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from p2p.data.records import Query, UserRecord
from p2p.data.sources import require_key, require_text, stable_id
from p2p.io import InputError, read_jsonl

TASK = "PersonalReddit"


def load_personal_reddit(path: str | os.PathLike) -> list[UserRecord]:
    """One record per persona, in order of first appearance; rows keep their file order within a user."""
    path = Path(path)
    users: dict[str, UserRecord] = {}
    query_ids: dict[str, str] = {}
    for lineno, row in read_jsonl(path):
        record = f"line {lineno}"
        if not isinstance(row, dict):
            raise InputError(path, f"expected an object, got {type(row).__name__}", record=record)
        persona = _persona(require_key(row, "personality", path, record), path, record)
        question = require_text(require_key(row, "question_asked", path, record), path, record, "question_asked")
        response = require_text(require_key(row, "response", path, record), path, record, "response")
        user_id = stable_id("pr-", persona)
        qid = stable_id("prq-", [user_id, question, response])
        if qid in query_ids:
            raise InputError(path, f"the same persona, question and response as {query_ids[qid]}", record=record)
        query_ids[qid] = record
        user = users.get(user_id)
        if user is None:
            user = users[user_id] = UserRecord(user_id=user_id, task=TASK, history=[], queries=[],
                                               profile_text=persona_text(persona),
                                               meta={"source": "personal_reddit", "persona": persona})
        user.history.append({"question": question, "response": response, "query_id": qid})
        user.queries.append(Query(id=qid, input=question, output=response))
    if not users:
        raise InputError(path, "empty: the file holds no records (a broken download?)")
    return list(users.values())


def persona_text(persona: dict[str, Any]) -> str:
    """`age: 31; sex: male; ...` in the file's key order (the same for every persona of the release)."""
    return "; ".join(f"{key}: {value}" for key, value in persona.items())


def _persona(value: Any, path: Path, record: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise InputError(path, f"expected an object, got {type(value).__name__}", record=record, field="personality")
    if not value:
        raise InputError(path, "empty persona", record=record, field="personality")
    for key, attr in value.items():
        if isinstance(attr, bool) or not isinstance(attr, (str, int, float)):
            raise InputError(path, f"expected a string or number, got {type(attr).__name__}", record=record,
                             field=f"personality.{key}")
        if isinstance(attr, str):
            require_text(attr, path, record, f"personality.{key}")
    return value
