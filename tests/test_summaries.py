"""Profile summaries: the prompt's history budget, the cache, resuming after a kill, and a real SmolLM2 summary."""

from __future__ import annotations

import pytest

from p2p.cache import Cache
from p2p.data.records import Query, UserRecord
from p2p.models.decoding import TransformersBackend
from p2p.models.generation import Sampling
from p2p.models.loading import load_causal_lm
from p2p.models.presets import TINY_RANDOM
from p2p.profiles.summaries import approximate_tokens, history_for_summary, summarize, summary_prompt


def _user(user_id: str, n_items: int, *, text_len: int = 40, task: str = "LaMP-7", **extra) -> UserRecord:
    history = [{"id": f"{user_id}-h{i}", "text": f"item{i} " + "x" * text_len} for i in range(n_items)]
    return UserRecord(user_id, task, history, [Query(f"{user_id}-q", "Paraphrase the following tweet without any "
                                                                    "explanation before or after it: hi")], **extra)


def test_history_keeps_the_newest_items_that_fit_the_budget():
    record = _user("u", 10, text_len=34)  # "text: item3 xxx..." = 6 + 6 + 34 = 46 chars + newline -> 12 tokens
    text = history_for_summary(record, max_item_chars=1000, token_budget=40)
    lines = text.splitlines()
    assert [line.split()[1] for line in lines] == ["item7", "item8", "item9"]  # oldest dropped, order kept
    assert sum(approximate_tokens(line + "\n") for line in lines) <= 40


def test_long_items_are_cut_and_the_newest_item_is_always_kept():
    record = _user("u", 2, text_len=500)
    assert all(len(line) <= 60 for line in history_for_summary(record, max_item_chars=60, token_budget=1000)
               .splitlines())
    only = history_for_summary(record, max_item_chars=10_000, token_budget=20)
    assert only.startswith("text: item1") and approximate_tokens(only) <= 21


def test_items_that_are_query_answers_never_enter_the_summary_and_dates_order_items():
    record = _user("u", 3)
    record.history[1]["query_id"] = "u-q"
    record.history[0]["date"], record.history[2]["date"] = "2020-05-01", "2019-01-01"
    record.history[1]["date"] = "2021-01-01"
    text = history_for_summary(record, max_item_chars=1000, token_budget=1000)
    assert [line.split()[1] for line in text.splitlines()] == ["item2", "item0"]


def test_prompt_is_the_papers_with_the_task_description():
    prompt = summary_prompt(_user("u", 2), max_item_chars=100, token_budget=100)
    assert prompt.startswith("# Instruction")
    assert "Tweet paraphrasing: Rewrite tweets in a personal style" in prompt
    assert "# User History Data: text: item0" in prompt


@pytest.fixture(scope="module")
def tiny_backend(model_cache):
    model, tokenizer = load_causal_lm(TINY_RANDOM, model_cache)
    return TransformersBackend(model, tokenizer, "hf:tiny", batch_size=4, progress=False)


class _KilledAfter:
    """Wraps a backend; raises (like a kill) after `n` results have been delivered."""

    def __init__(self, backend, n: int):
        self.backend, self.n, self.model_id = backend, n, backend.model_id

    def generate(self, conversations, sampling, on_result=None):
        delivered = []

        def deliver(i, generation):
            if len(delivered) == self.n:
                raise KeyboardInterrupt("killed")
            delivered.append(i)
            on_result(i, generation)

        return self.backend.generate(conversations, sampling, on_result=deliver)


def test_cache_makes_reruns_free_and_a_killed_run_resumes_with_the_missing_users(tmp_path, tiny_backend):
    users = [_user(f"u{i}", 3 + i) for i in range(6)] + [_user("persona", 2, profile_text="age: 30; job: nurse")]
    sampling = Sampling(max_new_tokens=8)
    kwargs = {"max_item_chars": 200, "token_budget": 128}
    with Cache(tmp_path / "s.sqlite", "summaries") as cache:
        with pytest.raises(KeyboardInterrupt):
            summarize(users, _KilledAfter(tiny_backend, 4), cache, sampling, **kwargs)
        assert len(cache) == 4
        resumed = summarize(users, tiny_backend, cache, sampling, **kwargs)
        assert (resumed.cache_hits, resumed.generated, resumed.given) == (4, 2, 1)
        assert resumed.summaries["persona"] == {"summary": "age: 30; job: nurse", "source": "profile_text"}
        again = summarize(users, tiny_backend, cache, sampling, **kwargs)
        assert (again.cache_hits, again.generated, again.completion_tokens) == (6, 0, 0)
        assert again.summaries == resumed.summaries
        other = summarize(users, tiny_backend, cache, Sampling(max_new_tokens=9), **kwargs)
        assert other.generated == 6  # decoding settings are part of the key


def test_real_smollm2_summary_is_non_empty_and_within_the_token_budget(tmp_path, model_cache):
    model, tokenizer = load_causal_lm("HuggingFaceTB/SmolLM2-135M-Instruct", model_cache)
    backend = TransformersBackend(model, tokenizer, "hf:smol", progress=False)
    history = [{"id": f"h{i}", "description": f"A heist film full of {w}.", "tag": tag}
               for i, (w, tag) in enumerate([("explosions", "action"), ("car chases", "action"),
                                             ("jokes", "comedy"), ("shootouts", "action")])]
    user = UserRecord("u", "LaMP-2M", history, [Query("q", "Which tag ... description: x")])
    with Cache(tmp_path / "s.sqlite", "summaries") as cache:
        run = summarize([user], backend, cache, Sampling(max_new_tokens=48), max_item_chars=400, token_budget=256,
                        count_tokens=lambda t: len(tokenizer(t, add_special_tokens=False)["input_ids"]))
    summary = run.summaries["u"]["summary"]
    assert len(summary.split()) >= 5
    assert 0 < run.completion_tokens <= 48
    assert run.tokens_per_second > 0


def test_a_failing_server_raises_after_retries_and_the_cache_keeps_what_was_done(tmp_path):
    """OpenAI-compatible backend against a loopback server that answers every user but one with 503s."""
    from misbehaving_server import ChatServer, Reply, completion

    from p2p.models.generation import GenerationError
    from p2p.models.openai_backend import OpenAIBackend

    users = [_user(f"u{i}", 2 + i) for i in range(4)]
    broken = {"on": True}

    def script(n, body):
        prompt = body["messages"][-1]["content"]
        if broken["on"] and "item4" in prompt:  # only u3 has a fifth history item
            return Reply(503, {"error": {"message": "overloaded"}})
        return completion(f"summary of a user with {prompt.count('item')} items")

    sampling = Sampling(max_new_tokens=8)
    kwargs = {"max_item_chars": 200, "token_budget": 512}
    with ChatServer(script) as server, Cache(tmp_path / "s.sqlite", "summaries") as cache:
        backend = OpenAIBackend(server.url, "m", concurrency=2, timeout=5, retries=2, backoff=0.01, progress=False)
        with pytest.raises(GenerationError, match="2 tries"):
            summarize(users, backend, cache, sampling, **kwargs)
        assert len(cache) == 3  # u0, u1, u2 were done and kept
        broken["on"] = False
        before = len(server.requests)
        rerun = summarize(users, backend, cache, sampling, **kwargs)
        assert (rerun.cache_hits, rerun.generated) == (3, 1)
        assert len(server.requests) == before + 1
