"""The LLM judge: score parsing, retries of unparsable answers, the cache, failures midway, and real models."""

import logging
import re

import pytest
from misbehaving_server import ChatServer, Reply, completion

from p2p.cache import Cache
from p2p.judge import Judge, JudgeItem, JudgeResult, JudgeSettings, make_judge, parse_score, summarize_scores
from p2p.models.generation import GenerationError
from p2p.models.openai_backend import OpenAIBackend
from p2p.models.presets import TINY_RANDOM
from p2p.tasks.prompts import render_judge_prompt

ITEMS = [JudgeItem(instruction="Write a short post about your weekend.", response=f"response-{name}",
                   reference="Hiked the ridge trail with Max, best weekend ever!",
                   user_profile="Loves hiking and dogs; writes short upbeat posts.") for name in "abc"]


def response_of(body: dict) -> str:
    """Which item a judge request is about: the response quoted in its prompt."""
    return re.search(r"###Response to evaluate:\n(.*)\n", body["messages"][0]["content"]).group(1)


def judge_prompt(item: JudgeItem) -> str:
    return render_judge_prompt(item.instruction, item.response, item.reference, item.user_profile)


def judge_at(url: str, cache: Cache, model: str = "m", *, retries: int = 2, concurrency: int = 1,
             **kwargs) -> Judge:
    """A judge on an OpenAI-compatible endpoint, with waits short enough for tests."""
    backend = OpenAIBackend(url, model, retries=retries, concurrency=concurrency, backoff=0.01, timeout=60,
                            progress=False)
    return Judge(backend, cache, label=f"openai:{model} at {url}", local=False, **kwargs)


@pytest.fixture
def cache(tmp_path) -> Cache:
    with Cache(tmp_path / "judge.sqlite", "judge") as opened:
        yield opened


# ---------------------------------------------------------------------------------------------------------------
# Reading the score.

@pytest.mark.parametrize("text, expected", [
    ("Tailored and warm. [RESULT] 4", 4),
    ("Feedback... [RESULT]5", 5),
    ("[RESULT]: 3", 3),
    ("[RESULT] 4/5", 4),
    ("[RESULT] (2)", 2),
    ("**[RESULT]** 1", 1),
    ("[RESULT]: **4**", 4),
    ("Good. [result] 4.", 4),
    ("Format: [RESULT] 2 ... my verdict: [RESULT] 5", 5),  # the last marker wins
    ("[RESULT] 4 -- no wait: [RESULT] ", None),  # the last marker has no score: nothing is guessed
    ("[RESULT] 0", None),
    ("[RESULT] 6", None),
    ("[RESULT] 45", None),
    ("[RESULT] 4.5", None),
    ("[RESULT] 4/10", None),
    ("[RESULT] -3", None),
    ("[RESULT] five", None),
    ("[RESULT] (an integer number between 1 and 5)", None),  # the prompt's format line echoed back
    ("I would give this a 4 out of 5.", None),  # no marker: a number elsewhere is not a score
    ("", None),
])
def test_parse_score(text, expected):
    assert parse_score(text) == expected


def test_summarize_scores_counts_missing_apart():
    results = [JudgeResult(4, "", 1, False), JudgeResult(None, "", 3, False), JudgeResult(1, "", 1, True, True)]
    assert summarize_scores(results) == {"mean": 2.5, "n": 3, "scored": 2, "missing": 1, "forced": 1}
    assert summarize_scores([JudgeResult(None, "", 3, False)]) == {"mean": None, "n": 1, "scored": 0, "missing": 1,
                                                                   "forced": 0}
    assert summarize_scores([]) == {"mean": None, "n": 0, "scored": 0, "missing": 0, "forced": 0}


# ---------------------------------------------------------------------------------------------------------------
# A scripted endpoint.

def test_unparsable_answer_is_retried_with_another_seed(cache):
    """Only the unparsable item is sent again, with seed + 1; its second, parsable answer counts."""
    def script(n, body):
        if response_of(body) == "response-a" and body["seed"] == 0:
            return completion("Quite personal, but I will not say how much.")
        return completion(f"Fine. [RESULT] {3 if response_of(body) == 'response-a' else 5}")

    with ChatServer(script) as server:
        results = judge_at(server.url, cache, seed=0).score(ITEMS[:2])
    assert results == [JudgeResult(3, "Fine. [RESULT] 3", 2, False), JudgeResult(5, "Fine. [RESULT] 5", 1, False)]
    assert [(response_of(seen.body), seen.body["seed"]) for seen in server.requests] == [
        ("response-a", 0), ("response-b", 0), ("response-a", 1)]
    assert {(seen.body["temperature"], seen.body["max_tokens"]) for seen in server.requests} == {(0.1, 256)}
    assert len(cache) == 2


def test_always_unparsable_is_missing_and_not_cached(cache, caplog):
    with ChatServer(lambda n, body: completion("A fine response. Score: 4")) as server:
        judge = judge_at(server.url, cache, unparsable_retries=2, seed=7)
        with caplog.at_level(logging.WARNING, logger="p2p.judge.judge"):
            results = judge.score(ITEMS[:1])
        assert results == [JudgeResult(None, "A fine response. Score: 4", 3, False)]
        assert [seen.body["seed"] for seen in server.requests] == [7, 8, 9]
        assert len(cache) == 0
        assert "no readable score for 1 of 1 item(s)" in caplog.text
        assert summarize_scores(results) == {"mean": None, "n": 1, "scored": 0, "missing": 1, "forced": 0}
        judge.score(ITEMS[:1])  # a later run asks again
    assert len(server.requests) == 6


def test_failing_endpoint_keeps_finished_scores_and_rerun_asks_only_for_the_rest(cache):
    """One request at a time: a is scored, b fails for good (HTTP 500 on both tries), c is never sent."""
    def failing(n, body):
        return Reply(500, {"error": "overloaded"}) if response_of(body) == "response-b" else completion("[RESULT] 2")

    with ChatServer(failing) as server:
        with pytest.raises(GenerationError, match="conversation 1 after 2 tries; last: HTTP 500: overloaded"):
            judge_at(server.url, cache, retries=2).score(ITEMS)
    assert [response_of(seen.body) for seen in server.requests] == ["response-a", "response-b", "response-b"]
    assert len(cache) == 1

    with ChatServer(lambda n, body: completion("Better. [RESULT] 4")) as healthy:
        results = judge_at(healthy.url, cache, concurrency=2).score(ITEMS)
    assert sorted(response_of(seen.body) for seen in healthy.requests) == ["response-b", "response-c"]
    assert results == [JudgeResult(2, "[RESULT] 2", 1, True), JudgeResult(4, "Better. [RESULT] 4", 1, False),
                       JudgeResult(4, "Better. [RESULT] 4", 1, False)]


def test_cached_scores_cost_no_request_and_are_per_model_and_settings(cache):
    with ChatServer(lambda n, body: completion(f"[RESULT] {1 + n % 5}")) as server:
        first = judge_at(server.url, cache, concurrency=2).score(ITEMS[:2])
        assert len(server.requests) == 2
        again = judge_at(server.url, cache).score(ITEMS[:2])
        assert len(server.requests) == 2
        assert again == [JudgeResult(r.score, r.feedback, r.attempts, True) for r in first]
        judge_at(server.url, cache, model="another-judge").score(ITEMS[:1])  # another judge model
        judge_at(server.url, cache, max_new_tokens=64).score(ITEMS[:1])  # a budget that may cut the answer
        assert len(server.requests) == 4


# ---------------------------------------------------------------------------------------------------------------
# Which judge the settings give.

def test_remote_endpoint_warns_that_user_data_leaves_and_needs_a_model(cache, caplog, monkeypatch, tmp_path):
    monkeypatch.setenv("P2P_TEST_JUDGE_KEY", "sk-test")
    settings = JudgeSettings(base_url="https://api.example.com/v1", model="gpt-4o-2024-08-06",
                             api_key_env="P2P_TEST_JUDGE_KEY")
    with caplog.at_level(logging.WARNING, logger="p2p.judge.judge"):
        judge = make_judge(settings, cache, local_model=TINY_RANDOM, cache_dir=tmp_path)  # sends no request
    assert (judge.local, judge.label) == (False, "openai:gpt-4o-2024-08-06 at https://api.example.com/v1")
    assert judge.backend.model_id == "openai:gpt-4o-2024-08-06"
    assert (judge.temperature, judge.max_new_tokens, judge.unparsable_retries) == (0.1, 256, 2)
    assert "sends user data" in caplog.text and "api.example.com" in caplog.text

    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="p2p.judge.judge"):
        make_judge(JudgeSettings(base_url="http://127.0.0.1:8000/v1", model="m"), cache, local_model=TINY_RANDOM,
                   cache_dir=tmp_path)
    assert caplog.text == ""
    with pytest.raises(ValueError, match="set judge.model"):
        make_judge(JudgeSettings(base_url="https://api.example.com/v1"), cache, local_model=TINY_RANDOM,
                   cache_dir=tmp_path)


def test_local_fallback_judges_with_the_local_model(cache, model_cache, caplog):
    with caplog.at_level(logging.WARNING, logger="p2p.judge.judge"):
        judge = make_judge(JudgeSettings(max_new_tokens=16, unparsable_retries=0), cache, local_model=TINY_RANDOM,
                           cache_dir=model_cache, seed=1)
    assert judge.local is True
    assert judge.label.startswith(f"local:{TINY_RANDOM} (no judge endpoint configured; not comparable")
    assert judge.backend.model_id == f"hf:{TINY_RANDOM}:seed1"
    assert "the local model tiny-random-qwen2 judges" in caplog.text
    [result] = judge.score(ITEMS[:1])
    assert result.attempts == 1 and not result.cached
    assert result.score is None or 1 <= result.score <= 5
    assert isinstance(result.feedback, str)  # the random model's text, possibly empty, kept for inspection


def test_forced_choice_reads_the_local_judges_digit_and_is_never_served_without_it(cache, model_cache):
    """The tiny random model writes no `[RESULT] n`: each item gets the digit the model ranks first after the
    appended marker, counted as forced, cached as forced, and not served to a judge that does not force."""
    settings = JudgeSettings(max_new_tokens=8, unparsable_retries=0, forced_choice=True)
    judge = make_judge(settings, cache, local_model=TINY_RANDOM, cache_dir=model_cache)
    assert judge.label.endswith("most probable digit after an appended [RESULT])")
    results = judge.score(ITEMS[:2])
    for result in results:
        assert result.forced and not result.cached and 1 <= result.score <= 5
        assert result.feedback.endswith(f"\n[RESULT] {result.score}")
    assert summarize_scores(results)["forced"] == 2 and len(cache) == 2
    prefixes = [r.feedback[:-1] for r in results]
    prompts = [[{"role": "user", "content": judge_prompt(item)}] for item in ITEMS[:2]]
    assert judge.backend.choose(prompts, prefixes, ["1", "2", "3", "4", "5"]) == [str(r.score) for r in results]
    assert judge.score(ITEMS[:2]) == [JudgeResult(r.score, r.feedback, 1, True, True) for r in results]

    plain = make_judge(JudgeSettings(max_new_tokens=8, unparsable_retries=0), cache, local_model=TINY_RANDOM,
                       cache_dir=model_cache)
    assert all(not r.cached and not r.forced for r in plain.score(ITEMS[:2]))
    with pytest.raises(ValueError, match="forced_choice is for the local judge only"):
        make_judge(JudgeSettings(base_url="http://127.0.0.1:8000/v1", model="m", forced_choice=True), cache,
                   local_model=TINY_RANDOM, cache_dir=model_cache)


def test_choose_follows_the_model(model_cache):
    """SmolLM2 continues a count with the next number, whatever order the choices come in."""
    from p2p.models.decoding import TransformersBackend
    from p2p.models.loading import load_causal_lm

    model, tokenizer = load_causal_lm("HuggingFaceTB/SmolLM2-135M-Instruct", model_cache)
    backend = TransformersBackend(model, tokenizer, "smol", progress=False)
    count = [[{"role": "user", "content": "Count from 1 to 9, separated by spaces."}]]
    assert backend.choose(count, ["1 2 3 4 5 6 "], ["9", "7", "2"]) == ["7"]
    assert backend.choose(count * 2, ["1 2 ", "1 2 3 4 "], ["5", "3"]) == ["3", "5"]
    with pytest.raises(ValueError, match="is not one token"):
        backend.choose(count, ["1 2 "], ["3 4"])


# ---------------------------------------------------------------------------------------------------------------
# A real OpenAI-compatible server (`transformers serve` on SmolLM2-135M-Instruct).

def test_real_server_judges_and_a_rerun_needs_no_server_for_scored_items(served_model, tmp_path, dead_url):
    """The tiny model rarely writes `[RESULT] n`: the test checks the contract, not the judging. Scored items come
    back from the cache with the server gone; missing ones were not cached, so a rerun must ask (and here fails)."""
    url, model_dir = served_model
    with Cache(tmp_path / "judge.sqlite", "judge") as cache:
        # No retries of unparsable answers (the scripted tests cover them): two requests keep this quick.
        first = judge_at(url, cache, str(model_dir), concurrency=2, max_new_tokens=32,
                         unparsable_retries=0).score(ITEMS[:2])
        assert len(first) == 2
        for result in first:
            assert not result.cached and result.feedback and result.attempts == 1
            assert result.score is None or 1 <= result.score <= 5
        assert len(cache) == sum(result.score is not None for result in first)

        offline = judge_at(dead_url, cache, str(model_dir), retries=1, max_new_tokens=32, unparsable_retries=0)
        scored = [item for item, result in zip(ITEMS, first) if result.score is not None]
        assert offline.score(scored) == [JudgeResult(r.score, r.feedback, r.attempts, True)
                                         for r in first if r.score is not None]
        if len(scored) < len(first):
            with pytest.raises(GenerationError, match="ConnectionRefusedError"):
                offline.score(ITEMS[:2])
