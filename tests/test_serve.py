"""`p2p serve` as its users meet it: a real server process on 127.0.0.1 over the smoke checkpoint (tiny Qwen2 base,
real MiniLM embedder, an untrained hypernetwork with non-zero heads, so every profile gets its own non-zero adapter),
driven with the official `openai` client and with raw HTTP where the client would refuse to send the mistake."""

from __future__ import annotations

import http.client
import json
import re
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlsplit

import openai
import pytest
from conftest import TINY, http_json
from typer.testing import CliRunner

from p2p.cli import app

PROFILE = "I love dystopian science fiction and slow thought-provoking films; I never watch romantic comedies."
OTHER_PROFILE = "Give me loud action movies with car chases, explosions and a twist ending every time."
QUESTION = "Recommend me a film for tonight."


@pytest.fixture(scope="module")
def client(p2p_server) -> openai.OpenAI:
    return openai.OpenAI(base_url=p2p_server.api, api_key=p2p_server.key, max_retries=0, timeout=60)


def ask(client: openai.OpenAI, profile: str | None = None, **kwargs):
    body = ({"profile": profile} if profile is not None else {}) | kwargs.pop("extra_body", {})
    options = {"model": TINY, "messages": [{"role": "user", "content": QUESTION}], "max_tokens": 12,
               "temperature": 0} | kwargs
    return client.chat.completions.create(**options, extra_body=body)


def raw(server, method: str, path: str, body: bytes | None = None, key: str | None = "default",
        headers: dict[str, str] | None = None) -> tuple[int, http.client.HTTPMessage, dict]:
    """One HTTP request with http.client: (status, headers, parsed JSON body)."""
    return http_json(server.url, method, path, body, server.key if key == "default" else key, headers, timeout=60)


def chat_body(**fields) -> bytes:
    return json.dumps({"model": TINY, "messages": [{"role": "user", "content": QUESTION}], "max_tokens": 4}
                      | fields).encode()


def test_models_health_and_a_key_on_every_api_route(p2p_server, client):
    assert [m.id for m in client.models.list().data] == [TINY]
    with urllib.request.urlopen(f"{p2p_server.url}/health", timeout=10) as response:
        health = json.load(response)
    assert health["status"] == "ok" and health["embedder"] == "OnnxSentenceEmbedder"  # on CPU, by default
    wrong = openai.OpenAI(base_url=p2p_server.api, api_key="not-the-key", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        wrong.models.list()
    status, _, body = raw(p2p_server, "GET", "/metrics", key=None)
    assert status == 401 and body["error"]["code"] == "invalid_api_key"


def test_streaming_and_non_streaming_give_the_same_answer_in_openais_format(client):
    whole = ask(client, PROFILE)
    assert whole.id.startswith("chatcmpl-") and whole.object == "chat.completion" and whole.model == TINY
    choice = whole.choices[0]
    assert choice.message.role == "assistant" and choice.message.content
    assert choice.finish_reason in ("stop", "length")
    assert whole.usage.completion_tokens <= 12 and whole.usage.total_tokens == (whole.usage.prompt_tokens
                                                                                + whole.usage.completion_tokens)
    assert whole.p2p["personalised"] is True and whole.p2p["adapter_ms"] is not None

    chunks = list(ask(client, PROFILE, stream=True, stream_options={"include_usage": True}))
    assert {c.id for c in chunks} == {chunks[0].id} and all(c.object == "chat.completion.chunk" for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[0].p2p["adapter_cached"] is True  # the same profile: its adapter came from the LRU
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == choice.message.content
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == choice.finish_reason
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == whole.usage.completion_tokens

    base = ask(client)
    assert base.p2p == {"personalised": False, "adapter_ms": None, "adapter_cached": False,
                        "batch_peak": base.p2p["batch_peak"]}
    assert base.choices[0].message.content != choice.message.content  # the adapter changes the answer


def test_stop_strings_cut_the_answer_and_sampling_is_seeded(client):
    whole = ask(client, PROFILE, max_tokens=12).choices[0].message.content
    stop = whole[len(whole) // 2:len(whole) // 2 + 3]
    cut = ask(client, PROFILE, max_tokens=12, stop=[stop]).choices[0]
    assert cut.message.content == whole[:whole.index(stop)] and cut.finish_reason == "stop"
    sampled = [ask(client, PROFILE, temperature=1.0, top_p=0.9, seed=7).choices[0].message.content
               for _ in range(2)]
    assert sampled[0] == sampled[1]


def test_users_batched_together_get_what_each_gets_alone_and_what_p2p_personalize_says(p2p_server, client,
                                                                                       model_cache, tmp_path):
    alone = {p: ask(client, p, max_tokens=16).choices[0].message.content for p in (PROFILE, OTHER_PROFILE)}
    assert alone[PROFILE] != alone[OTHER_PROFILE]

    # A long base-model request holds the batch open, so both users join it at token boundaries, side by side.
    with ThreadPoolExecutor(3) as pool:
        filler = pool.submit(ask, client, None, max_tokens=400, extra_body={"min_tokens": 400})
        time.sleep(0.3)
        together = {p: pool.submit(ask, client, p, max_tokens=16) for p in (PROFILE, OTHER_PROFILE)}
        answers = {p: future.result() for p, future in together.items()}
        assert filler.result().usage.completion_tokens == 400
    for profile, answer in answers.items():
        assert answer.p2p["batch_peak"] >= 2, "the requests did not share a batch"
        assert answer.choices[0].message.content == alone[profile]

    profile_file = tmp_path / "profile.txt"
    profile_file.write_text(PROFILE, encoding="utf-8")
    result = CliRunner().invoke(app, ["personalize", "--checkpoint", str(p2p_server.checkpoint), "--profile",
                                      str(profile_file), "--cache-dir", str(model_cache), "--device", "cpu",
                                      "--max-new-tokens", "16", "--query", QUESTION])
    assert result.exit_code == 0, result.output
    assert result.stdout.rstrip("\n").splitlines()[:-1] == [alone[PROFILE].strip()]


def test_stored_profiles_answer_through_user_and_are_gone_after_delete(p2p_server, client):
    status, _, stored = raw(p2p_server, "PUT", "/v1/profiles/alice", json.dumps({"profile": PROFILE}).encode())
    assert status == 200 and stored["profile_chars"] == len(PROFILE)
    assert raw(p2p_server, "GET", "/v1/profiles/alice")[2]["profile"] == PROFILE
    inline = ask(client, PROFILE).choices[0].message.content
    assert ask(client, user="alice").choices[0].message.content == inline

    assert (p2p_server.log.parent / "profiles.db").stat().st_mode & 0o077 == 0  # users' data: owner only
    status, _, deleted = raw(p2p_server, "DELETE", "/v1/profiles/alice")
    assert status == 200 and deleted["adapter_dropped"] is True
    assert raw(p2p_server, "GET", "/v1/profiles/alice")[0] == 404
    with pytest.raises(openai.NotFoundError, match="alice"):
        ask(client, user="alice")  # never a silent fall-back to the base model


def test_every_bad_request_gets_its_4xx_naming_the_field_and_the_server_keeps_serving(p2p_server, client):
    too_big = json.dumps({"profile": "x" * 250_000}).encode()
    cases = [  # (what, method, path, body, key, status, param)
        ("bad JSON", "POST", "/v1/chat/completions", b"{not json", "default", 400, None),
        ("not an object", "POST", "/v1/chat/completions", b"[1, 2]", "default", 400, None),
        ("no model", "POST", "/v1/chat/completions", json.dumps({"messages": []}).encode(), "default", 400, "model"),
        ("empty messages", "POST", "/v1/chat/completions", chat_body(messages=[]), "default", 400, "messages"),
        ("bad role", "POST", "/v1/chat/completions", chat_body(messages=[{"role": "robot", "content": "hi"}]),
         "default", 400, "messages.0.role"),
        ("content of a wrong type", "POST", "/v1/chat/completions",
         chat_body(messages=[{"role": "user", "content": 42}]), "default", 400, "messages.0.content"),
        ("max_tokens a string", "POST", "/v1/chat/completions", chat_body(max_tokens="5"), "default", 400,
         "max_tokens"),
        ("negative max_tokens", "POST", "/v1/chat/completions", chat_body(max_tokens=-3), "default", 400,
         "max_tokens"),
        ("max_tokens over the cap", "POST", "/v1/chat/completions", chat_body(max_tokens=10_000), "default", 400,
         "max_tokens"),
        ("temperature out of range", "POST", "/v1/chat/completions", chat_body(temperature=5), "default", 400,
         "temperature"),
        ("n > 1", "POST", "/v1/chat/completions", chat_body(n=2), "default", 400, "n"),
        ("stream not a boolean", "POST", "/v1/chat/completions", chat_body(stream="yes"), "default", 400, "stream"),
        ("empty profile", "POST", "/v1/chat/completions", chat_body(profile=""), "default", 400, "profile"),
        ("unknown task", "POST", "/v1/chat/completions", chat_body(profile=PROFILE, task="LaMP-99"), "default", 400,
         "task"),
        ("unknown model", "POST", "/v1/chat/completions", chat_body(model="gpt-4o"), "default", 404, "model"),
        ("unknown user", "POST", "/v1/chat/completions", chat_body(user="nobody"), "default", 404, "user"),
        ("oversized body", "PUT", "/v1/profiles/bob", too_big, "default", 413, None),
        ("bad key", "POST", "/v1/chat/completions", chat_body(), "wrong-key", 401, None),
        ("no key", "POST", "/v1/chat/completions", chat_body(), None, 401, None),
        ("profile body with an unknown field", "PUT", "/v1/profiles/bob",
         json.dumps({"profile": PROFILE, "colour": "red"}).encode(), "default", 400, "colour"),
        ("unknown route", "GET", "/v1/nothing", None, "default", 404, None),
        ("wrong method", "DELETE", "/v1/chat/completions", None, "default", 405, None),
    ]
    for what, method, path, body, key, status, param in cases:
        got, _, answer = raw(p2p_server, method, path, body, key=key)
        assert got == status, f"{what}: {got} {answer}"
        error = answer["error"]
        assert error["message"] and error["type"], what
        assert error["param"] == param, f"{what}: {error}"
        if param is not None:
            assert param.split(".")[0] in error["message"], f"{what}: {error['message']}"
    with pytest.raises(openai.BadRequestError, match="max_tokens"):
        ask(client, max_tokens=-1)
    assert ask(client, PROFILE).choices[0].message.content  # still serving


def _open_stream(server, max_tokens: int) -> http.client.HTTPConnection:
    """A streaming request whose answer is left unread: it holds its batch row (or queue place)."""
    parts = urlsplit(server.url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
    connection.request("POST", "/v1/chat/completions",
                       chat_body(stream=True, max_tokens=max_tokens, min_tokens=max_tokens),
                       {"Content-Type": "application/json", "Authorization": f"Bearer {server.key}"})
    return connection


def _health(server) -> dict:
    with urllib.request.urlopen(f"{server.url}/health", timeout=10) as response:
        return json.load(response)


def test_a_full_queue_answers_429_and_clients_that_leave_free_their_rows(p2p_server, client):
    streams = [_open_stream(p2p_server, 3000) for _ in range(6)]  # 4 batch rows + 2 queue places
    try:
        deadline = time.monotonic() + 30
        while (load := _health(p2p_server))["batch_rows"] + load["queued"] < 6:
            assert time.monotonic() < deadline, load
            time.sleep(0.05)
        status, headers, body = raw(p2p_server, "POST", "/v1/chat/completions", chat_body())
        assert status == 429 and headers["Retry-After"] == "1" and body["error"]["type"] == "rate_limit_error"
        with pytest.raises(openai.RateLimitError):
            ask(client)
    finally:
        for connection in streams:
            connection.sock.close()  # the client leaves mid-answer
            connection.close()
    deadline = time.monotonic() + 20
    while (load := _health(p2p_server))["batch_rows"] + load["queued"] > 0:
        assert time.monotonic() < deadline, f"rows not freed after the clients left: {load}"
        time.sleep(0.05)
    assert ask(client).choices[0].message.content is not None


def test_metrics_and_logs_carry_counts_and_timings_never_texts(p2p_server, client):
    ask(client, "A profile seen once: " + PROFILE)
    stream = ask(client, "A profile seen once: " + PROFILE, stream=True, max_tokens=2000,
                 extra_body={"min_tokens": 2000})
    next(iter(stream))
    stream.close()  # a client that leaves mid-answer
    status, _, _ = raw(p2p_server, "GET", "/v1/models")
    request = urllib.request.Request(f"{p2p_server.url}/metrics",
                                     headers={"Authorization": f"Bearer {p2p_server.key}"})
    with urllib.request.urlopen(request, timeout=10) as response:
        text = response.read().decode()
    for name in ("p2p_requests_total", "p2p_queue_depth", "p2p_batch_size_bucket", "p2p_adapter_milliseconds_count",
                 "p2p_time_to_first_token_seconds_count", "p2p_tokens_per_second", "p2p_generated_tokens_total"):
        assert re.search(rf"^{name}", text, re.MULTILINE), name
    assert re.search(r'^p2p_requests_total\{route="/v1/chat/completions",status="429"\} [1-9]', text, re.MULTILINE)

    time.sleep(0.5)
    log = p2p_server.log.read_text(encoding="utf-8")
    lines = [json.loads(line) for line in log.splitlines() if line.startswith('{"event": "request"')]
    chats = [line for line in lines if line["route"] == "/v1/chat/completions" and line["status"] == 200]
    assert chats and all({"ms", "prompt_tokens", "kind"} <= line.keys() for line in chats)
    assert all("completion_tokens" in line or line.get("disconnected") for line in chats)
    assert any(line.get("disconnected") for line in chats)
    assert PROFILE[:40] not in log and OTHER_PROFILE[:40] not in log and QUESTION not in log
    answer = ask(client, PROFILE).choices[0].message.content
    assert answer.strip() and answer.strip() not in log


def test_a_second_request_is_answered_while_a_long_one_streams(p2p_server, client):
    """Continuous batching: a short request does not wait for a long one to finish."""
    done = threading.Event()

    def long_stream() -> None:
        for _ in ask(client, None, stream=True, max_tokens=1500, extra_body={"min_tokens": 1500}):
            pass
        done.set()

    thread = threading.Thread(target=long_stream)
    thread.start()
    time.sleep(0.3)
    short = ask(client, PROFILE, max_tokens=4)
    assert not done.is_set() and short.p2p["batch_peak"] >= 2
    thread.join(timeout=120)
    assert done.is_set()


@pytest.mark.parametrize("args, message", [
    (["--port", "0"], "--port: expected 1 to 65535"),
    (["--max-batch", "0"], "--max-batch"),
    (["--checkpoint", "{tmp}/nothing"], "not a P2P checkpoint"),
    (["--keys-file", "{tmp}/keys.txt"], "keys.txt:2: expected `OWNER KEY`"),
    (["--host", "0.0.0.0"], "loopback only"),
    (["--profiles-db", "postgresql://p2p:hunter2-secret@127.0.0.1:1/p2p"], "postgresql://p2p:***@127.0.0.1:1/p2p"),
    (["--profiles-db", "mysql://127.0.0.1/p2p"], "unsupported scheme 'mysql'"),
])
def test_serve_refuses_bad_settings_in_one_line_before_loading_anything(args, message, model_cache, tmp_path):
    (tmp_path / "keys.txt").write_text("acme acme-key-0123456789\nacme-key-without-owner-0123\n", encoding="utf-8")
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    if "--checkpoint" not in args:
        args += ["--checkpoint", str(tmp_path / "nothing")]
    if "--profiles-db" not in args:
        args += ["--profiles-db", str(tmp_path / "profiles.db")]
    result = CliRunner().invoke(app, ["serve", "--cache-dir", str(model_cache), *args], env={"P2P_API_KEY": ""})
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], result.stderr
    assert "hunter2" not in result.output


def run_bench_serve(*args: str) -> tuple[dict, str]:
    """`bench/serve.py --preset smoke` with `args`: its final JSON object and everything it printed."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    done = subprocess.run([sys.executable, str(root / "bench" / "serve.py"), "--preset", "smoke", *args], cwd=root,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1]), done.stdout


def test_bench_serve_runs_its_three_loads_and_ends_with_its_json():
    """`p2p bench serve` end to end at toy size (smoke preset: the tiny base model), so the benchmark that measures
    the serving targets keeps working; its figures mean nothing at this size."""
    result, _ = run_bench_serve("--users", "2", "--max-tokens", "4", "--rounds", "2")
    assert result["preset"] == "smoke" and result["users"] == 2 and result["rounds"] == 2
    assert result["tokens_per_s_base"] > 0 and result["tokens_per_s_p2p"] > 0 and result["tokens_per_s_serial"] > 0
    assert 0 < result["adapter_ms_p50"] <= result["adapter_ms_p99"]
    assert "tokens_per_s_clean" not in result and "hostile_outcomes" not in result


def test_bench_serve_adversarial_measures_the_clean_and_hostile_loads_in_one_run():
    """`p2p bench serve --adversarial` at toy size: the clean load's figures, the hostile load's beside them, and an
    outcome for every hostile client. Issue 29's targets are for the lead's measurement on quiet cores, not here."""
    result, printed = run_bench_serve("--users", "2", "--max-tokens", "4", "--rounds", "1", "--adversarial")
    assert result["tokens_per_s_base"] > 0 and result["tokens_per_s_p2p"] > 0  # the three loads are still there
    assert result["tokens_per_s_clean"] > 0 and result["failed_clean"] == 0
    assert result["gap_p99_s_clean"] > 0 and result["ttft_ms_p50_clean"] > 0
    assert result["tokens_per_s_hostile"] >= 0 and 0 <= result["failed_hostile"] <= 2
    assert result["hostile_ratio"] == pytest.approx(result["tokens_per_s_hostile"] / result["tokens_per_s_clean"],
                                                    abs=2e-3)
    assert "gap_p99_s_hostile" in result and result["hostile_threads"] == 1
    kinds = {"seed", "temperature", "top_p", "slow_body", "half_headers", "drop_stream", "drop_body", "big_profile"}
    assert set(result["hostile_outcomes"]) == kinds
    assert all(sum(counts.values()) >= 1 for counts in result["hostile_outcomes"].values())
    assert "hostile clients' outcomes" in printed


def test_bench_serve_runs_only_the_hostile_kinds_asked_for_and_refuses_an_unknown_one():
    import subprocess
    import sys
    from pathlib import Path

    result, _ = run_bench_serve("--users", "2", "--max-tokens", "4", "--rounds", "1", "--adversarial",
                                "--hostile-kinds", "seed,drop_stream")
    assert set(result["hostile_outcomes"]) == {"seed", "drop_stream"}
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run([sys.executable, str(root / "bench" / "serve.py"), "--preset", "smoke", "--adversarial",
                           "--hostile-kinds", "seed,slowloris"], cwd=root, capture_output=True, text=True, timeout=120)
    assert done.returncode != 0 and "unknown ['slowloris']" in done.stderr
