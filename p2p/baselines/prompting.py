"""The prompt baselines (docs/architecture.md §10): the user's data goes into the prompt instead of into an adapter.

- `base` (non-personalised): the task prompt alone.
- `rag`: the top-k BM25 history items for the query, then the task prompt.
- `pag`: the user's profile (the summary and, for label tasks, the label histogram: exactly the profile section
  P2P embeds), the top-k items, then the task prompt.
- `full_history`: as many history items as fit `context_tokens`, newest first, then the task prompt.

Items that are another query's gold (`query_id`, the leakage rule of p2p/data/sources) are never shown, as for
P2P's profiles. The history list is taken to be in time order (oldest first), as every loader writes it.
"""

from __future__ import annotations

from dataclasses import dataclass

from p2p.data.records import Query, UserRecord
from p2p.methods import PROMPT_METHODS
from p2p.profiles.build import profile_section, visible_items
from p2p.profiles.retrieval import bm25_top_k
from p2p.profiles.summaries import CountTokens
from p2p.tasks import get_task
from p2p.tasks.prompts import render_personalized_prompt


@dataclass(frozen=True)
class PromptSettings:
    retrieval_k: int = 2  # items for rag and pag (paper: 2)
    context_tokens: int = 1024  # history budget of full_history, in tokens of the base model


def newest_that_fit(items: list[str], budget: int, count_tokens: CountTokens) -> list[str]:
    """Items newest first, as many as fit `budget` tokens (one newline each between them)."""
    chosen, used = [], 0
    for item in reversed(items):
        cost = count_tokens(item) + 1
        if used + cost > budget:
            break
        chosen.append(item)
        used += cost
    return chosen


def build_prompt(method: str, record: UserRecord, query: Query, summary: str | None, settings: PromptSettings,
                 count_tokens: CountTokens) -> str:
    """The prompt `method` gives the base model for one query of one user."""
    task_prompt = get_task(record.task).build_prompt(query.input)
    if method == "base":
        return task_prompt
    spec = get_task(record.task)
    items = [spec.item_text(item) for item in visible_items(record)]
    if method == "full_history":
        return render_personalized_prompt(task_prompt, None, newest_that_fit(items, settings.context_tokens,
                                                                             count_tokens))
    retrieved = [items[i] for i in bm25_top_k(query.input, items, settings.retrieval_k)]
    if method == "rag":
        return render_personalized_prompt(task_prompt, None, retrieved)
    if method == "pag":
        if summary is None:
            raise ValueError(f"{record.task}: no summary for user {record.user_id}; run the summarize stage")
        return render_personalized_prompt(task_prompt, profile_section(record, summary), retrieved)
    raise ValueError(f"unknown prompt method {method!r}; use one of {PROMPT_METHODS}")
