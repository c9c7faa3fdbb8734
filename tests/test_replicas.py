"""Replicas share their users: two real `p2p serve` processes on loopback over one real PostgreSQL server (started
for the test, tests/postgres.py), as N replicas behind a load balancer would be. A profile stored, replaced or
deleted through one replica holds on the other at its next request."""

from __future__ import annotations

import json
import os
import re
import sys
import time
import urllib.error
import urllib.request
from contextlib import ExitStack
from pathlib import Path

import openai
import pytest
from conftest import TINY, build_smoke_checkpoint, free_port, running_server

PROFILE = "I love dystopian science fiction and slow thought-provoking films; I never watch romantic comedies."
OTHER_PROFILE = "Give me loud action movies with car chases, explosions and a twist ending every time."
QUESTION = "Recommend me a film for tonight."
KEY = "replica-key-0123456789"


def send(url: str, method: str, body: dict | None = None) -> tuple[int, dict]:
    request = urllib.request.Request(url, method=method, data=json.dumps(body).encode() if body else None,
                                     headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as err:
        return err.code, json.load(err)


def answer(client: openai.OpenAI, **extra) -> str:
    return client.chat.completions.create(model=TINY, messages=[{"role": "user", "content": QUESTION}],
                                          max_tokens=16, temperature=0, extra_body=extra).choices[0].message.content


@pytest.fixture(scope="module")
def replicas(postgres, model_cache: Path, tmp_path_factory: pytest.TempPathFactory):
    """Two servers over the smoke checkpoint, both storing profiles in one PostgreSQL database: their base URLs."""
    root = tmp_path_factory.mktemp("replicas")
    checkpoint = build_smoke_checkpoint(root / "p2p", model_cache)
    database = postgres.new_database()
    env = {**os.environ, "P2P_TEST_REPLICA_KEY": KEY, "HF_HUB_OFFLINE": "1"}
    urls = []
    with ExitStack() as stack:
        for name in ("a", "b"):
            port = free_port()
            command = [sys.executable, "-m", "p2p.cli", "serve", "--checkpoint", str(checkpoint), "--cache-dir",
                       str(model_cache), "--port", str(port), "--device", "cpu", "--profiles-db", database,
                       "--api-key-env", "P2P_TEST_REPLICA_KEY", "--max-batch", "2"]
            url = f"http://127.0.0.1:{port}"
            stack.enter_context(running_server(command, f"{url}/health", Path(__file__).parents[1], env,
                                               root / f"serve-{name}.log", seconds=180))
            urls.append(url)
        yield urls


def test_a_profile_stored_replaced_or_deleted_through_one_replica_holds_on_the_other(replicas):
    a, b = replicas
    client_a, client_b = (openai.OpenAI(base_url=f"{url}/v1", api_key=KEY, max_retries=0, timeout=60)
                          for url in (a, b))
    inline = answer(client_a, profile=PROFILE)
    assert inline != answer(client_a)  # the profile changes the answer: "personalised" can be seen

    assert send(f"{a}/v1/profiles/alice", "PUT", {"profile": PROFILE})[0] == 200
    assert send(f"{b}/v1/profiles/alice", "GET")[1]["profile"] == PROFILE
    assert answer(client_b, user="alice") == inline  # stored through A, personalised on B

    assert send(f"{a}/v1/profiles/alice", "PUT", {"profile": OTHER_PROFILE})[0] == 200
    replaced = answer(client_b, user="alice")
    assert replaced == answer(client_a, profile=OTHER_PROFILE) and replaced != inline

    settles(b, 1)  # B's sweep (every 5 s) drops the adapter of the version A replaced; the current one stays

    assert send(f"{a}/v1/profiles/alice", "DELETE")[0] == 200
    assert send(f"{b}/v1/profiles/alice", "GET")[0] == 404
    with pytest.raises(openai.NotFoundError, match="alice"):
        answer(client_b, user="alice")  # deleted through A: B has no user to answer for, cached adapter or not
    settles(b, 0)  # ... and keeps nothing made from her profile

    assert send(f"{a}/v1/profiles/alice", "PUT", {"profile": PROFILE})[0] == 200  # her first text again
    again = client_b.chat.completions.create(model=TINY, messages=[{"role": "user", "content": QUESTION}],
                                             max_tokens=16, temperature=0, extra_body={"user": "alice"})
    assert again.p2p["adapter_cached"] is False and again.choices[0].message.content == inline


def settles(url: str, adapters: int, seconds: float = 15) -> None:
    """Until the replica at `url` holds exactly `adapters` adapters in memory (it may hold stale ones for a sweep)."""
    deadline = time.monotonic() + seconds
    while (held := adapters_cached(url)) != adapters:
        assert time.monotonic() < deadline, f"{url} holds {held} adapters, not {adapters}"
        time.sleep(0.5)


def adapters_cached(url: str) -> float:
    request = urllib.request.Request(f"{url}/metrics", headers={"Authorization": f"Bearer {KEY}"})
    with urllib.request.urlopen(request, timeout=10) as response:
        text = response.read().decode()
    return float(re.search(r"^p2p_adapters_cached (\S+)$", text, re.MULTILINE).group(1))
