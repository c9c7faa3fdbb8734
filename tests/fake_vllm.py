"""A real HTTP server on 127.0.0.1 that imitates the parts of vLLM's OpenAI server that serve LoRA adapters.

    with FakeVLLM(base_model="base", delay=0.2) as server:
        server.url                      # the API root (…/v1), as a client's base_url
        server.loaded                   # adapter name -> lora_path, as the server holds them
        server.requests                 # [(path, parsed JSON body), ...] in arrival order
        server.max_in_flight            # most chat completions answered at the same moment
        server.max_adapters_in_flight   # most distinct adapters among them

What it imitates (vllm/entrypoints/openai/serving_models.py and api_server.py):
- `POST /v1/load_lora_adapter {"lora_name", "lora_path"}`: 200 with a plain-text success line; 400 "has already been
  loaded" for a name it holds; 404 "No adapter found" when the path holds no adapter_config.json; 400 when the
  adapter's rank exceeds `max_lora_rank`. With `runtime_updates=False` (no VLLM_ALLOW_RUNTIME_LORA_UPDATING) the
  route does not exist: FastAPI's 404 `{"detail": "Not Found"}`.
- `POST /v1/unload_lora_adapter {"lora_name"}`: 200, or 404 "cannot be found".
- `POST /v1/chat/completions`: `model` must be the base model or a loaded adapter (else 404 "does not exist"); the
  answer names the adapter it ran with: "<model> says: <last message>".
- `POST /v1/completions` with token-id prompts (one list, or a list of lists: one choice per prompt), `echo` and
  `logprobs`: each choice's `logprobs.token_logprobs` holds, for every prompt token, its log-probability given the
  tokens before it (None for the first), then the one generated token's. The log-probabilities come from
  `scorer(model, token_ids)` (one value or None per token), by default the scripted `scripted_logprobs`:
  -(token % 10 + 1) / 8, so sums can be checked by hand. `prompt_logprobs=False`: a server that ignores echo and
  logprobs (`"logprobs": null`); `completions=False`: no such route (FastAPI's 404), as `transformers serve`.
`mounts` maps a path prefix as the server sees it to the directory here (an adapter directory mounted elsewhere on
the server machine); `fail_loads` answers the next that many load requests with HTTP 503.
"""

from __future__ import annotations

import itertools
import json
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

from loopback import LoopbackServer

#: The one token the fake "generates" after an echoed prompt, and its log-probability.
GENERATED_TOKEN, GENERATED_LOGPROB = 0, -1.0


def scripted_logprobs(model: str, tokens: list[int]) -> list[float | None]:
    """The default log-probabilities: -(token % 10 + 1) / 8 per token after the first (whatever the model)."""
    return [None] + [-(t % 10 + 1) / 8 for t in tokens[1:]]


class FakeVLLM(LoopbackServer):
    def __init__(self, base_model: str = "base", *, delay: float = 0.0, runtime_updates: bool = True,
                 max_lora_rank: int = 8, mounts: dict[str, Path] | None = None, fail_loads: int = 0,
                 error_style: str = "nested",
                 scorer: Callable[[str, list[int]], list[float | None]] = scripted_logprobs,
                 prompt_logprobs: bool = True, completions: bool = True):
        self.base_model, self.delay, self.runtime_updates = base_model, delay, runtime_updates
        self.scorer, self.prompt_logprobs, self.completions_route = scorer, prompt_logprobs, completions
        self.max_lora_rank, self.mounts, self.fail_loads = max_lora_rank, mounts or {}, fail_loads
        self.error_style = error_style  # "nested": {"error": {...}} (vLLM >= 0.10); "flat": {"object": "error", ...}
        self.loaded: dict[str, str] = {}
        self.requests: list[tuple[str, dict[str, Any]]] = []
        self.in_flight: dict[int, str] = {}  # request number -> model, while it is being answered
        self.max_in_flight = 0
        self.max_adapters_in_flight = 0
        self._ids = itertools.count()
        self._lock = threading.Lock()
        super().__init__(_Handler)

    @property
    def url(self) -> str:
        return self.address + "/v1"

    def bodies(self, path: str) -> list[dict[str, Any]]:
        return [body for seen, body in self.requests if seen == path]

    def error(self, status: int, message: str, kind: str) -> tuple[int, Any]:
        if self.error_style == "flat":
            return status, {"object": "error", "message": message, "type": kind, "param": None, "code": status}
        return status, {"error": {"message": message, "type": kind, "param": None, "code": status}}

    def local(self, lora_path: str) -> Path:
        """The directory here that the server's path `lora_path` stands for."""
        for prefix, directory in self.mounts.items():
            if lora_path.startswith(prefix.rstrip("/") + "/"):
                return directory / lora_path[len(prefix.rstrip("/")) + 1:]
        return Path(lora_path)

    def handle(self, path: str, body: dict[str, Any]) -> tuple[int, Any]:
        with self._lock:
            self.requests.append((path, body))
        if path == "/v1/chat/completions":
            return self.chat(body)
        if path == "/v1/completions" and self.completions_route:
            return self.complete(body)
        if path in ("/v1/load_lora_adapter", "/v1/unload_lora_adapter") and self.runtime_updates:
            with self._lock:
                return self.load(body) if path.endswith("/load_lora_adapter") else self.unload(body)
        return 404, {"detail": "Not Found"}

    def load(self, body: dict[str, Any]) -> tuple[int, Any]:
        name, lora_path = body.get("lora_name"), body.get("lora_path")
        if self.fail_loads > 0:
            self.fail_loads -= 1
            return self.error(503, "engine is busy", "ServiceUnavailableError")
        if not name or not lora_path:
            return self.error(400, "Both 'lora_name' and 'lora_path' must be provided.", "InvalidUserInput")
        if name in self.loaded:
            return self.error(400, f"The lora adapter '{name}' has already been loaded. If you want to load the "
                                   f"adapter in place, set 'load_inplace' to true.", "InvalidUserInput")
        config = self.local(lora_path) / "adapter_config.json"
        if not config.is_file():
            return self.error(404, f"Loading lora {name} failed: No adapter found for {lora_path}", "NotFoundError")
        rank = json.loads(config.read_text())["r"]
        if rank > self.max_lora_rank:
            return self.error(400, f"LoRA rank {rank} is greater than max_lora_rank {self.max_lora_rank}.",
                              "BadRequestError")
        self.loaded[name] = lora_path
        return 200, f"Success: LoRA adapter '{name}' added successfully."

    def unload(self, body: dict[str, Any]) -> tuple[int, Any]:
        name = body.get("lora_name")
        if name not in self.loaded:
            return self.error(404, f"The lora adapter '{name}' cannot be found.", "NotFoundError")
        del self.loaded[name]
        return 200, f"Success: LoRA adapter '{name}' removed successfully."

    def chat(self, body: dict[str, Any]) -> tuple[int, Any]:
        model = body.get("model")
        with self._lock:
            if model != self.base_model and model not in self.loaded:
                return self.error(404, f"The model `{model}` does not exist.", "NotFoundError")
            number = next(self._ids)
            self.in_flight[number] = model
            self.max_in_flight = max(self.max_in_flight, len(self.in_flight))
            adapters = {m for m in self.in_flight.values() if m != self.base_model}
            self.max_adapters_in_flight = max(self.max_adapters_in_flight, len(adapters))
        try:
            time.sleep(self.delay)
        finally:
            with self._lock:
                del self.in_flight[number]
        text = f"{model} says: {body['messages'][-1]['content']}"
        return 200, {"object": "chat.completion", "model": model, "choices": [
            {"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": text}}],
            "usage": {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8}}

    def complete(self, body: dict[str, Any]) -> tuple[int, Any]:
        model, prompt = body.get("model"), body.get("prompt")
        if model != self.base_model and model not in self.loaded:
            return self.error(404, f"The model `{model}` does not exist.", "NotFoundError")
        prompts = prompt if isinstance(prompt, list) and prompt and isinstance(prompt[0], list) else [prompt]
        if not all(isinstance(p, list) and p and all(isinstance(t, int) for t in p) for p in prompts):
            return self.error(400, "this fake takes token-id prompts only", "BadRequestError")
        choices = []
        for index, tokens in enumerate(prompts):
            logprobs = None
            if self.prompt_logprobs and body.get("echo") and body.get("logprobs") is not None:
                values = list(self.scorer(model, tokens)) + [GENERATED_LOGPROB]
                logprobs = {"tokens": [f"t{t}" for t in tokens] + [f"t{GENERATED_TOKEN}"], "token_logprobs": values,
                            "top_logprobs": [None] + [{} for _ in values[1:]], "text_offset": list(range(len(values)))}
            choices.append({"index": index, "text": f"t{GENERATED_TOKEN}", "logprobs": logprobs,
                            "finish_reason": "length"})
        n = sum(len(p) for p in prompts)
        return 200, {"object": "text_completion", "model": model, "choices": choices,
                     "usage": {"prompt_tokens": n, "completion_tokens": len(prompts), "total_tokens": n + len(prompts)}}


class _Handler(BaseHTTPRequestHandler):
    def do_POST(self) -> None:  # noqa: N802 (the stdlib's name)
        fake: FakeVLLM = self.server.owner  # type: ignore[attr-defined]
        raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        status, answer = fake.handle(self.path, json.loads(raw or b"{}"))
        data = answer.encode() if isinstance(answer, str) else json.dumps(answer).encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain" if isinstance(answer, str) else "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args) -> None:  # keep test output quiet
        pass
