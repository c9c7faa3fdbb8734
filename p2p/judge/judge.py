"""LLM-as-a-judge for the open-ended tasks (paper App. J): a Prometheus-style prompt, a 1..5 score per response.

The judge model reads the paper's judge prompt (instruction, response, reference answer, user profile, rubric) and
answers with feedback ending in `[RESULT] n`. Scores are cached per (prompt, judge model, decoding settings) and
committed as each request finishes, so a run that fails midway (an endpoint giving up) keeps what it had and a
rerun asks only for the rest. An answer without a readable score is asked again with another seed a few times; if
it still has none, the item's score is missing (None), never a number made up from it, and it is not cached, so a
later run tries it again.

Without a judge endpoint, a local model judges instead (`make_judge` says so loudly, and the label says so in
every report): its scores are not comparable with the paper's GPT-4o judge. A small local model rarely writes the
`[RESULT] n` format at all; with `forced_choice` on, an answer still unreadable after the retries gets the marker
appended and the judge's most probable digit 1..5 after it (one forward pass over the prompt and its own feedback).
Such scores are counted as `forced` in every summary, so they are never mistaken for free-form verdicts.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from p2p.cache import Cache, as_text, content_key
from p2p.models.decoding import TransformersBackend
from p2p.models.generation import Backend, Generation, Sampling
from p2p.models.loading import load_causal_lm
from p2p.models.openai_backend import OpenAIBackend
from p2p.models.presets import local_model_id
from p2p.tasks.prompts import render_judge_prompt

log = logging.getLogger(__name__)

#: The score scale of the paper's rubric.
MIN_SCORE, MAX_SCORE = 1, 5
#: What a forced choice appends to the judge's own feedback before reading its score digit.
FORCED_MARKER = "\n[RESULT] "

_MARKER = re.compile(r"\[RESULT\]", re.IGNORECASE)
# What may follow the last marker: markdown bold, a colon, an opening parenthesis, then the number, then an
# optional closing parenthesis and an optional "/denominator".
_AFTER_MARKER = re.compile(r"[\s*:]*\(?\s*\**\s*(\d+(?:\.\d+)?)\s*\**\s*\)?\s*(?:/\s*(\d+))?")


def parse_score(text: str) -> int | None:
    """The integer 1..5 right after the last `[RESULT]` marker, else None.

    Tolerates `[RESULT]: 4`, `[RESULT] 4/5`, `[RESULT] (4)` and `**[RESULT]** 4`. Only the last marker counts (a
    judge may quote the output format before giving its verdict), and nothing is read from elsewhere in the text:
    a score out of range, a fraction of another scale (`4/10`), a decimal or a word is missing, not guessed.
    """
    markers = list(_MARKER.finditer(text))
    if not markers:
        return None
    found = _AFTER_MARKER.match(text, markers[-1].end())
    if found is None or "." in found.group(1) or found.group(2) not in (None, str(MAX_SCORE)):
        return None
    score = int(found.group(1))
    return score if MIN_SCORE <= score <= MAX_SCORE else None


@dataclass(frozen=True)
class JudgeItem:
    """One response to judge, with what the judge compares it to."""

    instruction: str
    response: str
    reference: str
    user_profile: str


@dataclass(frozen=True)
class JudgeResult:
    """`score` is None when the judge gave no readable score; `feedback` is the judge's last answer in full;
    `attempts` is how many requests it took (for a `cached` result, in the run that judged it); `forced` says the
    score is the local judge's constrained choice after an appended marker, not a verdict it wrote."""

    score: int | None
    feedback: str
    attempts: int
    cached: bool
    forced: bool = False


class Judge:
    """Scores responses with a judge model behind any `Backend`, caching parsed scores.

    `label` names the judge in reports (model and endpoint, or the local fallback and why); `local` says whether
    it is the local fallback, whose scores must not be read as the paper's. `forced_choice` needs a backend with
    `choose` (the in-process one).
    """

    def __init__(self, backend: Backend, cache: Cache, *, label: str, local: bool, temperature: float = 0.1,
                 max_new_tokens: int = 256, unparsable_retries: int = 2, seed: int = 0, forced_choice: bool = False):
        if unparsable_retries < 0 or max_new_tokens < 1 or temperature < 0:
            raise ValueError(f"need unparsable_retries >= 0, max_new_tokens >= 1, temperature >= 0; got "
                             f"{unparsable_retries=}, {max_new_tokens=}, {temperature=}")
        if forced_choice and not hasattr(backend, "choose"):
            raise ValueError(f"judge.forced_choice is for the local judge only, but {backend.model_id} is behind an "
                             f"endpoint (judge.base_url): set judge.forced_choice: false")
        self.backend, self.cache, self.label, self.local = backend, cache, label, local
        self.temperature, self.max_new_tokens = temperature, max_new_tokens
        self.unparsable_retries, self.seed, self.forced_choice = unparsable_retries, seed, forced_choice

    def key(self, prompt: str) -> str:
        """Cache key of one judge prompt.

        Temperature and max_new_tokens are part of it: a shorter budget can cut the answer before `[RESULT]`, and a
        different temperature is a different scorer, so their scores are not interchangeable. The seed is not: it
        only picks one sample of the same scorer (and changes on retries anyway), and a rerun with another seed
        should not re-judge everything.
        """
        digest = hashlib.sha256(prompt.encode("utf-8")).hexdigest()
        return content_key("judge", digest, self.backend.model_id, self.temperature, self.max_new_tokens)

    def score(self, items: Sequence[JudgeItem]) -> list[JudgeResult]:
        """One result per item, in order: cached scores without a request, the rest judged in one backend call per
        attempt (only the still unparsable ones are sent again), then, with `forced_choice`, a constrained choice
        for those still unread. A GenerationError from the backend propagates after every score finished so far has
        been cached. A cached forced score is used only while `forced_choice` is on."""
        prompts = [render_judge_prompt(item.instruction, item.response, item.reference, item.user_profile)
                   for item in items]
        keys = [self.key(prompt) for prompt in prompts]
        stored = self.cache.get_many(keys)
        results: list[JudgeResult | None] = [None] * len(items)
        pending: list[int] = []
        for index, key in enumerate(keys):
            value = json.loads(as_text(stored[key])) if key in stored else None
            if value is not None and (self.forced_choice or not value.get("forced", False)):
                results[index] = JudgeResult(score=value["score"], feedback=value["feedback"],
                                             attempts=value["attempts"], cached=True,
                                             forced=value.get("forced", False))
            else:
                pending.append(index)

        for attempt in range(1, self.unparsable_retries + 2):
            if not pending:
                break
            sent = pending

            def keep(position: int, generation: Generation, sent: list[int] = sent, attempt: int = attempt) -> None:
                index = sent[position]
                score = parse_score(generation.text)
                results[index] = JudgeResult(score=score, feedback=generation.text, attempts=attempt, cached=False)
                if score is not None:  # a missing score is never cached: a later run asks again
                    self.cache.put_many({keys[index]: json.dumps(
                        {"score": score, "feedback": generation.text, "attempts": attempt})})

            sampling = Sampling(max_new_tokens=self.max_new_tokens, temperature=self.temperature,
                                seed=self.seed + attempt - 1)
            self.backend.generate([[{"role": "user", "content": prompts[i]}] for i in sent], sampling, on_result=keep)
            pending = [i for i in sent if results[i] is None or results[i].score is None]

        if self.forced_choice and pending:
            self._force(pending, prompts, keys, results)
        missing = sum(result is None or result.score is None for result in results)
        if missing:
            log.warning("judge %s gave no readable score for %d of %d item(s) after %d tries each; they count as "
                        "missing, not as a number", self.label, missing, len(items), self.unparsable_retries + 1)
        return results  # type: ignore[return-value]

    def _force(self, pending: list[int], prompts: list[str], keys: list[str],
               results: list[JudgeResult | None]) -> None:
        """The judge's most probable digit after its own feedback and an appended `[RESULT]` marker."""
        feedback = [results[i].feedback if results[i] is not None else "" for i in pending]
        prefixes = [text + FORCED_MARKER for text in feedback]
        choices = [str(score) for score in range(MIN_SCORE, MAX_SCORE + 1)]
        chosen = self.backend.choose([[{"role": "user", "content": prompts[i]}] for i in pending],  # type: ignore
                                     prefixes, choices)
        for index, prefix, choice in zip(pending, prefixes, chosen, strict=True):
            text = prefix + choice
            attempts = self.unparsable_retries + 1
            results[index] = JudgeResult(score=parse_score(text), feedback=text, attempts=attempts, cached=False,
                                         forced=True)
            self.cache.put_many({keys[index]: json.dumps({"score": results[index].score, "feedback": text,
                                                          "attempts": attempts, "forced": True})})


def summarize_scores(results: Sequence[JudgeResult]) -> dict[str, Any]:
    """`mean` over the scores only (None when there is none), `n` items, `scored`, `missing` and `forced` counts
    (forced scores are among the scored ones)."""
    scores = [result.score for result in results if result.score is not None]
    return {"mean": sum(scores) / len(scores) if scores else None, "n": len(results), "scored": len(scores),
            "missing": len(results) - len(scores), "forced": sum(result.forced for result in results)}


@dataclass(frozen=True)
class JudgeSettings:
    """Where the judge runs. No `base_url`: the local fallback model judges (not the paper's judge)."""

    base_url: str | None = None
    model: str | None = None
    api_key_env: str = "OPENAI_API_KEY"
    temperature: float = 0.1
    max_new_tokens: int = 256
    concurrency: int = 4
    timeout: float = 120
    retries: int = 3
    unparsable_retries: int = 2
    forced_choice: bool = False


def make_judge(settings: JudgeSettings, cache: Cache, *, local_model: str, cache_dir: Path, device: str = "cpu",
               seed: int = 0, batch_size: int = 4) -> Judge:
    """The judge the settings ask for: an OpenAI-compatible endpoint, or `local_model` in-process as a fallback."""
    common = {"temperature": settings.temperature, "max_new_tokens": settings.max_new_tokens,
              "unparsable_retries": settings.unparsable_retries, "seed": seed, "forced_choice": settings.forced_choice}
    if settings.base_url:
        if not settings.model:
            raise ValueError(f"judge.base_url is set ({settings.base_url}) but judge.model is not: set judge.model "
                             f"to the model that endpoint serves (the paper's judge is gpt-4o-2024-08-06)")
        host = urlparse(settings.base_url).hostname or ""
        if not _is_loopback(host):
            log.warning("the judge sends user data (profiles, responses, reference answers) to %s (%s)",
                        host or settings.base_url, settings.base_url)
            if not os.environ.get(settings.api_key_env):
                log.warning("judge endpoint %s is not local and %s is not set: requests go without an API key",
                            settings.base_url, settings.api_key_env)
        backend = OpenAIBackend.from_env(settings.base_url, settings.model, settings.api_key_env,
                                         concurrency=settings.concurrency, timeout=settings.timeout,
                                         retries=settings.retries)
        return Judge(backend, cache, label=f"openai:{settings.model} at {settings.base_url}", local=False, **common)


    log.warning("no judge endpoint configured (judge.base_url): the local model %s judges; its scores are not "
                "comparable with the paper's GPT-4o judge", local_model)
    model, tokenizer = load_causal_lm(local_model, cache_dir, seed=seed, device=device)
    backend = TransformersBackend(model, tokenizer, local_model_id(local_model, seed), batch_size=batch_size)
    forced = "; a score it did not write is its most probable digit after an appended [RESULT]" \
        if settings.forced_choice else ""
    label = f"local:{local_model} (no judge endpoint configured; not comparable with the paper's GPT-4o judge{forced})"
    return Judge(backend, cache, label=label, local=True, **common)


def _is_loopback(host: str) -> bool:
    return host == "localhost" or host == "::1" or host.startswith("127.")

