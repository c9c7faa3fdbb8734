"""The OpenAI chat-completions wire format the server speaks: request bodies (validated strictly, so a wrong type
is an error naming its field, never a silent coercion), the checks a request passes before any work is done for it
(the served model, the size caps, a known task, the token budget, the model's context), response objects, stream
chunks and error objects. Every refusal is an ApiError: its status, message and the field it names are the answer.

P2P's additions ride in fields OpenAI clients pass through: the request's `profile` and `task` (the official
client's `extra_body`), `min_tokens` (as vLLM), and the response's `p2p` object (was a profile used, how long its
adapter took, and for a whole answer the most requests decoded beside it).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence
from typing import Any, Literal, TypeVar
from urllib.parse import unquote_to_bytes

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from p2p.tasks import get_task

#: The longest profile text accepted (characters): one user's text, not a corpus, as `p2p personalize`'s file cap.
#: The server's own cap (`Settings.max_profile_chars`) is lower: what it embeds per request is bounded.
MAX_PROFILE_CHARS = 1_000_000
MAX_USER_CHARS = 256
#: Sampling settings a request may ask for (OpenAI's ranges): a seed fits a signed 64-bit integer; a temperature is
#: 0 (greedy) or at least MIN_TEMPERATURE, where logits / temperature stays finite; top_p keeps at least one token.
MAX_SEED = 2**63 - 1
MIN_TEMPERATURE = 0.01
MIN_TOP_P = 1e-6
#: A prompt of more characters than this many per token of the model's context cannot fit it: refused before it is
#: tokenized (English runs about 4 characters per token).
MAX_CHARS_PER_TOKEN = 10


def unicode_text(value: str) -> str:
    """`value` if it is valid Unicode text (JSON can carry lone surrogates, which no tokenizer or database takes)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("not valid Unicode text (a lone surrogate escape such as \\ud800)") from None
    return value


class ApiError(Exception):
    """An expected failure, answered as OpenAI answers it: `{"error": {"message", "type", "param", "code"}}`."""

    TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
             404: "not_found_error", 405: "invalid_request_error", 408: "invalid_request_error",
             409: "invalid_request_error", 413: "invalid_request_error", 415: "invalid_request_error",
             429: "rate_limit_error", 500: "server_error", 503: "server_error"}

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.headers = status, message, param, code, headers

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.TYPES.get(self.status, "invalid_request_error"),
                          "param": self.param, "code": self.code}}


class Message(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)

    role: Literal["system", "developer", "user", "assistant"]
    content: Any = None

    @field_validator("content")
    @classmethod
    def _text(cls, value: Any) -> str:
        """A string, or a list of text parts (`{"type": "text", "text": ...}`); images and audio are not served."""
        if isinstance(value, str):
            return unicode_text(value)
        if isinstance(value, list) and all(isinstance(p, dict) and p.get("type") == "text"
                                           and isinstance(p.get("text"), str) for p in value):
            return unicode_text("".join(p["text"] for p in value))
        raise ValueError("expected a string or a list of text parts ({\"type\": \"text\", \"text\": \"...\"})")


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)

    include_usage: bool = False


class ChatRequest(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)

    model: str
    messages: list[Message] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    min_tokens: int = Field(0, ge=0)
    temperature: float = Field(1.0, ge=0, le=2)
    top_p: float = Field(1.0, ge=MIN_TOP_P, le=1)
    seed: int | None = Field(None, ge=0, le=MAX_SEED)
    stop: Any = Field(None, validate_default=True)
    n: int = 1
    stream: bool = False
    stream_options: StreamOptions | None = None
    logprobs: bool | None = None
    user: str | None = Field(None, min_length=1, max_length=MAX_USER_CHARS)
    profile: str | None = Field(None, min_length=1, max_length=MAX_PROFILE_CHARS)
    task: str | None = None

    @field_validator("temperature")
    @classmethod
    def _temperature(cls, value: float) -> float:
        if 0 < value < MIN_TEMPERATURE:
            raise ValueError(f"0 (greedy) or at least {MIN_TEMPERATURE}")
        return value

    @field_validator("user", "profile", "task")
    @classmethod
    def _unicode(cls, value: str | None) -> str | None:
        return unicode_text(value) if value is not None else None

    @field_validator("stop")
    @classmethod
    def _stops(cls, value: Any) -> tuple[str, ...]:
        if value is None:
            return ()
        stops = [value] if isinstance(value, str) else value
        if not isinstance(stops, list) or len(stops) > 4 or not all(isinstance(s, str) and s for s in stops):
            raise ValueError("expected a non-empty string or a list of at most 4 of them")
        return tuple(unicode_text(s) for s in stops)

    @field_validator("n")
    @classmethod
    def _one(cls, value: int) -> int:
        if value != 1:
            raise ValueError("only n = 1 is served")
        return value

    @field_validator("logprobs")
    @classmethod
    def _no_logprobs(cls, value: bool | None) -> bool | None:
        if value:
            raise ValueError("log-probabilities are not served")
        return value


class ProfileBody(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    profile: str = Field(min_length=1, max_length=MAX_PROFILE_CHARS)
    task: str | None = None

    @field_validator("profile", "task")
    @classmethod
    def _unicode(cls, value: str | None) -> str | None:
        return unicode_text(value) if value is not None else None


def validation_error(err: ValidationError) -> ApiError:
    """The first problem of a body, naming its field as a dotted path (`messages.0.content`)."""
    first = err.errors()[0]
    param = ".".join(str(part) for part in first["loc"]) or None
    message = first["msg"].removeprefix("Value error, ")
    return ApiError(400, f"{param}: {message}" if param else message, param=param, code="invalid_value")


def parameter_error(errors: Sequence[Any]) -> ApiError:
    """The first problem of a route's own parameters (FastAPI's RequestValidationError), naming the parameter."""
    first = errors[0]
    param = str(first["loc"][-1])
    return ApiError(400, f"{param}: {first['msg']}", param=param, code="invalid_value")


def route_error(status: int, method: str, path: str, detail: str, headers: dict[str, str] | None) -> ApiError:
    """Starlette's own refusals as OpenAI error objects: no such route (404), a method the route does not take
    (405), or any other with its detail."""
    message = {404: f"no route {path}", 405: f"{method} is not allowed on {path}"}.get(status, detail)
    return ApiError(status, message, headers=headers)


Body = TypeVar("Body", bound=BaseModel)


def parse(model: type[Body], body: Any) -> Body:
    """A parsed JSON body as `model` (ChatRequest, ProfileBody), strictly: its first problem is a 400."""
    try:
        return model.model_validate(body, strict=True)
    except ValidationError as err:
        raise validation_error(err) from None


def path_user(raw_path: bytes) -> str:
    """The user id of a `/v1/profiles/{user}` path exactly as sent: percent-decoded bytes that must be UTF-8 (the
    decoded path would turn every invalid escape into the same replacement character), 1 to MAX_USER_CHARS long."""
    segment = raw_path.split(b"?", 1)[0].rstrip(b"/").rsplit(b"/", 1)[-1]
    try:
        user = unquote_to_bytes(segment).decode("utf-8")
    except UnicodeDecodeError:
        raise ApiError(400, "user: the id's percent-encoding is not UTF-8", param="user",
                       code="invalid_value") from None
    if not 1 <= len(user) <= MAX_USER_CHARS:
        raise ApiError(400, f"user: expected 1 to {MAX_USER_CHARS} characters", param="user", code="invalid_value")
    return user


def require_served_model(model: str, served: str) -> None:
    """A request names the model this server serves (404 otherwise, as OpenAI answers an unknown model)."""
    if model != served:
        raise ApiError(404, f"model: {model!r} is not served here; this server serves {served!r}", param="model",
                       code="model_not_found")


def require_profile_fits(profile: str, limit: int) -> None:
    """A profile this server embeds is at most `limit` characters (`Settings.max_profile_chars`)."""
    if len(profile) > limit:
        raise ApiError(400, f"profile: {len(profile)} characters; this server embeds at most {limit} (a profile is "
                            f"one user's text: the embedder reads only its first few hundred tokens per section)",
                       param="profile", code="profile_too_long")


def require_known_task(task: str | None) -> None:
    """A task named by a request or a stored profile is one of the task registry's (p2p.tasks); None passes."""
    if task is None:
        return
    try:
        get_task(task)
    except (KeyError, ValueError) as err:
        raise ApiError(400, f"task: {err}".replace("\n", " "), param="task", code="invalid_value") from None


def token_budget(req: ChatRequest, default: int, limit: int) -> int:
    """The tokens a request may generate: `max_completion_tokens`, else `max_tokens`, else `default`; at most
    `limit` and at least its `min_tokens`."""
    max_tokens = req.max_completion_tokens or req.max_tokens or default
    if max_tokens > limit:
        raise ApiError(400, f"max_tokens: at most {limit} on this server, got {max_tokens}", param="max_tokens",
                       code="invalid_value")
    if req.min_tokens > max_tokens:
        raise ApiError(400, f"min_tokens: {req.min_tokens} is more than max_tokens {max_tokens}",
                       param="min_tokens", code="invalid_value")
    return max_tokens


def require_chars_fit(messages: list[Message], context: int, body_limit: int) -> None:
    """Messages of more than MAX_CHARS_PER_TOKEN characters per token of the model's `context` cannot fit it: refused
    before they are tokenized. A model that states no context (0) is bounded by the body's cap (`body_limit`)."""
    chars = sum(len(m.content or "") for m in messages)
    if chars > (context or body_limit) * MAX_CHARS_PER_TOKEN:
        raise ApiError(400, f"messages: {chars} characters cannot fit the model's context of {context} tokens",
                       param="messages", code="context_length_exceeded")


def require_tokens_fit(prompt_tokens: int, max_tokens: int, context: int) -> None:
    """The prompt and the tokens asked for fit the model's `context` (0: the model states none, nothing to check)."""
    if context and prompt_tokens + max_tokens > context:
        raise ApiError(400, f"messages: {prompt_tokens} prompt tokens + max_tokens {max_tokens} exceed the model's "
                            f"context of {context}", param="messages", code="context_length_exceeded")


def completion_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex}"


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def completion(cid: str, model: str, text: str, finish_reason: str, prompt_tokens: int, completion_tokens: int,
               p2p: dict[str, Any]) -> dict[str, Any]:
    return {"id": cid, "object": "chat.completion", "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": None,
                         "finish_reason": finish_reason}],
            "usage": usage(prompt_tokens, completion_tokens), "p2p": p2p}


def chunk(cid: str, created: int, model: str, delta: dict[str, Any], finish_reason: str | None = None,
          **extra: Any) -> dict[str, Any]:
    return {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model,
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}], **extra}
