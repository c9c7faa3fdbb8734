"""Profile texts of one user: the user-level text (for splits) and one text per query (the hypernetwork's input).

Per query: `## User Profile: {summary}[\\n{label histogram}]\\n\\n## User History: {BM25 top-k items}` (§7). The
items come from the user's history minus every item that carries a `query_id` (another query's gold answer: the
leakage rule of p2p/data/sources), ranked by BM25 against the query input. The label histogram (tag, category or
score counts) is added for tasks whose history items carry a label.

`item_profile` is the profile text of a history item asked as a query (the train stage's padding rows): built as a
query's from the rest of the visible history, so it never shows the item, nor counts its label in the histogram.

`profile.variant` builds the texts of the paper's Table 5 ablations instead: the profile section alone
(`summary_only`), the retrieved items alone (`retrieved_only`) or the whole visible history alone
(`full_history_only`); `random` and `shuffled` keep these texts and change the vectors (p2p.profiles.embeddings).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from p2p.data.records import Query, UserRecord
from p2p.profiles.profile_text import HISTORY_HEADER, label_histogram_line, profile_text, user_profile_text
from p2p.profiles.retrieval import bm25_top_k
from p2p.tasks import get_task

VARIANTS = ("full", "summary_only", "retrieved_only", "full_history_only", "random", "shuffled")


@dataclass(frozen=True)
class UserProfiles:
    user_text: str
    query_texts: dict[str, str]  # query id -> profile text for that query


def visible_items(record: UserRecord) -> list[dict[str, Any]]:
    """The history items a profile or a prompt may show: none that is another query's gold, oldest first."""
    return [item for item in record.history if "query_id" not in item]


def histogram_line(record: UserRecord) -> str | None:
    """The label histogram of the visible history, for tasks whose items carry a label; else None."""
    spec = get_task(record.task)
    if spec.label_field is None:
        return None
    return label_histogram_line([str(item[spec.label_field]).strip() for item in visible_items(record)
                                 if item.get(spec.label_field) is not None])


def profile_section(record: UserRecord, summary: str) -> str:
    """The user-level profile section (summary and label histogram): what describes the user whatever the query."""
    return user_profile_text(summary, histogram_line(record))


def build_profiles(record: UserRecord, summary: str, k: int, variant: str = "full") -> UserProfiles:
    if variant not in VARIANTS:
        raise ValueError(f"unknown profile variant {variant!r}; use one of {VARIANTS}")
    spec = get_task(record.task)
    documents = [spec.item_text(item) for item in visible_items(record)]
    histogram = histogram_line(record)

    def text(retrieved: list[str]) -> str:
        if variant == "summary_only":
            return user_profile_text(summary, histogram)
        if variant == "retrieved_only":
            return HISTORY_HEADER + "\n".join(retrieved)
        if variant == "full_history_only":
            return HISTORY_HEADER + "\n".join(documents[::-1])
        return profile_text(summary, retrieved, histogram)

    texts = {q.id: text([documents[i] for i in bm25_top_k(q.input, documents, k)]) for q in record.queries}
    newest = documents[-k:] if k > 0 else []
    return UserProfiles(user_text=text(newest[::-1]), query_texts=texts)


def item_profile(record: UserRecord, summary: str, item: dict[str, Any], query_input: str, k: int,
                 variant: str = "full") -> str:
    """The profile text of a query `query_input` made from the history item `item`: exactly as a real query's, from
    the user's visible history without that item (histogram and BM25 items), so the text never holds its answer.
    The summary is the user's one summary (an LLM call per item would cost as much as the summarize stage per row).
    """
    others = [entry for entry in record.history if entry is not item]
    if len(others) == len(record.history):
        raise ValueError(f"{record.task}: user {record.user_id}: the item is not in the user's history")
    asked = replace(record, history=others, queries=[Query("item", query_input)])
    return build_profiles(asked, summary, k, variant).query_texts["item"]
