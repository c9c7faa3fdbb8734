"""`p2p serve` against hostile and careless clients (issue 29): real servers on 127.0.0.1 over the smoke checkpoint,
the official `openai` client for well-behaved traffic and raw sockets for what it would never send.

One server has owners' keys (a keys file with two owners, plus the admin key of `P2P_API_KEY`), two batch rows and
two queue places, and one-second header and body deadlines; another has no key at all."""

from __future__ import annotations

import http.client
import json
import socket
import threading
import time
import urllib.request
from pathlib import Path

import openai
import pytest
from conftest import TINY, http_json, p2p_serve
from typer.testing import CliRunner

from p2p.cli import app

PROFILE = "I love dystopian science fiction and slow thought-provoking films; I never watch romantic comedies."
OTHER = "Give me loud action movies with car chases, explosions and a twist ending every time."
KEYS = {"acme": "acme-key-0123456789", "globex": "globex-key-0123456789"}
ADMIN = "admin-key-0123456789"


class Server:
    def __init__(self, url: str, log: Path):
        self.url, self.log = url, log
        self.port = int(url.rsplit(":", 1)[1])

    def client(self, key: str | None) -> openai.OpenAI:
        return openai.OpenAI(base_url=f"{self.url}/v1", api_key=key or "none", max_retries=0, timeout=120)

    def request(self, method: str, path: str, body: bytes | None = None, key: str | None = None,
                headers: dict[str, str] | None = None) -> tuple[int, http.client.HTTPMessage, dict]:
        return http_json(self.url, method, path, body, key, headers)

    def health(self) -> dict:
        with urllib.request.urlopen(f"{self.url}/health", timeout=10) as response:
            return json.load(response)

    def stream(self, key: str, tokens: int) -> socket.socket:
        """A streamed base-model answer of `tokens` tokens, left unread: it holds a batch row (or a queue place)."""
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=120)
        body = chat(stream=True, max_tokens=tokens, min_tokens=tokens)
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nContent-Type: application/json\r\n"
                     b"Authorization: Bearer %s\r\nContent-Length: %d\r\n\r\n%s"
                     % (self.port, key.encode(), len(body), body))
        return sock

    def wait_load(self, rows: int, queued: int, seconds: float = 30) -> None:
        deadline = time.monotonic() + seconds
        while (load := self.health())["batch_rows"] < rows or load["queued"] < queued:
            assert time.monotonic() < deadline, load
            time.sleep(0.05)


def chat(**fields) -> bytes:
    return json.dumps({"model": TINY, "messages": [{"role": "user", "content": "Recommend me a film."}],
                       "max_tokens": 4} | fields).encode()


@pytest.fixture(scope="module")
def owned(model_cache: Path, tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("hostile")
    keys = root / "keys.txt"
    keys.write_text("# owner key\n" + "".join(f"{owner} {key}\n" for owner, key in KEYS.items()), encoding="utf-8")
    args = ["--keys-file", str(keys), "--max-batch", "2", "--max-queue", "2", "--max-tokens", "4000",
            "--no-onnx-embedder", "--header-timeout", "1", "--body-timeout", "1", "--max-connections", "24",
            "--max-profile-chars", "5000"]
    with p2p_serve(root, model_cache, args, {"P2P_API_KEY": ADMIN}, name="owned") as (url, log, _):
        yield Server(url, log)


def ask(server: Server, key: str, **kwargs):
    options = {"model": TINY, "messages": [{"role": "user", "content": "Recommend me a film."}], "max_tokens": 6,
               "temperature": 0} | kwargs
    extra = {name: options.pop(name) for name in ("profile", "user", "min_tokens") if name in options}
    return server.client(key).chat.completions.create(**options, extra_body=extra)


def test_bad_sampling_settings_get_a_400_and_never_touch_the_batch(owned):
    """Once, a huge seed or a tiny temperature or top_p failed every request in the batch with a 500."""
    answer: dict = {}

    def long_answer() -> None:
        chunks = list(ask(owned, KEYS["acme"], max_tokens=300, min_tokens=300, stream=True))
        answer["text"] = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        answer["finish"] = [c.choices[0].finish_reason for c in chunks if c.choices][-1]

    thread = threading.Thread(target=long_answer)
    thread.start()
    owned.wait_load(rows=1, queued=0)
    for fields, param in [({"seed": 1180591620717411303424}, "seed"), ({"seed": -1}, "seed"),
                          ({"temperature": 1e-45}, "temperature"), ({"temperature": 1, "top_p": 1e-300}, "top_p")]:
        status, _, body = owned.request("POST", "/v1/chat/completions", chat(**fields), KEYS["globex"])
        assert status == 400 and body["error"]["param"] == param, (fields, body)
    sampled = ask(owned, KEYS["globex"], temperature=0.01, top_p=1e-6, seed=2**63 - 1, profile=OTHER)
    assert sampled.choices[0].finish_reason in ("stop", "length")  # the bottom of each range decodes
    thread.join(timeout=300)
    assert answer["finish"] == "length" and answer["text"], answer


def test_a_profile_deleted_while_its_request_waits_is_never_used(owned):
    acme = KEYS["acme"]
    assert owned.request("PUT", "/v1/profiles/carol", json.dumps({"profile": PROFILE}).encode(), acme)[0] == 200
    fillers = [owned.stream(acme, 3000) for _ in range(2)]  # both batch rows
    result: dict = {}
    try:
        owned.wait_load(rows=2, queued=0)
        waiting = threading.Thread(target=lambda: result.update(
            answer=owned.request("POST", "/v1/chat/completions", chat(user="carol"), acme)))
        waiting.start()
        owned.wait_load(rows=2, queued=1)  # carol's adapter is made; her request waits for a row
        status, _, deleted = owned.request("DELETE", "/v1/profiles/carol", key=acme)
        assert status == 200 and deleted["adapter_dropped"] is True
    finally:
        for sock in fillers:
            sock.close()
    waiting.join(timeout=120)
    status, _, body = result["answer"]
    assert status == 404 and body["error"]["code"] == "profile_not_found", body
    again = ask(owned, acme, profile=PROFILE)  # her exact text, inline: nothing of hers was kept
    assert again.p2p["adapter_cached"] is False


def test_a_replaced_profile_is_never_answered_with_its_old_adapter(owned):
    acme = KEYS["acme"]
    owned.request("PUT", "/v1/profiles/erin", json.dumps({"profile": PROFILE}).encode(), acme)
    first = ask(owned, acme, user="erin", max_tokens=12)
    status, _, stored = owned.request("PUT", "/v1/profiles/erin", json.dumps({"profile": OTHER}).encode(), acme)
    assert status == 200
    second = ask(owned, acme, user="erin", max_tokens=12)
    assert second.p2p["adapter_cached"] is False
    inline = ask(owned, acme, profile=OTHER, max_tokens=12)
    assert second.choices[0].message.content == inline.choices[0].message.content
    assert first.choices[0].message.content != second.choices[0].message.content


def test_cache_hits_are_visible_only_to_the_owner_that_made_them(owned):
    text = "A profile sent by one owner only: " + PROFILE
    assert ask(owned, KEYS["acme"], profile=text).p2p["adapter_cached"] is False
    assert ask(owned, KEYS["globex"], profile=text).p2p["adapter_cached"] is False  # globex learns nothing
    assert ask(owned, KEYS["acme"], profile=text).p2p["adapter_cached"] is True


def test_a_key_reaches_only_its_owners_users(owned):
    acme, globex = KEYS["acme"], KEYS["globex"]
    body = json.dumps({"profile": PROFILE}).encode()
    assert owned.request("PUT", "/v1/profiles/dana", body, acme)[0] == 200
    assert owned.request("GET", "/v1/profiles/dana", key=globex)[0] == 404
    status, _, refused = owned.request("PUT", "/v1/profiles/dana", body, globex)
    assert status == 403 and refused["error"]["code"] == "owned_by_another"
    assert owned.request("DELETE", "/v1/profiles/dana", key=globex)[0] == 404
    with pytest.raises(openai.NotFoundError):
        ask(owned, globex, user="dana")
    assert ask(owned, acme, user="dana").p2p["personalised"] is True
    assert owned.request("GET", "/v1/profiles/dana", key=ADMIN)[2]["profile"] == PROFILE  # the admin sees all
    status, headers, _ = owned.request("GET", "/v1/profiles/dana", key="not-a-key-at-all-000")
    assert status == 401 and headers["WWW-Authenticate"] == "Bearer"
    assert owned.request("DELETE", "/v1/profiles/dana", key=acme)[0] == 200


def test_ids_are_taken_as_given(owned):
    acme = KEYS["acme"]
    status, _, body = owned.request("GET", "/v1/profiles/%ff", key=acme)
    assert status == 400 and body["error"]["param"] == "user"
    assert owned.request("PUT", "/v1/profiles/%C3%A9", json.dumps({"profile": PROFILE}).encode(), acme)[0] == 200
    assert owned.request("GET", "/v1/profiles/%C3%A9", key=acme)[2]["user"] == "é"


def test_big_prompts_and_profiles_are_refused_before_they_are_tokenized_or_embedded(owned):
    acme = KEYS["acme"]
    body = chat(messages=[{"role": "user", "content": "word " * 378_000}])  # 1.89 MB
    began = time.perf_counter()
    status, _, answer = owned.request("POST", "/v1/chat/completions", body, acme)
    assert status == 400 and answer["error"]["code"] == "context_length_exceeded"
    assert "characters" in answer["error"]["message"], answer  # counted, not tokenized
    status, _, answer = owned.request("POST", "/v1/chat/completions", chat(profile="x" * 1_000_000), acme)
    assert status == 400 and answer["error"]["code"] == "profile_too_long", answer
    status, _, answer = owned.request("PUT", "/v1/profiles/big", json.dumps({"profile": "x" * 5001}).encode(), acme)
    assert status == 400 and answer["error"]["param"] == "profile"
    assert time.perf_counter() - began < 30


def raw_exchange(server: Server, data: bytes, seconds: float = 10, close_after: bool = False) -> bytes:
    """Send `data` on a fresh socket (and nothing more), then read until the server closes (or `seconds`)."""
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=seconds)
    sock.sendall(data)
    if close_after:
        sock.close()
        return b""
    received = b""
    try:
        while chunk := sock.recv(65536):
            received += chunk
    except TimeoutError:
        received += b"<timeout>"
    sock.close()
    return received


def json_error(response: bytes) -> tuple[int, dict]:
    head, _, body = response.partition(b"\r\n\r\n")
    return int(head.split(b" ")[1]), json.loads(body[body.index(b"{"):body.rindex(b"}") + 1])


def test_slow_broken_and_malicious_clients_get_json_errors_and_let_go(owned):
    host = f"Host: 127.0.0.1:{owned.port}\r\n".encode()
    auth = f"Authorization: Bearer {KEYS['acme']}\r\n".encode()
    began = time.monotonic()
    status, error = json_error(raw_exchange(owned, b"POST /v1/chat/completions HTTP/1.1\r\n" + host))  # half headers
    assert status == 408 and error["error"]["code"] == "request_timeout" and time.monotonic() - began < 8
    assert raw_exchange(owned, b"").startswith(b"HTTP/1.1 408")  # a socket that says nothing
    body = chat()
    short = (b"POST /v1/chat/completions HTTP/1.1\r\n" + host + auth + b"Content-Type: application/json\r\n"
             b"Content-Length: %d\r\n\r\n%s" % (len(body), body[:-12]))
    status, error = json_error(raw_exchange(owned, short))  # a body 12 bytes short
    assert status == 408 and error["error"]["code"] == "request_timeout"
    raw_exchange(owned, short[:-40], close_after=True)  # a client that leaves mid-body
    nested = b"[" * 100_000
    status, _, answer = owned.request("POST", "/v1/chat/completions", nested, KEYS["acme"])
    assert status == 400 and answer["error"]["code"] == "invalid_json"
    status, _, answer = owned.request("POST", "/v1/chat/completions", chat(), KEYS["acme"],
                                      headers={"Content-Type": "text/plain"})
    assert status == 415 and answer["error"]["type"] == "invalid_request_error"
    surrogate = b'{"model": "%s", "messages": [{"role": "user", "content": "\\ud800"}]}' % TINY.encode()
    status, _, answer = owned.request("POST", "/v1/chat/completions", surrogate, KEYS["acme"])
    assert status == 400 and answer["error"]["param"] == "messages.0.content", answer

    idle = [socket.create_connection(("127.0.0.1", owned.port), timeout=10) for _ in range(30)]  # over the cap
    refused = 0
    for sock in idle:
        sock.settimeout(0.5)
        try:
            refused += sock.recv(200).startswith(b"HTTP/1.1 503")
        except TimeoutError:
            pass
        sock.close()
    assert refused >= 30 - 24
    assert ask(owned, KEYS["acme"]).choices[0].message.content is not None  # and it serves as before

    time.sleep(0.5)
    log = owned.log.read_text(encoding="utf-8")
    assert "Traceback" not in log and "ClientDisconnect" not in log
    statuses = [json.loads(line)["status"] for line in log.splitlines() if line.startswith('{"event": "request"')]
    assert 499 in statuses  # the client that left mid-body: one line


def test_clients_that_leave_the_queue_free_their_places_at_once(owned):
    acme = KEYS["acme"]
    rows = [owned.stream(acme, 3000) for _ in range(2)]
    try:
        owned.wait_load(rows=2, queued=0)
        queued = [owned.stream(acme, 10) for _ in range(2)]
        owned.wait_load(rows=2, queued=2)
        for sock in queued:
            sock.close()
        deadline = time.monotonic() + 5
        while owned.health()["queued"]:
            assert time.monotonic() < deadline, "cancelled requests stayed in the queue"
            time.sleep(0.05)
        status = owned.request("POST", "/v1/chat/completions", chat(), acme)[0]
        assert status != 429
    finally:
        for sock in rows:
            sock.close()


def test_a_keyless_server_answers_only_its_loopback_name_and_json(model_cache, tmp_path):
    with p2p_serve(tmp_path, model_cache, ["--no-onnx-embedder"], {"P2P_API_KEY": ""}, name="keyless") as (url, log, _):
        server = Server(url, log)
        status, _, answer = server.request("GET", "/v1/models", headers={"Host": "evil.example:80"})
        assert status == 403 and answer["error"]["code"] == "invalid_host"
        assert server.request("GET", "/v1/models", headers={"Host": f"localhost:{server.port}"})[0] == 200
        status, _, answer = server.request("POST", "/v1/chat/completions", chat(),
                                           headers={"Content-Type": "text/plain"})
        assert status == 415
        assert server.request("POST", "/v1/chat/completions", chat())[0] == 200
    result = CliRunner().invoke(app, ["serve", "--host", "0.0.0.0", "--checkpoint", str(tmp_path / "p2p"),
                                      "--cache-dir", str(model_cache)], env={"P2P_API_KEY": ""})
    assert result.exit_code == 2 and "loopback only" in result.stderr, result.output
