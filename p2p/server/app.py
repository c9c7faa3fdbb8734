"""The HTTP face of `p2p serve`: OpenAI's chat completions with a profile in the request, stored profiles, health,
metrics and the playground page.

A request's personalisation, in order: an inline `profile` (with an optional `task`), else the `user` field naming a
profile stored with `PUT /v1/profiles/{user}` (a user with none is a 404, never the base model in disguise), else
none: the base model answers. The engine (p2p.server.engine) makes the adapter when the request gets its batch row,
so `p2p.adapter_ms` is the adapter's own time, not the wait for a row.

Safe by default: every expected failure is a 4xx with an OpenAI error object naming the field, and the server keeps
serving; bodies are size-capped before they are parsed; with a key configured, every `/v1` route and `/metrics`
want `Authorization: Bearer <key>`, compared in constant time; logs and metrics carry ids, sizes and timings, never
profile texts, prompts or answers.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import secrets
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import ValidationError
from starlette.exceptions import HTTPException

from p2p.hyper.personalize import Personalizer
from p2p.models.generation import Sampling, chat_ids
from p2p.server.adapters import AdapterCache
from p2p.server.engine import Delta, Engine, Event, Failed, Finished, Job, QueueFull
from p2p.server.metrics import Metrics
from p2p.server.profiles import open_store
from p2p.server.protocol import (
    MAX_USER_CHARS,
    ApiError,
    ChatRequest,
    ProfileBody,
    chunk,
    completion,
    completion_id,
    usage,
    validation_error,
)
from p2p.tasks import get_task

log = logging.getLogger("p2p.serve")
PLAYGROUND = Path(__file__).with_name("playground.html")


@dataclass(frozen=True)
class Settings:
    model_name: str  # what `model` must say, and what /v1/models lists
    profiles_url: str  # a SQLite path or sqlite:/// URL, or postgresql:// (p2p.server.profiles)
    api_key: str | None = None
    max_batch: int = 16
    max_queue: int = 64
    adapter_cache: int = 256
    max_body_bytes: int = 2_000_000
    max_tokens: int = 1024  # the most a request may ask for
    default_max_tokens: int = 256  # when it asks for nothing


def create_app(personalizer: Personalizer, settings: Settings) -> FastAPI:
    """The server around a loaded Personalizer; the engine thread runs while the app's lifespan does."""
    metrics = Metrics()
    engine = Engine(personalizer.model, personalizer.tokenizer, personalizer.hyper.layout, personalizer.meta.lora,
                    max_batch=settings.max_batch, max_queue=settings.max_queue, on_step=metrics.step)
    adapters = AdapterCache(personalizer, settings.adapter_cache)
    store = open_store(settings.profiles_url)
    metrics.queue_depth.set_function(lambda: engine.load()[1])
    metrics.batch_rows.set_function(lambda: engine.load()[0])
    context = int(getattr(personalizer.model.config, "max_position_embeddings", 0) or 0)
    started = int(time.time())

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine.start()
        try:
            yield
        finally:
            engine.stop()
            store.close()

    app = FastAPI(title="P2P", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.add_middleware(RequestLog, metrics=metrics)

    def authorise(request: Request) -> None:
        if settings.api_key is None:
            return
        header = request.headers.get("authorization", "")
        scheme, _, given = header.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), settings.api_key.encode()):
            raise ApiError(401, "missing or wrong API key: send `Authorization: Bearer <key>`", code="invalid_api_key")

    @app.exception_handler(ApiError)
    async def api_error(request: Request, err: ApiError) -> JSONResponse:
        request.state.log = {**getattr(request.state, "log", {}), "error": err.code or err.param}
        return JSONResponse(err.body(), status_code=err.status, headers=err.headers)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, err: HTTPException) -> JSONResponse:
        message = {404: f"no route {request.url.path}", 405: f"{request.method} is not allowed on "
                   f"{request.url.path}"}.get(err.status_code, str(err.detail))
        return await api_error(request, ApiError(err.status_code, message, headers=getattr(err, "headers", None)))

    @app.exception_handler(RequestValidationError)
    async def path_error(request: Request, err: RequestValidationError) -> JSONResponse:
        first = err.errors()[0]
        param = str(first["loc"][-1])
        return await api_error(request, ApiError(400, f"{param}: {first['msg']}", param=param, code="invalid_value"))

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

    def user_of(user: str) -> str:
        if not 1 <= len(user) <= MAX_USER_CHARS:
            raise ApiError(400, f"user: expected 1 to {MAX_USER_CHARS} characters", param="user")
        return user

    @app.put("/v1/profiles/{user}")
    async def put_profile(user: str, request: Request) -> dict[str, Any]:
        authorise(request)
        user = user_of(user)
        body = await read_json(request, settings.max_body_bytes)
        try:
            given = ProfileBody.model_validate(body, strict=True)
        except ValidationError as err:
            raise validation_error(err) from None
        check_task(given.task)
        old = await asyncio.to_thread(store.get, user)
        stored = await asyncio.to_thread(store.put, user, given.profile, given.task, "", admin=True)
        if old is not None:  # the old profile's adapter is no longer this user's
            adapters.drop(adapters.key(old.profile, old.task))
        request.state.log = {"user": user, "profile_chars": len(given.profile)}
        return {"user": user, "task": stored.task, "profile_chars": len(stored.profile), "updated": stored.updated}

    @app.get("/v1/profiles/{user}")
    async def get_profile(user: str, request: Request) -> dict[str, Any]:
        authorise(request)
        stored = await asyncio.to_thread(store.get, user_of(user))
        if stored is None:
            raise no_profile(user)
        return {"user": user, "profile": stored.profile, "task": stored.task, "updated": stored.updated}

    @app.delete("/v1/profiles/{user}")
    async def delete_profile(user: str, request: Request) -> dict[str, Any]:
        authorise(request)
        stored = await asyncio.to_thread(store.delete, user_of(user), "", admin=True)
        if stored is None:
            raise no_profile(user)
        dropped = adapters.drop(adapters.key(stored.profile, stored.task))
        request.state.log = {"user": user}
        return {"user": user, "deleted": True, "adapter_dropped": dropped}

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> Response:
        arrived = time.perf_counter()
        authorise(request)
        body = await read_json(request, settings.max_body_bytes)
        try:
            req = ChatRequest.model_validate(body, strict=True)
        except ValidationError as err:
            raise validation_error(err) from None
        if req.model != settings.model_name:
            raise ApiError(404, f"model: {req.model!r} is not served here; this server serves "
                                f"{settings.model_name!r}", param="model", code="model_not_found")
        profile, task, kind = req.profile, req.task, "profile" if req.profile is not None else "base"
        if profile is None and req.user is not None:
            stored = await asyncio.to_thread(store.get, req.user)
            if stored is None:
                raise no_profile(req.user, param="user")
            profile, task, kind = stored.profile, req.task or stored.task, "user"
        check_task(task)
        if profile is not None:
            try:  # the hypernetwork standardises a profile by its task's statistics: a task it was trained on
                task = personalizer.task(task)
            except ValueError as err:
                raise ApiError(400, f"task: {err}", param="task",
                               code="missing_task" if task is None else "invalid_value") from None
        max_tokens = req.max_completion_tokens or req.max_tokens or settings.default_max_tokens
        if max_tokens > settings.max_tokens:
            raise ApiError(400, f"max_tokens: at most {settings.max_tokens} on this server, got {max_tokens}",
                           param="max_tokens", code="invalid_value")
        if req.min_tokens > max_tokens:
            raise ApiError(400, f"min_tokens: {req.min_tokens} is more than max_tokens {max_tokens}",
                           param="min_tokens", code="invalid_value")
        prompt = await asyncio.to_thread(prompt_ids, [m.model_dump() for m in req.messages])
        if context and len(prompt) + max_tokens > context:
            raise ApiError(400, f"messages: {len(prompt)} prompt tokens + max_tokens {max_tokens} exceed the model's "
                                f"context of {context}", param="messages", code="context_length_exceeded")
        seed = req.seed if req.seed is not None else secrets.randbits(31)
        sampling = Sampling(max_new_tokens=max_tokens, temperature=req.temperature, top_p=req.top_p, seed=seed)
        request.state.log = {"kind": kind, "user": req.user, "stream": req.stream, "prompt_tokens": len(prompt),
                             "profile_chars": len(profile) if profile is not None else None}

        loop, events = asyncio.get_running_loop(), asyncio.Queue()

        def make_adapter() -> tuple[Any, float, bool]:
            made = adapters.get(profile, task)
            if made.cached:
                metrics.adapter_cache_hits.inc()
            else:
                metrics.adapter_ms.observe(made.ms)
            return made.adapters, made.ms, made.cached

        job = Job(prompt, sampling, lambda event: loop.call_soon_threadsafe(events.put_nowait, event),
                  adapter=make_adapter if profile is not None else None, stop=req.stop, min_tokens=req.min_tokens)
        try:
            engine.submit(job)
        except QueueFull as err:
            raise ApiError(429, f"the server is busy ({err}); retry after a second", code="server_busy",
                           headers={"Retry-After": "1"}) from None
        answer = Answer(job, events, request, arrived, metrics, kind)
        try:
            started = await answer.next()  # the row is ours and the adapter made: errors can still be a status
        except BaseException:
            job.cancel()
            raise
        if isinstance(started, Failed):
            raise ApiError(500, started.message, code="generation_failed")
        if started is None:  # the client left while waiting
            return Response(status_code=499)
        p2p = {"personalised": profile is not None, "adapter_ms": started.adapter_ms,
               "adapter_cached": started.adapter_cached}
        request.state.log.update(adapter_ms=started.adapter_ms, adapter_cached=started.adapter_cached)
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

    def prompt_ids(messages: list[dict[str, Any]]) -> list[int]:
        try:
            with engine.tokenizer_lock:
                return chat_ids(personalizer.tokenizer, messages)
        except Exception as err:  # a template that refuses a conversation (e.g. roles out of order)
            raise ApiError(400, f"messages: the model's chat template refuses them ({err})", param="messages",
                           code="invalid_value") from None

    return app


def check_task(task: str | None) -> None:
    if task is None:
        return
    try:
        get_task(task)
    except (KeyError, ValueError) as err:
        raise ApiError(400, f"task: {err}".replace("\n", " "), param="task", code="invalid_value") from None


def no_profile(user: str, param: str | None = None) -> ApiError:
    return ApiError(404, f"user {user!r} has no stored profile; store one with PUT /v1/profiles/{{user}}",
                    param=param, code="profile_not_found")


async def read_json(request: Request, limit: int) -> Any:
    """The body parsed as JSON, refused (413) past `limit` bytes, whether or not it announced its length."""
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > limit:
        raise ApiError(413, f"the body is {int(length)} bytes; at most {limit} are accepted", code="body_too_large")
    size, parts = 0, []
    async for part in request.stream():
        size += len(part)
        if size > limit:
            raise ApiError(413, f"the body is over {limit} bytes, the most accepted", code="body_too_large")
        parts.append(part)
    try:
        return json.loads(b"".join(parts))
    except (UnicodeDecodeError, ValueError) as err:
        raise ApiError(400, f"the body is not valid JSON ({err})", code="invalid_json") from None


class Answer:
    """One request's events from the engine, as the HTTP side consumes them; a client that leaves cancels its job."""

    def __init__(self, job: Job, events: asyncio.Queue, request: Request, arrived: float, metrics: Metrics,
                 kind: str):
        self.job, self.events, self.request, self.arrived = job, events, request, arrived
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
        self.job.cancel()
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
                raise ApiError(500, event.message, code="generation_failed")

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
                    yield _sse(ApiError(500, event.message, code="generation_failed").body())
                    break
            yield "data: [DONE]\n\n"
        finally:
            if not self.job.cancelled.is_set():  # the client left before the answer was complete
                self.request.state.log.update(disconnected=True)
            self.job.cancel()  # a no-op once finished; frees the row of a client that left


async def _disconnected(request: Request) -> None:
    """Returns when the client has gone (after the body was read, the only message left is the disconnect)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


def _sse(data: dict[str, Any]) -> str:
    return f"data: {json.dumps(data, separators=(',', ':'))}\n\n"


class RequestLog:
    """One structured log line and one counter per request: method, route, status, milliseconds, and what the
    handler put in `request.state.log` (ids, sizes, timings; never texts). Pure ASGI, so streams pass through."""

    def __init__(self, app: Any, metrics: Metrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        began, status = time.perf_counter(), [500]

        async def sending(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            route = getattr(scope.get("route"), "path", "unmatched")
            self.metrics.requests.labels(route, str(status[0])).inc()
            extra = scope.get("state", {}).get("log", {})
            log.info(json.dumps({"event": "request", "method": scope["method"], "route": route, "status": status[0],
                                 "ms": round((time.perf_counter() - began) * 1000, 1),
                                 **{k: v for k, v in extra.items() if v is not None}}))
