"""The HTTP face of `p2p serve`: OpenAI's chat completions with a profile in the request, stored profiles, health,
metrics and the playground page.

A request's personalisation, in order: an inline `profile` (with an optional `task`), else the `user` field naming a
profile stored with `PUT /v1/profiles/{user}` (a user with none is a 404, never the base model in disguise), else
none: the base model answers. The engine (p2p.server.engine) makes the adapter when the request gets its batch row,
so `p2p.adapter_ms` is the adapter's own time, not the wait for a row.

Safe by default (docs/serving.md, "Hostile clients"): every failure is an OpenAI error object, a 4xx naming the field
for the client's mistakes, and the server keeps serving; bodies are size-capped and time-limited before they are
parsed, prompts and profiles size-capped before they are tokenized or embedded; adapters are made on their own worker
thread within a time budget, so neither a big profile nor a long prompt stalls the batch. With keys configured every
`/v1` route and `/metrics` want `Authorization: Bearer <key>` (compared in constant time); a key belongs to an owner,
who reads, replaces, deletes and chats as only its own stored users (p2p.server.keys). Without keys the server is a
loopback-only, single-owner server: it answers only requests whose `Host` is its loopback address. Logs and metrics
carry ids, sizes and timings, never profile texts, prompts or answers.
"""

from __future__ import annotations

import asyncio
import copy
import json
import logging
import secrets
import threading
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect

from p2p.hyper.personalize import Personalizer
from p2p.models.generation import Sampling, chat_ids
from p2p.server.adapters import AdapterCache, Made, inline_key, stored_key
from p2p.server.engine import PREFILL_BURST_S, PREFILL_SHARE, Delta, Engine, Event, Failed, Finished, Job, QueueFull
from p2p.server.keys import Caller, Keys
from p2p.server.profiles import open_store
from p2p.server.prometheus import Metrics
from p2p.server.protocol import (
    ApiError,
    ChatRequest,
    ProfileBody,
    chunk,
    completion,
    completion_id,
    parameter_error,
    parse,
    path_user,
    require_chars_fit,
    require_known_task,
    require_profile_fits,
    require_served_model,
    require_tokens_fit,
    route_error,
    token_budget,
    usage,
)

log = logging.getLogger("p2p.serve")
PLAYGROUND = Path(__file__).with_name("playground.html")


@dataclass(frozen=True)
class Settings:
    model_name: str  # what `model` must say, and what /v1/models lists
    profiles_url: str  # the profile store: a SQLite path or URL, or a PostgreSQL URL (p2p.server.profiles)
    keys: Keys = field(default_factory=Keys)  # none: the loopback-only, single-owner server
    max_batch: int = 16
    max_queue: int = 64
    prefill_share: float = PREFILL_SHARE  # of the engine's time, for prefills of rows that leave at once (engine.py)
    prefill_burst: float = PREFILL_BURST_S  # seconds of prefill lent ahead of that share
    adapter_cache: int = 256
    max_body_bytes: int = 2_000_000
    max_tokens: int = 1024  # the most a request may ask for
    default_max_tokens: int = 256  # when it asks for nothing
    max_profile_chars: int = 32_000  # the most profile text one request (or PUT) may bring to be embedded
    body_timeout: float = 10.0  # seconds to receive a whole body
    adapter_timeout: float = 10.0  # seconds a request may wait for its adapter (its turn on the worker included)
    sweep_seconds: float = 5.0  # how often adapters made stale through another replica leave memory


def create_app(personalizer: Personalizer, settings: Settings) -> FastAPI:
    """The server around a loaded Personalizer; the engine thread runs while the app's lifespan does."""
    metrics = Metrics()
    engine = Engine(personalizer.model, personalizer.tokenizer, personalizer.hyper.layout, personalizer.meta.lora,
                    max_batch=settings.max_batch, max_queue=settings.max_queue,
                    prefill_share=settings.prefill_share, prefill_burst=settings.prefill_burst, on_step=metrics.step)
    adapters = AdapterCache(settings.adapter_cache)
    # One worker makes adapters (embedding + hypernetwork forward), off the engine thread. `slots` bounds the jobs
    # given to it and not yet done, as the engine's queue is bounded: a job whose request gave up still holds one.
    adapter_worker = ThreadPoolExecutor(1, thread_name_prefix="p2p-adapters")
    slots = threading.BoundedSemaphore(settings.max_batch + settings.max_queue)
    # The HTTP side tokenizes with its own copy of the tokenizer: the engine's decodes never wait for a prompt.
    tokenizer, tokenizer_lock = copy.deepcopy(personalizer.tokenizer), threading.Lock()
    store = open_store(settings.profiles_url)
    metrics.queue_depth.set_function(lambda: engine.load()[1])
    metrics.batch_rows.set_function(lambda: engine.load()[0])
    metrics.adapters_cached.set_function(lambda: len(adapters))
    context = int(getattr(personalizer.model.config, "max_position_embeddings", 0) or 0)
    started = int(time.time())

    async def sweep() -> None:
        while True:
            await asyncio.sleep(settings.sweep_seconds)
            try:
                await asyncio.to_thread(adapters.sweep, store.versions)
            except Exception as err:  # the store is unreachable for a moment: the next sweep tries again
                log.warning(json.dumps({"event": "sweep_failed", "error": type(err).__name__}))

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine.start()
        sweeper = asyncio.create_task(sweep())
        try:
            yield
        finally:
            sweeper.cancel()
            engine.stop()
            adapter_worker.shutdown(wait=True, cancel_futures=True)
            store.close()

    app = FastAPI(title="P2P", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.add_middleware(Front, metrics=metrics, local_only=not settings.keys)

    def authorise(request: Request) -> Caller:
        caller = settings.keys.caller(request.headers.get("authorization"))
        if caller is None:
            raise ApiError(401, "missing or wrong API key: send `Authorization: Bearer <key>`", code="invalid_api_key",
                           headers={"WWW-Authenticate": "Bearer"})
        return caller

    @app.exception_handler(ApiError)
    async def api_error(request: Request, err: ApiError) -> JSONResponse:
        request.state.log = {**getattr(request.state, "log", {}), "error": err.code or err.param}
        return JSONResponse(err.body(), status_code=err.status, headers=err.headers)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, err: HTTPException) -> JSONResponse:
        return await api_error(request, route_error(err.status_code, request.method, request.url.path,
                                                    str(err.detail), getattr(err, "headers", None)))

    @app.exception_handler(RequestValidationError)
    async def path_error(request: Request, err: RequestValidationError) -> JSONResponse:
        return await api_error(request, parameter_error(err.errors()))

    @app.get("/", response_class=HTMLResponse)
    async def playground() -> HTMLResponse:
        return HTMLResponse(PLAYGROUND.read_text(encoding="utf-8"))

    @app.get("/health")
    async def health() -> dict[str, Any]:
        rows, waiting = engine.load()
        return {"status": "ok", "model": settings.model_name, "embedder": type(personalizer.embedder).__name__,
                "batch_rows": rows, "queued": waiting}

    @app.get("/metrics")
    async def prometheus(request: Request) -> Response:
        authorise(request)
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/models")
    async def models(request: Request) -> dict[str, Any]:
        authorise(request)
        return {"object": "list", "data": [{"id": settings.model_name, "object": "model", "created": started,
                                            "owned_by": "p2p"}]}

    def own(stored: Any, caller: Caller) -> Any:
        """The stored profile if the caller may see it (another owner's user is as good as absent)."""
        return stored if stored is not None and (caller.admin or stored.owner == caller.owner) else None

    @app.put("/v1/profiles/{user}")
    async def put_profile(request: Request) -> dict[str, Any]:
        caller = authorise(request)
        user = path_user(raw_path(request))
        given = parse(ProfileBody, await read_json(request, settings))
        require_profile_fits(given.profile, settings.max_profile_chars)
        require_known_task(given.task)
        stored = await asyncio.to_thread(store.put, user, given.profile, given.task, caller.owner,
                                         admin=caller.admin)
        if stored is None:
            raise ApiError(403, f"user {user!r} is stored by another owner; choose another id", param="user",
                           code="owned_by_another")
        adapters.revoke(user)  # the old profile's adapters are no longer this user's
        request.state.log = {"user": user, "profile_chars": len(given.profile)}
        return {"user": user, "task": stored.task, "profile_chars": len(stored.profile), "updated": stored.updated,
                "version": stored.version}

    @app.get("/v1/profiles/{user}")
    async def get_profile(request: Request) -> dict[str, Any]:
        caller = authorise(request)
        user = path_user(raw_path(request))
        stored = own(await asyncio.to_thread(store.get, user), caller)
        if stored is None:
            raise no_profile(user)
        return {"user": user, "profile": stored.profile, "task": stored.task, "updated": stored.updated,
                "version": stored.version}

    @app.delete("/v1/profiles/{user}")
    async def delete_profile(request: Request) -> dict[str, Any]:
        caller = authorise(request)
        user = path_user(raw_path(request))
        stored = await asyncio.to_thread(store.delete, user, caller.owner, admin=caller.admin)
        if stored is None:
            raise no_profile(user)
        dropped = adapters.revoke(user)
        request.state.log = {"user": user}
        return {"user": user, "deleted": True, "adapter_dropped": dropped > 0}

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> Response:
        arrived = time.perf_counter()
        caller = authorise(request)
        req = parse(ChatRequest, await read_json(request, settings))
        require_served_model(req.model, settings.model_name)
        profile, task, kind, stored = req.profile, req.task, "profile" if req.profile is not None else "base", None
        if profile is None and req.user is not None:
            stored = own(await asyncio.to_thread(store.get, req.user), caller)
            if stored is None:
                raise no_profile(req.user, param="user")
            profile, task, kind = stored.profile, req.task or stored.task, "user"
        if req.profile is not None:
            require_profile_fits(req.profile, settings.max_profile_chars)
        require_known_task(task)
        if profile is not None:
            task = trained_task(personalizer, task)
        max_tokens = token_budget(req, settings.default_max_tokens, settings.max_tokens)
        require_chars_fit(req.messages, context, settings.max_body_bytes)
        prompt = await asyncio.to_thread(prompt_ids, [m.model_dump() for m in req.messages])
        require_tokens_fit(len(prompt), max_tokens, context)
        seed = req.seed if req.seed is not None else secrets.randbits(31)
        sampling = Sampling(max_new_tokens=max_tokens, temperature=req.temperature, top_p=req.top_p, seed=seed)
        request.state.log = {"kind": kind, "user": req.user, "stream": req.stream, "prompt_tokens": len(prompt),
                             "profile_chars": len(profile) if profile is not None else None}

        made: Made | None = None
        if profile is not None:
            key = stored_key(stored.user, stored.version, task) if stored is not None else \
                inline_key(caller.owner, profile, task)
            made = await make_adapter(key, profile, task)
        loop, events = asyncio.get_running_loop(), asyncio.Queue()
        job = Job(prompt, sampling, lambda event: loop.call_soon_threadsafe(events.put_nowait, event),
                  adapters=made.adapters if made is not None else None,
                  check=still_current(stored.user, stored.version) if stored is not None else None,
                  stop=req.stop, min_tokens=req.min_tokens)
        try:
            engine.submit(job)
        except QueueFull as err:
            raise busy(str(err)) from None
        answer = Answer(job, engine, events, request, arrived, metrics, kind)
        try:
            started = await answer.next()  # the row is ours: errors can still be a status
        except BaseException:
            engine.cancel(job)
            raise
        if isinstance(started, Failed):
            raise ApiError(started.status, started.message, param="user" if started.status in (404, 409) else None,
                           code=started.code)
        if started is None:  # the client left while waiting
            return Response(status_code=499)
        p2p = {"personalised": made is not None, "adapter_ms": made.ms if made is not None else None,
               "adapter_cached": made is not None and made.cached}
        request.state.log.update(adapter_ms=p2p["adapter_ms"], adapter_cached=p2p["adapter_cached"])
        cid = completion_id()
        if req.stream:
            include_usage = req.stream_options is not None and req.stream_options.include_usage
            return StreamingResponse(answer.stream(cid, settings.model_name, p2p, include_usage),
                                     media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
        text, end = await answer.collect()
        if end is None:
            return Response(status_code=499)
        return JSONResponse(completion(cid, settings.model_name, text, end.finish_reason, end.prompt_tokens,
                                       end.completion_tokens, {**p2p, "batch_peak": end.batch_peak}))

    async def make_adapter(key: Any, profile: str, task: str | None) -> Made:
        """The adapter of `key`, from the cache or made on the adapter worker within `adapter_timeout`."""
        if not slots.acquire(blocking=False):
            raise busy("too many requests are waiting for their adapters")

        def make() -> Made:  # on the worker
            try:
                return adapters.get(key, lambda: personalizer.adapters(personalizer.embed([profile], task), task))
            finally:
                slots.release()

        try:
            made = await asyncio.wait_for(asyncio.get_running_loop().run_in_executor(adapter_worker, make),
                                          settings.adapter_timeout)
        except TimeoutError:
            raise busy(f"no adapter within {settings.adapter_timeout:g} s") from None
        except Exception as err:  # this request's adapter could not be made: only it fails
            raise ApiError(500, f"making the adapter failed: {type(err).__name__}", code="adapter_failed") from None
        if made.cached:
            metrics.adapter_cache_hits.inc()
        else:
            metrics.adapter_ms.observe(made.ms)
        return made

    def still_current(user: str, version: int) -> Any:
        """The admission check of a stored user's job: the profile its adapter was made from is still the user's."""
        def check() -> Failed | None:
            now = store.get(user)
            if now is None:
                return Failed(f"user {user!r} has no stored profile any more (deleted while this request waited)",
                              404, "profile_not_found")
            if now.version != version:
                return Failed(f"user {user!r}'s profile was replaced while this request waited; send it again",
                              409, "profile_changed")
            return None
        return check

    def prompt_ids(messages: list[dict[str, Any]]) -> list[int]:
        try:
            with tokenizer_lock:
                return chat_ids(tokenizer, messages)
        except Exception as err:  # a template that refuses a conversation (e.g. roles out of order)
            raise ApiError(400, f"messages: the model's chat template refuses them ({err})", param="messages",
                           code="invalid_value") from None

    return app


def busy(why: str) -> ApiError:
    return ApiError(429, f"the server is busy ({why}); retry after a second", code="server_busy",
                    headers={"Retry-After": "1"})


def raw_path(request: Request) -> bytes:
    """The request's path as sent, before percent-decoding (protocol.path_user decodes a user id from it)."""
    return request.scope.get("raw_path") or request.url.path.encode()


def trained_task(personalizer: Personalizer, task: str | None) -> str:
    """The task a profile's adapter is made for: the hypernetwork standardises a profile by its task's statistics, so
    a task it was trained on (None: its only one)."""
    try:
        return personalizer.task(task)
    except ValueError as err:
        raise ApiError(400, f"task: {err}", param="task",
                       code="missing_task" if task is None else "invalid_value") from None


def no_profile(user: str, param: str | None = None) -> ApiError:
    return ApiError(404, f"user {user!r} has no stored profile; store one with PUT /v1/profiles/{{user}}",
                    param=param, code="profile_not_found")


async def read_json(request: Request, settings: Settings) -> Any:
    """The body parsed as JSON: `application/json` only (a browser cannot send that cross-site without asking),
    refused (413) past `max_body_bytes` whether or not it announced its length, and (408) when it has not all
    arrived within `body_timeout` seconds."""
    kind = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if kind != "application/json":
        raise ApiError(415, f"Content-Type: expected application/json, got {kind or 'none'}",
                       code="unsupported_media_type")
    limit = settings.max_body_bytes
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > limit:
        raise ApiError(413, f"the body is {int(length)} bytes; at most {limit} are accepted", code="body_too_large")
    size, parts = 0, []
    try:
        async with asyncio.timeout(settings.body_timeout):
            async for part in request.stream():
                size += len(part)
                if size > limit:
                    raise ApiError(413, f"the body is over {limit} bytes, the most accepted", code="body_too_large")
                parts.append(part)
    except TimeoutError:
        raise ApiError(408, f"the body did not arrive within {settings.body_timeout:g} s",
                       code="request_timeout") from None
    except ClientDisconnect:
        raise ApiError(499, "the client disconnected before sending the whole body",
                       code="client_disconnected") from None
    try:
        return json.loads(b"".join(parts))
    except (UnicodeDecodeError, ValueError) as err:
        raise ApiError(400, f"the body is not valid JSON ({err})", code="invalid_json") from None
    except RecursionError:
        raise ApiError(400, "the body is nested too deeply to be a request", code="invalid_json") from None


class Answer:
    """One request's events from the engine, as the HTTP side consumes them; a client that leaves cancels its job."""

    def __init__(self, job: Job, engine: Engine, events: asyncio.Queue, request: Request, arrived: float,
                 metrics: Metrics, kind: str):
        self.job, self.engine, self.events, self.request, self.arrived = job, engine, events, request, arrived
        self.metrics, self.kind = metrics, kind
        self.first_token: float | None = None

    async def next(self, watch: bool = True) -> Event | None:
        """The next event, or None when the client disconnected first (then the job is cancelled)."""
        get = asyncio.ensure_future(self.events.get())
        if not watch:
            return await get
        gone = asyncio.ensure_future(_disconnected(self.request))
        done, _ = await asyncio.wait({get, gone}, return_when=asyncio.FIRST_COMPLETED)
        if get in done:
            gone.cancel()
            return get.result()
        get.cancel()
        self.engine.cancel(self.job)  # a waiting job leaves the queue now
        self.request.state.log.update(disconnected=True)
        return None

    def _seen(self, event: Event) -> None:
        if isinstance(event, Delta) and self.first_token is None:
            self.first_token = time.perf_counter()
            self.metrics.ttft.observe(self.first_token - self.arrived)
        if isinstance(event, Finished):
            self.metrics.tokens.inc(event.completion_tokens)
            self.metrics.completions.labels(self.kind, event.finish_reason).inc()
            self.request.state.log.update(completion_tokens=event.completion_tokens, finish_reason=event.finish_reason,
                                          batch_peak=event.batch_peak, ttft_ms=self._ttft_ms())
        if isinstance(event, Failed):
            self.request.state.log.update(error="generation_failed")

    def _ttft_ms(self) -> float | None:
        return round((self.first_token - self.arrived) * 1000, 1) if self.first_token is not None else None

    async def collect(self) -> tuple[str, Finished | None]:
        parts: list[str] = []
        while True:
            event = await self.next()
            if event is None:
                return "", None
            self._seen(event)
            if isinstance(event, Delta):
                parts.append(event.text)
            elif isinstance(event, Finished):
                return "".join(parts), event
            elif isinstance(event, Failed):
                raise ApiError(event.status, event.message, code=event.code)

    async def stream(self, cid: str, model: str, p2p: dict[str, Any], include_usage: bool) -> AsyncIterator[str]:
        """Server-sent events in OpenAI's format; Starlette cancels this generator when the client disconnects."""
        created = int(time.time())
        try:
            yield _sse(chunk(cid, created, model, {"role": "assistant", "content": ""}, p2p=p2p))
            while True:
                event = await self.next(watch=False)
                self._seen(event)
                if isinstance(event, Delta):
                    yield _sse(chunk(cid, created, model, {"content": event.text}))
                elif isinstance(event, Finished):
                    yield _sse(chunk(cid, created, model, {}, event.finish_reason))
                    if include_usage:
                        yield _sse({"id": cid, "object": "chat.completion.chunk", "created": created, "model": model,
                                    "choices": [], "usage": usage(event.prompt_tokens, event.completion_tokens)})
                    break
                elif isinstance(event, Failed):
                    yield _sse(ApiError(event.status, event.message, code=event.code).body())
                    break
            yield "data: [DONE]\n\n"
        finally:
            if not self.job.cancelled.is_set():  # the client left before the answer was complete
                self.request.state.log.update(disconnected=True)
            self.engine.cancel(self.job)  # a no-op once finished; frees the row of a client that left


async def _disconnected(request: Request) -> None:
    """Returns when the client has gone (after the body was read, the only message left is the disconnect)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


def _sse(data: dict[str, Any]) -> str:
    return f"data: {json.dumps(data, separators=(',', ':'))}\n\n"


LOOPBACK = ("127.0.0.1", "localhost", "[::1]")


class Front:
    """Every request's first and last stop. Without keys (`local_only`), a request whose `Host` is not this
    server's loopback address is refused (a web page elsewhere cannot reach it through DNS rebinding). An error
    nothing else answered becomes an OpenAI error object (500), logged as one line without a traceback. Then one
    structured log line and one counter per request: method, route, status, milliseconds, and what the handler put
    in `request.state.log` (ids, sizes, timings; never texts). Pure ASGI, so streams pass through."""

    def __init__(self, app: Any, metrics: Metrics, local_only: bool):
        self.app, self.metrics, self.local_only = app, metrics, local_only

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        began, status = time.perf_counter(), [0]

        async def sending(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        async def error(err: ApiError) -> None:
            await JSONResponse(err.body(), status_code=err.status, headers=err.headers)(scope, receive, sending)

        try:
            if self.local_only and not _local_host(scope):
                await error(ApiError(403, "Host: this keyless server answers only requests to its loopback address "
                                          "(serve with keys to be reached by another name)", code="invalid_host"))
            else:
                await self.app(scope, receive, sending)
        except Exception as err:
            scope.setdefault("state", {}).setdefault("log", {})["error"] = type(err).__name__
            if not status[0]:
                await error(ApiError(500, f"internal error ({type(err).__name__}); the server logged it",
                                     code="internal_error"))
        finally:
            route = getattr(scope.get("route"), "path", "unmatched")
            status[0] = status[0] or 499  # nothing was sent: the client left first
            self.metrics.requests.labels(route, str(status[0])).inc()
            extra = scope.get("state", {}).get("log", {})
            log.info(json.dumps({"event": "request", "method": scope["method"], "route": route, "status": status[0],
                                 "ms": round((time.perf_counter() - began) * 1000, 1),
                                 **{k: v for k, v in extra.items() if v is not None}}))


def _local_host(scope: dict[str, Any]) -> bool:
    """The request's Host is this server's loopback address and port."""
    host = dict(scope.get("headers") or []).get(b"host", b"").decode("latin-1").lower()
    port = (scope.get("server") or (None, None))[1]
    return any(host in (name, f"{name}:{port}") for name in LOOPBACK)
