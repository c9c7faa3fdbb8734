"""OpenAIBackend against a real `transformers serve` process and a scripted misbehaving server, both on 127.0.0.1."""

import threading
import time

import pytest
from misbehaving_server import ChatServer, Reply, completion

from p2p.models.decoding import TransformersBackend
from p2p.models.generation import Generation, GenerationError, Sampling
from p2p.models.loading import load_causal_lm
from p2p.models.openai_backend import MAX_RETRY_AFTER, MAX_SERVER_MESSAGE, OpenAIBackend, retry_wait

SMOLLM = "HuggingFaceTB/SmolLM2-135M-Instruct"
GREEDY = Sampling(max_new_tokens=12)
SECRET = "sk-test-SECRET-1234567890"


def fast(url: str, **kwargs) -> OpenAIBackend:
    """A backend with waits short enough for tests."""
    return OpenAIBackend(url, "m", **{"backoff": 0.01, "timeout": 5.0, "progress": False, **kwargs})


def user(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


# ---------------------------------------------------------------------------------------------------------------
# A real OpenAI-compatible server: `transformers serve` on the converted SmolLM2-135M-Instruct (the
# `served_model` fixture in conftest.py).

def test_real_server_matches_in_process_generation(served_model, model_cache):
    """Same model, same chat template, greedy: the same text, prompt length and completion length (both count the
    end-of-turn token), in input order. Every conversation carries its own system turn: in process, a conversation
    without one is rendered without the template's default system turn (p2p.models.generation.chat_ids), which a
    server's template adds (docs/models.md)."""
    url, model_dir = served_model
    system = {"role": "system", "content": "You are a helpful assistant."}
    conversations = [
        [system, *user("What is the capital of France?")],  # a short answer: stops on its own
        [{"role": "system", "content": "You answer in one word."}, {"role": "user", "content": "Name a colour."},
         {"role": "assistant", "content": "Blue."}, {"role": "user", "content": "Another one?"}],
        [system, *user("Write a long story about a dragon who learns to read.")],  # runs into max_new_tokens
    ]
    reported: list[tuple[int, Generation]] = []
    served = OpenAIBackend(url, str(model_dir), concurrency=2, timeout=60, progress=False).generate(
        conversations, GREEDY, on_result=lambda i, gen: reported.append((i, gen)))

    # batch_size 1: no padding, the very computation the server does for one request
    model, tokenizer = load_causal_lm(SMOLLM, model_cache)
    local = TransformersBackend(model, tokenizer, SMOLLM, batch_size=1, progress=False).generate(conversations, GREEDY)

    assert sorted(i for i, _ in reported) == [0, 1, 2]
    assert all(served[i] == gen for i, gen in reported)
    assert [g.text for g in served] == [g.text for g in local]
    assert all(g.text for g in served)
    assert [g.prompt_tokens for g in served] == [g.prompt_tokens for g in local]
    assert local[0].completion_tokens < GREEDY.max_new_tokens == local[2].completion_tokens
    assert [g.completion_tokens for g in served] == [g.completion_tokens for g in local]


def test_real_server_rejects_another_model_without_retrying(served_model):
    """The server is pinned to its model: asking for another is a 400, shown at once with the server's words."""
    url, _ = served_model
    started = time.monotonic()
    with pytest.raises(GenerationError, match=r"HTTP 400; .*Server says: Server is pinned .*'no-such-model'"):
        OpenAIBackend(url, "no-such-model", backoff=5, progress=False).generate([user("hi")], GREEDY)
    assert time.monotonic() - started < 5  # no backoff wait: not retried


# ---------------------------------------------------------------------------------------------------------------
# The request and the response.

def test_request_body_greedy_and_sampled():
    with ChatServer() as server:
        backend = fast(server.url)
        results = backend.generate([user("a"), user("b")], Sampling(max_new_tokens=5, seed=7))
        backend.generate([user("c")], Sampling(max_new_tokens=9, temperature=0.7, top_p=0.9, seed=3))
    assert results == [Generation("echo: a", 3, 2), Generation("echo: b", 3, 2)]
    assert backend.model_id == "openai:m"
    assert {seen.path for seen in server.requests} == {"/v1/chat/completions"}
    assert sorted((seen.body for seen in server.requests[:2]), key=str) == [
        {"model": "m", "messages": user(text), "max_tokens": 5, "temperature": 0.0, "seed": 7} for text in "ab"]
    assert server.requests[2].body == {"model": "m", "messages": user("c"), "max_tokens": 9, "temperature": 0.7,
                                       "top_p": 0.9, "seed": 3}
    assert "authorization" not in server.requests[0].headers


def test_missing_usage_counts_zero_tokens_and_text_is_stripped():
    with ChatServer(lambda n, body: completion("  hello \n", prompt_tokens=None, completion_tokens=None)) as server:
        assert fast(server.url).generate([user("x")], GREEDY) == [Generation("hello", 0, 0)]


def test_results_in_input_order_and_on_result_on_calling_thread():
    """Later conversations answer sooner, so completion order differs from input order."""
    def script(n, body):
        k = int(body["messages"][0]["content"])
        return completion(f"answer {k}", stall=0.05 * (5 - k))

    calls: list[tuple[int, str, int]] = []
    with ChatServer(script) as server:
        results = fast(server.url, concurrency=3).generate(
            [user(str(k)) for k in range(6)], GREEDY,
            on_result=lambda i, gen: calls.append((i, gen.text, threading.get_ident())))
    assert [g.text for g in results] == [f"answer {k}" for k in range(6)]
    assert sorted(calls) == [(k, f"answer {k}", threading.get_ident()) for k in range(6)]
    assert [i for i, _, _ in calls] != list(range(6))


def test_not_a_chat_completion_is_not_retried():
    with ChatServer(lambda n, body: Reply(body="<html><body>Welcome</body></html>")) as server:
        with pytest.raises(GenerationError, match=r"not a chat completion .*<html>.*base_url is the API root"):
            fast(server.url).generate([user("x")], GREEDY)
    assert len(server.requests) == 1


# ---------------------------------------------------------------------------------------------------------------
# Retries and failures.

def test_server_errors_are_retried_until_success():
    with ChatServer(lambda n, body: Reply(500, {"error": "busy"}) if n < 2 else completion("ok")) as server:
        assert fast(server.url, retries=3).generate([user("x")], GREEDY) == [Generation("ok", 3, 2)]
    assert len(server.requests) == 3


def test_gives_up_after_retries_naming_url_and_tries():
    with ChatServer(lambda n, body: Reply(503, {"error": {"message": "overloaded"}})) as server:
        with pytest.raises(GenerationError) as raised:
            fast(server.url, retries=3).generate([user("x")], GREEDY)
    message = str(raised.value)
    assert f"POST {server.url}/chat/completions failed for conversation 0 after 3 tries" in message
    assert "HTTP 503: overloaded" in message and "Is the server running" in message
    assert len(server.requests) == 3


def test_stalled_server_times_out_retries_then_gives_up_in_bounded_time():
    with ChatServer(lambda n, body: Reply(stall=10)) as server:
        started = time.monotonic()
        with pytest.raises(GenerationError, match=r"after 2 tries; last: no answer within the 0.3 s timeout.*"
                                                  r"raise the timeout"):
            fast(server.url, timeout=0.3, retries=2, backoff=0.05).generate([user("x")], GREEDY)
        elapsed = time.monotonic() - started
    assert len(server.requests) == 2
    assert 0.6 <= elapsed < 2.0  # two 0.3 s timeouts and one 0.05 s backoff, not the 10 s stall


def test_unreachable_server_is_retried_then_reported(dead_url):
    with pytest.raises(GenerationError, match=r"after 2 tries; last: ConnectionRefusedError.*Is the server running"):
        fast(dead_url, retries=2).generate([user("x")], GREEDY)


def test_bad_request_is_not_retried_and_shows_the_server_message():
    with ChatServer(lambda n, body: Reply(400, {"error": {"message": "max_tokens is too large: 99999"}})) as server:
        with pytest.raises(GenerationError, match=r"conversation 0 with HTTP 400; .* says: max_tokens is too large"):
            fast(server.url, retries=3).generate([user("x")], GREEDY)
    assert len(server.requests) == 1


def test_long_server_message_is_truncated():
    with ChatServer(lambda n, body: Reply(422, {"detail": "x" * 5000})) as server:
        with pytest.raises(GenerationError) as raised:
            fast(server.url).generate([user("x")], GREEDY)
    assert "x" * MAX_SERVER_MESSAGE + "..." in str(raised.value)
    assert len(str(raised.value)) < MAX_SERVER_MESSAGE + 300


def test_failure_lets_in_flight_requests_finish_and_reports_them_first():
    """Conversation 1 is rejected first; the others are slower but already in flight: they finish and are reported."""
    def script(n, body):
        text = body["messages"][0]["content"]
        if text == "bad":  # answered once all four requests are surely in flight
            return Reply(400, {"error": "bad one"}, stall=0.1)
        return completion(f"done {text}", stall=0.4)

    reported: dict[int, str] = {}
    with ChatServer(script) as server:
        with pytest.raises(GenerationError, match="conversation 1 with HTTP 400; .* Server says: bad one"):
            fast(server.url, concurrency=4).generate(
                [user("a"), user("bad"), user("c"), user("d")], GREEDY,
                on_result=lambda i, gen: reported.__setitem__(i, gen.text))
    assert reported == {0: "done a", 2: "done c", 3: "done d"}


def test_no_new_request_starts_after_a_failure():
    with ChatServer(lambda n, body: Reply(400, {"error": "no"})) as server:
        with pytest.raises(GenerationError):
            fast(server.url, concurrency=1).generate([user(str(k)) for k in range(5)], GREEDY)
    assert len(server.requests) == 1


def test_retry_after_is_honoured():
    with ChatServer(lambda n, body: Reply(429, {"error": "slow down"}, {"Retry-After": "1"}) if n == 0
                    else completion("ok")) as server:
        started = time.monotonic()
        assert fast(server.url, backoff=0.001).generate([user("x")], GREEDY)[0].text == "ok"
    assert time.monotonic() - started >= 1.0


def test_retry_wait_backs_off_exponentially_and_bounds_retry_after():
    assert [retry_wait(attempt, 0.5, None) for attempt in (1, 2, 3)] == [0.5, 1.0, 2.0]
    assert retry_wait(3, 0.5, "2") == 2.0
    assert retry_wait(1, 0.5, "86400") == MAX_RETRY_AFTER
    assert retry_wait(1, 0.5, "-5") == 0.0
    assert retry_wait(2, 0.5, "soon") == 1.0  # unusable header: plain backoff
    assert retry_wait(1, 0.5, "Wed, 21 Oct 2015 07:28:00 GMT") == 0.0  # a date in the past
    assert retry_wait(1, 0.5, "Fri, 01 Jan 2100 00:00:00 GMT") == MAX_RETRY_AFTER


def test_invalid_settings_are_refused():
    for bad in ({"retries": 0}, {"concurrency": 0}, {"timeout": 0}):
        with pytest.raises(ValueError):
            OpenAIBackend("http://127.0.0.1:1/v1", "m", **bad)


# ---------------------------------------------------------------------------------------------------------------
# The API key.

@pytest.mark.parametrize("status", [401, 503])
def test_api_key_sent_as_bearer_and_never_shown(status):
    """Even a server that echoes the Authorization header back does not get the key into the error."""
    def script(n, body):
        return Reply(status, {"error": {"message": f"refused {server.requests[n].headers['authorization']}"}})

    with ChatServer(script) as server:
        with pytest.raises(GenerationError) as raised:
            fast(server.url, api_key=SECRET, retries=2).generate([user("x")], GREEDY)
    assert {seen.headers["authorization"] for seen in server.requests} == {f"Bearer {SECRET}"}
    shown = "\n".join([str(raised.value), *getattr(raised.value, "__notes__", []), repr(raised.value)])
    assert "refused Bearer [api key]" in shown
    assert SECRET not in shown and "SECRET" not in shown


def test_from_env_reads_the_named_variable(monkeypatch):
    monkeypatch.setenv("P2P_TEST_KEY", SECRET)
    monkeypatch.delenv("P2P_UNSET_KEY", raising=False)
    with ChatServer() as server:
        OpenAIBackend.from_env(server.url, "m", "P2P_TEST_KEY", progress=False).generate([user("x")], GREEDY)
        OpenAIBackend.from_env(server.url, "m", "P2P_UNSET_KEY", progress=False).generate([user("x")], GREEDY)
    assert server.requests[0].headers["authorization"] == f"Bearer {SECRET}"
    assert "authorization" not in server.requests[1].headers
