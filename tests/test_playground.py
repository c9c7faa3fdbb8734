"""The playground page at `/`, in a real headless Chromium: a person pastes a profile and a question, and the base
model's and the personalised answers stream in side by side, with the adapter's milliseconds. Nothing is fetched
from anywhere but the server (the page must work offline)."""

from __future__ import annotations

import json
import re
import time

import openai
import pytest
from cdp import Browser, find_chromium
from conftest import TINY

PROFILE = "I love dystopian science fiction and slow thought-provoking films; I never watch romantic comedies."
QUESTION = "Recommend me a film for tonight."

STATE = """(() => { const $ = (id) => document.getElementById(id); return JSON.stringify({
  base: $('base-answer').textContent, baseDone: $('base-answer').dataset.done,
  p2p: $('p2p-answer').textContent, p2pDone: $('p2p-answer').dataset.done,
  meta: $('p2p-meta').textContent, baseMeta: $('base-meta').textContent}); })()"""


def test_the_playground_streams_both_answers_side_by_side(p2p_server, tmp_path):
    binary = find_chromium()
    if binary is None:
        pytest.skip("no Chromium on this machine (apt-get install chromium; `make test` installs it as root)")
    with Browser(tmp_path / "chromium-profile", binary) as browser:
        browser.call("Network.enable")
        browser.call("Page.enable")
        browser.call("Page.navigate", url=f"{p2p_server.url}/")
        deadline = time.monotonic() + 30
        while browser.evaluate("document.readyState") != "complete" or not browser.evaluate(
                "!!document.getElementById('go')"):
            assert time.monotonic() < deadline, "the page did not load"
            time.sleep(0.1)
        fill = {"profile": PROFILE, "question": QUESTION, "key": p2p_server.key, "max-tokens": "12"}
        browser.evaluate(";".join(f"document.getElementById({k!r}).value = {json.dumps(v)}" for k, v in fill.items()))
        browser.evaluate("document.getElementById('go').click()")
        deadline = time.monotonic() + 60
        while not ((state := json.loads(browser.evaluate(STATE))).get("baseDone") and state.get("p2pDone")):
            assert time.monotonic() < deadline, f"the answers did not both arrive: {state}"
            time.sleep(0.2)
        shot = browser.screenshot(tmp_path / "playground.png")
    print(f"screenshot: {shot}")
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 10_000

    client = openai.OpenAI(base_url=p2p_server.api, api_key=p2p_server.key, max_retries=0)

    def api(profile: str | None) -> str:
        return client.chat.completions.create(
            model=TINY, messages=[{"role": "user", "content": QUESTION}], max_tokens=12, temperature=0,
            extra_body={"profile": profile} if profile else {}).choices[0].message.content

    assert state["base"] == api(None) and state["p2p"] == api(PROFILE) and state["base"] != state["p2p"]
    assert "ms" in state["meta"] and ("adapter made in" in state["meta"] or "adapter from cache" in state["meta"])
    assert "error" not in state["meta"] + state["baseMeta"]
    # Both streams ended with their usage (the tiny base model's tokens are special ones, so its text is empty).
    assert re.search(r"\b\d+ tokens", state["meta"]) and re.search(r"\b\d+ tokens", state["baseMeta"])
    requested = [event["params"]["request"]["url"] for event in browser.events
                 if event.get("method") == "Network.requestWillBeSent"]
    assert requested and all(url.startswith(p2p_server.url) for url in requested), requested
