"""A headless Chromium driven over the Chrome DevTools Protocol (a WebSocket and JSON), for the playground's test.

    with Browser(tmp_path) as browser:
        browser.call("Page.navigate", url="http://127.0.0.1:8000/")
        browser.evaluate("document.title")
        browser.events  # every CDP event received so far, e.g. Network.requestWillBeSent

Chromium comes from the system (Debian's `chromium`; scripts/test_deps.sh, run by `make test`, installs it where it
can); without it the caller skips. Only the standard library and `websockets` are needed, no WebDriver.
"""

from __future__ import annotations

import base64
import itertools
import json
import os
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from websockets.sync.client import connect

CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-default-apps", "--disable-extensions", "--window-size=1280,900")


def find_chromium() -> str | None:
    return next((path for name in CANDIDATES if (path := shutil.which(name))), None)


class Browser:
    def __init__(self, profile_dir: Path, binary: str):
        self.profile_dir, self.binary = profile_dir, binary
        self.events: list[dict[str, Any]] = []
        self._ids = itertools.count(1)

    def __enter__(self) -> Browser:
        self.profile_dir.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen([self.binary, *FLAGS, f"--user-data-dir={self.profile_dir}",
                                         "--remote-debugging-port=0", "about:blank"],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            port_file, deadline = self.profile_dir / "DevToolsActivePort", time.monotonic() + 60
            while not (port_file.is_file() and port_file.read_text().strip()):
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"{self.binary} did not open its DevTools port")
                time.sleep(0.1)
            port = port_file.read_text().split()[0]
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as response:
                page = next(t for t in json.load(response) if t["type"] == "page")
            self.socket = connect(page["webSocketDebuggerUrl"], max_size=None, open_timeout=30)
        except BaseException:  # never leave a browser running behind a failed start
            self.process.kill()
            self.process.wait()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.socket.close()
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        """Send one command and wait for its answer; events arriving meanwhile are kept in `events`."""
        message_id = next(self._ids)
        self.socket.send(json.dumps({"id": message_id, "method": method, "params": params}))
        while True:
            message = json.loads(self.socket.recv(timeout=60))
            if message.get("id") == message_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message["result"]
            self.events.append(message)

    def evaluate(self, expression: str) -> Any:
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def screenshot(self, path: Path) -> Path:
        path.write_bytes(base64.b64decode(self.call("Page.captureScreenshot", format="png")["data"]))
        return path


def browse(url: str, wanted: str, profile: Path, screenshot: str, seconds: float = 120) -> str:
    """Load `url` in headless Chromium until its page text contains `wanted` (within `seconds`); returns the text.
    With P2P_SCREENSHOTS set, the page is saved there as `screenshot` (docs/images holds the ones the docs show)."""
    binary = find_chromium()
    if binary is None:
        pytest.skip("no Chromium for the browser check (scripts/test_deps.sh installs it)")
    with Browser(profile, binary) as browser:
        deadline, text, loaded = time.monotonic() + seconds, "", 0.0
        while wanted not in text:
            assert time.monotonic() < deadline, f"{url} never showed {wanted!r}; it showed:\n{text[:3000]}"
            if time.monotonic() - loaded > 15:  # (re)load: an empty runs page does not poll for new runs
                browser.call("Page.navigate", url=url)
                loaded = time.monotonic()
            time.sleep(1)
            text = browser.evaluate("document.body.innerText") or ""
        if os.environ.get("P2P_SCREENSHOTS"):
            time.sleep(2)  # the charts settle
            browser.screenshot(Path(os.environ["P2P_SCREENSHOTS"]) / screenshot)
        # Tables render only their visible rows: scroll every scrolling box through, collecting each line shown.
        shown = browser.evaluate(SCROLL_THROUGH)
    return "\n".join([text, *shown])


SCROLL_THROUGH = """(async () => {
  const seen = new Set();
  const boxes = [...document.querySelectorAll('*')].filter(e => e.scrollHeight > e.clientHeight + 20 &&
                  ['auto', 'scroll'].includes(getComputedStyle(e).overflowY));
  for (const box of boxes) {
    for (let y = 0; y <= box.scrollHeight; y += 200) {
      box.scrollTop = y;
      await new Promise(done => setTimeout(done, 100));
      document.body.innerText.split('\\n').forEach(line => seen.add(line));
    }
  }
  return [...seen];
})()"""
