"""Serving per-user LoRA adapters from a vLLM server: export them, load them at runtime, answer each request with
its own user's adapter.

vLLM cannot share our environment (docs/architecture.md §12), so everything goes over its OpenAI-compatible HTTP API,
through OpenAIBackend's request and retry machinery. The server runs with LoRA enabled and runtime loading allowed:

    VLLM_ALLOW_RUNTIME_LORA_UPDATING=True vllm serve MODEL --enable-lora --max-lora-rank 8 --max-loras 16 \\
        --max-cpu-loras 256

Each generated adapter is written as a PEFT directory under a directory the server can read (at the same path, or
mounted elsewhere: `server_dir`), loaded once through `POST /v1/load_lora_adapter`, and named as the `model` of
every chat completion that should use it. Requests for many different adapters go out together through one pool of
`concurrency` requests; vLLM batches up to `--max-loras` distinct adapters per step and queues the rest. (The
authors' code answered one adapter's queries at a time.)

Adapter names carry a content hash of the weights, so a name never stands for two different adapters: a retrained
hypernetwork cannot be answered by a stale adapter that the server still holds under an old name, and a name the
server already has ("has already been loaded", HTTP 400) is the very adapter we meant to load.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from p2p.lora.hooks import Adapters, LoraShape, TargetLayout, adapter_state_dict
from p2p.lora.peft import CONFIG_NAME, WEIGHTS_NAME, export_adapter
from p2p.models.generation import Conversation, Generation, GenerationError, OnResult, Sampling
from p2p.models.openai_backend import HTTPRejection, OpenAIBackend

#: Hex digits of the weights' sha256 in an adapter name: enough that two adapters never share a name by chance.
DIGEST_CHARS = 16
#: Longest user id kept in an adapter name (the digest, not the id, makes the name unique).
MAX_USER_CHARS = 48
_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")
#: vLLM's refusal to load a name twice ("The lora adapter 'x' has already been loaded.").
_ALREADY_LOADED = re.compile(r"already\s+(been\s+)?loaded", re.IGNORECASE)

SERVE_COMMAND = ("VLLM_ALLOW_RUNTIME_LORA_UPDATING=True vllm serve MODEL --enable-lora --max-lora-rank 8 "
                 "--max-loras 16 --max-cpu-loras 256")


@dataclass(frozen=True)
class ServedAdapter:
    """One exported adapter: the name the server will know it by, and its PEFT directory here."""

    name: str
    path: Path


def adapter_digest(layout: TargetLayout, lora: LoraShape, adapters: Adapters, row: int, base_model: str) -> str:
    """sha256 of what the server computes with: base model, rank and scaling, and the fp32 weights as exported."""
    digest = hashlib.sha256(json.dumps({"base_model": base_model, "rank": lora.rank, "alpha": lora.alpha,
                                        "rslora": lora.rslora}, sort_keys=True).encode())
    for name, tensor in sorted(adapter_state_dict(layout, adapters, row).items()):
        digest.update(name.encode())
        digest.update(tensor.float().cpu().numpy().tobytes())
    return digest.hexdigest()


def adapter_name(kind: str, user: str, digest: str) -> str:
    """`<kind>-<user>-<digest>` in letters, digits, `_`, `.` and `-` only: safe as a model name and a directory."""
    def safe(text: str, limit: int) -> str:
        return _UNSAFE.sub("_", text).strip("._-")[:limit] or "x"

    return f"{safe(kind, 32)}-{safe(user, MAX_USER_CHARS)}-{digest[:DIGEST_CHARS]}"


def export_for_serving(out_dir: str | os.PathLike, layout: TargetLayout, lora: LoraShape, adapters: Adapters,
                       users: Sequence[str], base_model: str, kind: str) -> list[ServedAdapter]:
    """Row i of `adapters` (made for `users[i]`) as a PEFT directory `<out_dir>/<name>/`; one ServedAdapter per row.

    A directory already there is skipped: its name holds the digest of its weights and export_adapter writes
    atomically, so an existing one is this very adapter. `kind` says what made it (p2p, oppu, ...).
    """
    if len(users) != adapters.batch_size:
        raise ValueError(f"{adapters.batch_size} adapters but {len(users)} users; give the user of every row")
    out: list[ServedAdapter] = []
    for row, user in enumerate(users):
        name = adapter_name(kind, user, adapter_digest(layout, lora, adapters, row, base_model))
        path = Path(out_dir) / name
        if not ((path / CONFIG_NAME).is_file() and (path / WEIGHTS_NAME).is_file()):
            export_adapter(path, layout, lora, adapters, base_model, row=row)
        out.append(ServedAdapter(name, path))
    return out


class VLLMLoraClient:
    """Load adapters into a vLLM server at runtime and generate with a different adapter per request.

    `backend` talks to the server (base_url, key, concurrency, timeout, retries); its model is the base model.
    `local_dir` is where adapters are exported here; the server reads them at `server_dir` (default: the same path,
    e.g. a shared disk), so a server on another machine can mount the directory wherever it likes.
    """

    def __init__(self, backend: OpenAIBackend, local_dir: str | os.PathLike, server_dir: str | None = None):
        self.backend = backend
        self.local_dir = Path(local_dir).resolve()
        self.server_dir = server_dir
        self._loaded: set[str] = set()  # names this client has loaded (or found loaded) and not unloaded

    def server_path(self, path: str | os.PathLike) -> str:
        """Where the server finds adapter directory `path` (which lies under `local_dir` when the server mounts it
        elsewhere)."""
        path = Path(path).resolve()
        if self.server_dir is None:
            return str(path)
        try:
            relative = path.relative_to(self.local_dir)
        except ValueError:
            raise ValueError(f"{path} is not under the adapter directory {self.local_dir}, which the server sees at "
                             f"{self.server_dir}; export adapters there") from None
        return str(PurePosixPath(self.server_dir, *relative.parts))

    def load(self, adapters: Sequence[ServedAdapter]) -> None:
        """Make every adapter available under its name (idempotent), `concurrency` loads at a time.

        The first refusal stops the loads not yet sent; it is raised once those in flight have finished.
        """
        todo = list({a.name: a for a in adapters if a.name not in self._loaded}.values())
        if not todo:
            return
        stop = threading.Event()

        def load_one(adapter: ServedAdapter) -> bool:
            if stop.is_set():
                return False
            try:
                self._load_one(adapter)
            except BaseException:
                stop.set()
                raise
            return True

        with ThreadPoolExecutor(max_workers=min(self.backend.concurrency, len(todo)),
                                thread_name_prefix="vllm-lora-load") as pool:
            futures = [pool.submit(load_one, adapter) for adapter in todo]
        errors = [error for future in futures if (error := future.exception()) is not None]
        self._loaded.update(a.name for a, f in zip(todo, futures) if f.exception() is None and f.result())
        if errors:
            if len(errors) > 1:
                errors[0].add_note(f"{len(errors) - 1} more adapter(s) failed to load too.")
            raise errors[0]

    def unload(self, names: Sequence[str]) -> None:
        """Free the server of these adapters; a name it does not hold (HTTP 404) is already unloaded."""
        for name in dict.fromkeys(names):
            try:
                self.backend.post("unload_lora_adapter", json.dumps({"lora_name": name}).encode(),
                                  f"adapter {name!r}")
            except HTTPRejection as err:
                if err.status != 404:
                    raise GenerationError(f"vLLM at {self.backend.base_url} refused to unload adapter {name!r} "
                                          f"(HTTP {err.status}): {err.server_message}") from None
            self._loaded.discard(name)

    def generate(self, conversations: Sequence[Conversation], adapter_names: Sequence[str], sampling: Sampling,
                 on_result: OnResult | None = None) -> list[Generation]:
        """Conversation i answered with adapter `adapter_names[i]` (loaded before), results in input order. All
        requests share one pool, so as many different adapters are in flight as the concurrency allows."""
        return self.backend.generate(conversations, sampling, on_result, models=list(adapter_names))

    def _load_one(self, adapter: ServedAdapter) -> None:
        where = self.server_path(adapter.path)
        payload = json.dumps({"lora_name": adapter.name, "lora_path": where}).encode()
        try:
            self.backend.post("load_lora_adapter", payload, f"adapter {adapter.name!r} at {where}")
        except HTTPRejection as err:
            if err.status == 400 and _ALREADY_LOADED.search(err.server_message):
                return  # the name holds the weights' digest: what the server has is this adapter
            raise GenerationError(
                f"vLLM at {self.backend.base_url} refused to load adapter {adapter.name!r} from {where} "
                f"(HTTP {err.status}): {err.server_message.rstrip('.')}. {self._refusal_hint(err)}") from None

    def _refusal_hint(self, err: HTTPRejection) -> str:
        if err.status in (401, 403):
            return "Check the API key (read from the environment variable named in generation.openai.api_key_env)."
        if err.status == 404 and err.server_message.strip().lower() == "not found":  # no such route
            return (f"The server has no /v1/load_lora_adapter endpoint: start vLLM with runtime LoRA loading "
                    f"allowed, `{SERVE_COMMAND}` (a server other than vLLM cannot serve per-user adapters).")
        if err.status == 404:
            return (f"The server cannot read that directory: adapters are written to {self.local_dir} "
                    f"(generation.openai.adapter_dir), which the vLLM machine must see at the same path or at "
                    f"generation.openai.lora_dir_on_server (now {self.server_dir or 'the same path'}).")
        return (f"Check that the server runs with --enable-lora and a --max-lora-rank of at least the adapters' rank "
                f"(lora.rank in params), serves the base model the adapter was made for, and can read the "
                f"directory; the command: `{SERVE_COMMAND}`.")
