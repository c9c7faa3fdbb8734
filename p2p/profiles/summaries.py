"""LLM profile summaries: the base model describes each user's behaviour from their history (paper App. J prompt).

The prompt is the paper's profile-generation prompt with the task description and the user's history: items
rendered as text, each cut to `max_item_chars`, the oldest dropped until the history fits `history_token_budget`
tokens. Items that carry a `query_id` are some query's gold answer and never enter a summary (the leakage rule in
p2p/data/sources). A user with a pre-existing profile (Personal Reddit personas, EC demographics) keeps it as the
summary and costs no generation.

Results are cached per (model, decoding settings, prompt) in a SQLite cache and committed as each generation
finishes, so a run killed halfway redoes only the users it had not finished.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from p2p.cache import Cache, as_text, content_key
from p2p.data.records import UserRecord
from p2p.models.generation import Backend, Generation, Sampling
from p2p.tasks import get_task
from p2p.tasks.prompts import render_profile_prompt

CountTokens = Callable[[str], int]


def approximate_tokens(text: str) -> int:
    """About four characters per token: the budget rule when no tokenizer is at hand (HTTP backends)."""
    return (len(text) + 3) // 4


def history_for_summary(record: UserRecord, *, max_item_chars: int, token_budget: int,
                        count_tokens: CountTokens = approximate_tokens) -> str:
    """The user's history as prompt text: newest items kept, oldest dropped until it fits the budget.

    Items are in the record's order, which loaders keep chronological where the source is (oldest first); items
    with a `date` are ordered by it. Each item is one line, cut to `max_item_chars`. At least the newest item is
    always kept (cut to the budget in characters if needed), so no user gets an empty history.
    """
    spec = get_task(record.task)
    items = [item for item in record.history if "query_id" not in item]
    if all("date" in item for item in items):
        items = sorted(items, key=lambda item: str(item["date"]))
    lines = [_cut(spec.item_text(item), max_item_chars) for item in items]
    kept: list[str] = []
    used = 0
    for line in reversed(lines):  # newest first
        cost = count_tokens(line + "\n")
        if kept and used + cost > token_budget:
            break
        kept.append(line)
        used += cost
    if kept and count_tokens(kept[0]) > token_budget:  # a single newest item longer than the whole budget
        kept[0] = _cut(kept[0], token_budget * 4)
    return "\n".join(reversed(kept))


def _cut(text: str, limit: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: max(limit - 1, 0)].rstrip() + "…"


def summary_prompt(record: UserRecord, **history_kwargs: Any) -> str:
    return render_profile_prompt(get_task(record.task).description, history_for_summary(record, **history_kwargs))


@dataclass
class SummaryRun:
    """What one summarize call did: per-user summaries plus the numbers worth logging."""

    summaries: dict[str, dict[str, Any]]  # user_id -> {"summary", "source", ...}
    cache_hits: int
    generated: int
    given: int  # users whose pre-existing profile served as the summary
    prompt_tokens: int
    completion_tokens: int
    seconds: float

    @property
    def tokens_per_second(self) -> float:
        """Generated (completion) tokens per second of generation time; 0 when nothing was generated."""
        return self.completion_tokens / self.seconds if self.generated and self.seconds > 0 else 0.0

    def stats(self) -> dict[str, float]:
        return {"users": float(len(self.summaries)), "cache_hits": float(self.cache_hits),
                "generated": float(self.generated), "given_profiles": float(self.given),
                "prompt_tokens": float(self.prompt_tokens), "completion_tokens": float(self.completion_tokens),
                "generation_seconds": self.seconds, "completion_tokens_per_second": self.tokens_per_second}


def summarize(records: Sequence[UserRecord], backend: Backend, cache: Cache, sampling: Sampling, *,
              max_item_chars: int, token_budget: int, count_tokens: CountTokens = approximate_tokens) -> SummaryRun:
    """Summaries for every user, generating only those not in the cache (each committed as soon as it is done)."""
    summaries: dict[str, dict[str, Any]] = {}
    pending: list[tuple[UserRecord, str, str]] = []  # (record, prompt, cache key)
    for record in records:
        if record.profile_text:
            summaries[record.user_id] = {"summary": record.profile_text, "source": "profile_text"}
            continue
        prompt = summary_prompt(record, max_item_chars=max_item_chars, token_budget=token_budget,
                                count_tokens=count_tokens)
        key = content_key("summary", backend.model_id, sampling.max_new_tokens, sampling.temperature,
                          sampling.top_p, sampling.seed, prompt)
        pending.append((record, prompt, key))
    given = len(summaries)
    cached = cache.get_many(key for _, _, key in pending)
    todo = [(record, prompt, key) for record, prompt, key in pending if key not in cached]
    for record, _, key in pending:
        if key in cached:
            summaries[record.user_id] = {"summary": as_text(cached[key]), "source": "llm", "model": backend.model_id}

    usage = {"prompt": 0, "completion": 0}

    def keep(index: int, generation: Generation) -> None:
        record, _, key = todo[index]
        cache.put_many({key: generation.text})
        summaries[record.user_id] = {"summary": generation.text, "source": "llm", "model": backend.model_id}
        usage["prompt"] += generation.prompt_tokens
        usage["completion"] += generation.completion_tokens

    start = time.perf_counter()
    if todo:
        backend.generate([[{"role": "user", "content": prompt}] for _, prompt, _ in todo], sampling, on_result=keep)
    seconds = time.perf_counter() - start
    ordered = {r.user_id: summaries[r.user_id] for r in records}
    return SummaryRun(summaries=ordered, cache_hits=len(pending) - len(todo), generated=len(todo), given=given,
                      prompt_tokens=usage["prompt"], completion_tokens=usage["completion"], seconds=seconds)

