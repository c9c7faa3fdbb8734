"""Generation over any OpenAI-compatible chat-completions endpoint (vLLM on a GPU box, `transformers serve`, ...).

Standard library HTTP only: vLLM cannot share our environment (docs/architecture.md §12), so the client must not
pull in an SDK. Requests run `concurrency` at a time; transient failures (connection errors, timeouts, HTTP 408/429/5xx)
are retried with exponential backoff, other HTTP errors are reported at once with the server's message. Results
reach `on_result` on the calling thread as they finish; when a request fails for good, the requests already in
flight still finish and are reported before the error is raised, so the caller's cache keeps all that was done.
The API key is sent only in the Authorization header and is redacted from anything the server echoes back.

`generate(..., models=[...])` names a model per request (vLLM serves each LoRA adapter as a model of its own, see
p2p.vllm_client), and `post` sends any other JSON request of the same API with the same retry rules.
"""

from __future__ import annotations

import http.client
import json
import os
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from email.utils import parsedate_to_datetime
from typing import Any

from tqdm import tqdm

from p2p.models.generation import Conversation, Generation, GenerationError, OnResult, Sampling

#: The longest wait a server's Retry-After header can impose before a retry (seconds).
MAX_RETRY_AFTER = 60.0
#: How much of a server's error message goes into a GenerationError.
MAX_SERVER_MESSAGE = 300
#: HTTP statuses worth retrying: request timeout, rate limit, and every server-side error.
RETRY_STATUSES = frozenset({408, 429}) | frozenset(range(500, 600))

_NETWORK_ERRORS = (urllib.error.URLError, TimeoutError, ConnectionError, http.client.HTTPException)


class HTTPRejection(GenerationError):
    """The server answered with an HTTP error that retrying will not fix; `status` and `server_message` let a
    caller tell one refusal from another (vLLM's "already loaded" is success to an idempotent loader)."""

    def __init__(self, message: str, status: int, server_message: str):
        super().__init__(message)
        self.status, self.server_message = status, server_message

    def __reduce__(self) -> tuple[Any, ...]:  # picklable (Prefect ships task errors between processes)
        return type(self), (str(self), self.status, self.server_message)


class OpenAIBackend:
    """`POST {base_url}/chat/completions`, one request per conversation; the same `generate` as TransformersBackend.

    `retries` is how many times a request is tried in all (1: never retried); between tries it waits
    `backoff * 2**(try - 1)` seconds, or what the server's Retry-After says (at most MAX_RETRY_AFTER). `timeout`
    bounds each socket wait (connecting, then the whole generation, since a non-streaming server sends nothing
    until it is done). Every request carries `sampling.seed` unchanged, so a prompt's text does not depend on its
    position in the batch (servers that honour `seed` then give the same text on a rerun).
    """

    def __init__(self, base_url: str, model: str, *, api_key: str | None = None, concurrency: int = 4,
                 timeout: float = 60.0, retries: int = 3, backoff: float = 1.0, progress: bool = True):
        if concurrency < 1 or retries < 1 or timeout <= 0 or backoff < 0:
            raise ValueError(f"need concurrency >= 1, retries >= 1, timeout > 0, backoff >= 0; got "
                             f"{concurrency=}, {retries=}, {timeout=}, {backoff=}")
        self.base_url = base_url.rstrip("/")
        self.url = f"{self.base_url}/chat/completions"
        self.model, self.model_id = model, f"openai:{model}"
        self.concurrency, self.timeout, self.retries, self.backoff = concurrency, timeout, retries, backoff
        self.progress = progress
        self._api_key = api_key or None
        self._headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self._api_key:
            self._headers["Authorization"] = f"Bearer {self._api_key}"

    @classmethod
    def from_env(cls, base_url: str, model: str, api_key_env: str = "OPENAI_API_KEY", **kwargs: Any) -> OpenAIBackend:
        """The key comes from the environment variable named in params, never from a file in the repository."""
        return cls(base_url, model, api_key=os.environ.get(api_key_env) or None, **kwargs)

    def request_body(self, conversation: Conversation, sampling: Sampling, model: str | None = None) -> dict[str, Any]:
        """The chat-completions JSON; `model` overrides the backend's model for this one request."""
        body: dict[str, Any] = {"model": model or self.model, "messages": conversation,
                                "max_tokens": sampling.max_new_tokens, "temperature": max(sampling.temperature, 0.0),
                                "seed": sampling.seed}
        if not sampling.greedy:
            body["top_p"] = sampling.top_p
        return body

    def generate(self, conversations: Sequence[Conversation], sampling: Sampling,
                 on_result: OnResult | None = None, *, models: Sequence[str] | None = None) -> list[Generation]:
        """One completion per conversation, `concurrency` in flight, in input order; `models[i]` (when given) is the
        model conversation i asks for, so one pool of requests can mix many models (e.g. per-user LoRA adapters)."""
        if models is not None and len(models) != len(conversations):
            raise ValueError(f"{len(conversations)} conversations but {len(models)} model names; give one per "
                             f"conversation")
        results: list[Generation | None] = [None] * len(conversations)
        failures: list[BaseException] = []
        stop = threading.Event()  # set by the first failure: queued requests are then skipped, not sent
        pool = ThreadPoolExecutor(max_workers=self.concurrency, thread_name_prefix="openai-backend")
        try:
            with tqdm(total=len(conversations), desc="generate", unit="request", mininterval=5,
                      disable=not self.progress) as bar:
                futures = {pool.submit(self._complete_unless_stopped, stop, i, conversation, sampling,
                                       None if models is None else models[i]): i
                           for i, conversation in enumerate(conversations)}
                for future in as_completed(futures):
                    error = future.exception()
                    if error is not None:
                        failures.append(error)
                        continue
                    generation = future.result()
                    if generation is None:  # skipped after a failure
                        continue
                    index = futures[future]
                    results[index] = generation
                    bar.update()
                    if on_result is not None:
                        on_result(index, generation)
        finally:
            stop.set()
            pool.shutdown(wait=True, cancel_futures=True)
        if failures:
            first = failures[0]
            if len(failures) > 1:
                first.add_note(f"{len(failures) - 1} more request(s) failed too.")
            raise first
        return results  # type: ignore[return-value]

    def _complete_unless_stopped(self, stop: threading.Event, index: int, conversation: Conversation,
                                 sampling: Sampling, model: str | None) -> Generation | None:
        """`complete`, or None without a request once another request has failed for good."""
        if stop.is_set():
            return None
        try:
            return self.complete(index, conversation, sampling, model)
        except BaseException:
            stop.set()
            raise

    def complete(self, index: int, conversation: Conversation, sampling: Sampling,
                 model: str | None = None) -> Generation:
        """One conversation, tried up to `retries` times; `index` only names it in error messages."""
        model = model or self.model
        payload = json.dumps(self.request_body(conversation, sampling, model)).encode()
        return self._parse(self.post("chat/completions", payload, f"conversation {index}", model), index)

    def post(self, path: str, payload: bytes, what: str, model: str | None = None) -> bytes:
        """POST JSON `payload` to `{base_url}/{path}`, tried up to `retries` times (see the class); the raw answer.

        `what` names the request in errors; `model`, when given, is named as what the server should be serving.
        Raises HTTPRejection for an HTTP error not worth retrying, GenerationError when all tries failed.
        """
        url = f"{self.base_url}/{path}"
        failure = ""
        for attempt in range(1, self.retries + 1):
            retry_after = None
            try:
                return self._post(url, payload)
            except urllib.error.HTTPError as err:
                message = self._server_message(err)
                if err.code not in RETRY_STATUSES:
                    raise HTTPRejection(f"POST {url} rejected {what} with HTTP {err.code}; "
                                        f"{_rejection_hint(err.code)}. Server says: {message}",
                                        err.code, message) from None
                failure, retry_after = f"HTTP {err.code}: {message}", err.headers.get("Retry-After")
            except _NETWORK_ERRORS as err:
                failure = self._network_failure(err)
            if attempt < self.retries:
                time.sleep(retry_wait(attempt, self.backoff, retry_after))
        serving = f" and serving model {model!r}" if model else ""
        raise GenerationError(
            f"POST {url} failed for {what} after {self.retries} tries; last: {failure}. Is the server running at "
            f"{self.base_url}{serving}? If it is slow or busy, raise the timeout (now {self.timeout:g} s) or "
            f"retries, or lower the concurrency (now {self.concurrency}).")

    def _post(self, url: str, payload: bytes) -> bytes:
        request = urllib.request.Request(url, data=payload, headers=self._headers, method="POST")
        with urllib.request.urlopen(request, timeout=self.timeout) as response:
            return response.read()

    def _parse(self, raw: bytes, index: int) -> Generation:
        try:
            answer = json.loads(raw)
            content = answer["choices"][0]["message"]["content"] or ""
            usage = answer.get("usage") or {}
        except (ValueError, KeyError, IndexError, TypeError, AttributeError) as err:
            raise GenerationError(
                f"POST {self.url} answered conversation {index} with something that is not a chat completion "
                f"({type(err).__name__}): {self._clean(raw.decode('utf-8', 'replace'))} Check that base_url is the "
                f"API root, e.g. http://127.0.0.1:8000/v1.") from None
        # Stripped like TransformersBackend's text, so both backends give the same text for the same model.
        return Generation(text=content.strip(), prompt_tokens=int(usage.get("prompt_tokens") or 0),
                          completion_tokens=int(usage.get("completion_tokens") or 0))

    def _server_message(self, err: urllib.error.HTTPError) -> str:
        """The error text the server sent (OpenAI `error.message`, FastAPI `detail`, or the raw body)."""
        try:
            raw = err.read(64 * 1024).decode("utf-8", "replace")
        except (OSError, http.client.HTTPException):
            raw = ""
        try:
            parsed = json.loads(raw)
        except ValueError:
            parsed = None
        if isinstance(parsed, dict):
            error = parsed.get("error")
            found = error.get("message") if isinstance(error, dict) else error
            found = found or parsed.get("detail") or parsed.get("message")
            if found:
                raw = found if isinstance(found, str) else json.dumps(found)
        return self._clean(raw or err.reason or "")

    def _clean(self, text: str) -> str:
        """One line, the API key redacted (servers may echo it), at most MAX_SERVER_MESSAGE characters."""
        text = " ".join(str(text).split())
        if self._api_key:
            text = text.replace(self._api_key, "[api key]")
        return text if len(text) <= MAX_SERVER_MESSAGE else text[:MAX_SERVER_MESSAGE] + "..."

    def _network_failure(self, err: BaseException) -> str:
        reason = err.reason if isinstance(err, urllib.error.URLError) else err
        if isinstance(reason, TimeoutError):
            return f"no answer within the {self.timeout:g} s timeout"
        return self._clean(f"{type(reason).__name__}: {reason}")


def retry_wait(attempt: int, backoff: float, retry_after: str | None) -> float:
    """Seconds to wait after failed try number `attempt` (1-based): Retry-After if the server sent a usable one
    (seconds or an HTTP date, capped at MAX_RETRY_AFTER), else exponential backoff."""
    if retry_after:
        try:
            seconds = float(retry_after)
        except ValueError:
            try:
                seconds = parsedate_to_datetime(retry_after).timestamp() - time.time()
            except (TypeError, ValueError):
                seconds = None
        if seconds is not None and seconds == seconds:  # not NaN
            return min(max(seconds, 0.0), MAX_RETRY_AFTER)
    return backoff * 2 ** (attempt - 1)


def _rejection_hint(status: int) -> str:
    if status in (401, 403):
        return "check the API key (read from the environment variable named in params)"
    if status == 404:
        return "check base_url (the API root, e.g. http://127.0.0.1:8000/v1) and the model name"
    return "check the model name and the request (max_tokens, prompt length); retrying will not help"
