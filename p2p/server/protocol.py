"""The OpenAI chat-completions wire format the server speaks: request bodies (validated strictly, so a wrong type
is an error naming its field, never a silent coercion), response objects, stream chunks and error objects.

P2P's additions ride in fields OpenAI clients pass through: the request's `profile` and `task` (the official
client's `extra_body`), `min_tokens` (as vLLM), and the response's `p2p` object (was a profile used, how long its
adapter took, and for a whole answer the most requests decoded beside it).
"""

from __future__ import annotations

import time
import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

#: The longest profile text accepted (characters): one user's text, not a corpus, as `p2p personalize`'s file cap.
#: The server's own cap (`Settings.max_profile_chars`) is lower: what it embeds per request is bounded.
MAX_PROFILE_CHARS = 1_000_000
MAX_USER_CHARS = 256
#: Sampling settings a request may ask for (OpenAI's ranges): a seed fits a signed 64-bit integer; a temperature is
#: 0 (greedy) or at least MIN_TEMPERATURE, where logits / temperature stays finite; top_p keeps at least one token.
MAX_SEED = 2**63 - 1
MIN_TEMPERATURE = 0.01
MIN_TOP_P = 1e-6


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
