"""The LLM client's data model: requests, replies, errors, the request key, token estimates, images.

- `ChatRequest(messages, params)`: OpenAI chat messages plus per-request parameter overrides.
  `LLMClient.resolve` fills in the model and every effective parameter, so the resolved request is
  exactly the JSON body that goes on the wire; its `.key` (sha256 of the canonical JSON) is the cache
  key. The server (or the mock server) can recompute it from the body it received (`body_key`).
- `LLMError`: one request that got no reply (per item: callers record it and go on);
  `EndpointUnusable`: the endpoint cannot serve the run at all (a `UserError` that stops it):
  `EndpointUnreachable` (never reached), `KeyRejected` (a 401, or 403s in a row: the API key), or
  itself (no such model, no quota, never answering: `medvl.llm.failures`).
- `estimate_prompt_tokens`: a deliberate approximation (no tokenizer download): 4 characters per
  token for text, a fixed figure per image, 4 tokens of overhead per message. Real tokenizers give
  3-5 characters per English token; medical text with long terms sits at the low end.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from medvl.errors import UserError

__all__ = [
    "ChatReply",
    "ChatRequest",
    "EndpointUnreachable",
    "EndpointUnusable",
    "KeyRejected",
    "LLMError",
    "Usage",
    "body_key",
    "estimate_prompt_tokens",
    "estimate_text_tokens",
    "image_part",
]

CHARS_PER_TOKEN = 4
MESSAGE_OVERHEAD_TOKENS = 4


def body_key(body: dict[str, Any]) -> str:
    """sha256 of the canonical JSON (sorted keys, no spaces, UTF-8) of a chat request body."""
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class ChatRequest:
    """Chat messages (OpenAI format) and parameter overrides (temperature, response_format, seed...)."""

    messages: list[dict[str, Any]]
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def body(self) -> dict[str, Any]:
        """The JSON body this request sends (complete only once resolved by a client)."""
        return {"messages": self.messages, **self.params}

    @cached_property
    def key(self) -> str:
        """The cache key: `body_key(self.body)`; use the resolved request's key (`LLMClient.resolve`)."""
        return body_key(self.body)


@dataclass
class Usage:
    prompt_tokens: int
    completion_tokens: int


@dataclass
class ChatReply:
    text: str
    finish_reason: str
    usage: Usage
    cached: bool
    key: str
    model: str


class LLMError(Exception):
    """A request that did not produce a reply.

    `kind`: "http_error" (4xx other than 401/404/429: bad request, context too long, a 403 for this
    request alone),
    "rate_limited" (429), "server_error" (5xx), "timeout", "connection", "bad_response" (a 200 with
    a body that is not a chat completion), "content_filter" (finish_reason content_filter), and
    "retries_exhausted" (a retryable error that persisted; `cause_kind` says which).
    """

    def __init__(
        self,
        kind: str,
        message: str,
        *,
        status: int | None = None,
        key: str = "",
        retry_after: float | None = None,
        cause_kind: str | None = None,
    ):
        super().__init__(f"{kind}: {message}")
        self.kind, self.message, self.status, self.key = kind, message, status, key
        self.retry_after, self.cause_kind = retry_after, cause_kind

    @property
    def retryable(self) -> bool:
        return self.kind in {"rate_limited", "server_error", "timeout", "connection"}

    def __reduce__(self):  # picklable across worker processes (keyword-only arguments)
        return _rebuild_error, (self.kind, self.message, self.status, self.key, self.retry_after, self.cause_kind)


def _rebuild_error(kind, message, status, key, retry_after, cause_kind) -> LLMError:
    return LLMError(kind, message, status=status, key=key, retry_after=retry_after, cause_kind=cause_kind)


class EndpointUnusable(UserError):
    """The endpoint cannot serve the run at all: every further item would fail the same way. Not an
    `LLMError`: it passes through the callers' per-item handling and stops the run (the `medvl`
    command prints it as one line, exit 2); the client that raised it sends nothing more."""


class EndpointUnreachable(EndpointUnusable, ConnectionError):
    """No connection to the endpoint was ever made: the first request spent its retries failing to
    connect (refused, host not found, connect timeout) and nothing has reached the server since the
    client was made."""


class KeyRejected(EndpointUnusable):
    """The endpoint answered 401, or 403 to several requests in a row: the API key in `$api_key_env`
    is missing, wrong, expired, or not allowed this model. The message names the variable, never the key."""


def estimate_text_tokens(text: str) -> int:
    return (len(text) + CHARS_PER_TOKEN - 1) // CHARS_PER_TOKEN


def estimate_prompt_tokens(messages: list[dict[str, Any]], image_tokens: int) -> int:
    """Approximate prompt tokens: chars/4 for text parts, `image_tokens` per image part."""
    total = 0
    for message in messages:
        total += MESSAGE_OVERHEAD_TOKENS
        content = message.get("content")
        if isinstance(content, str):
            total += estimate_text_tokens(content)
            continue
        for part in content or []:
            if part.get("type") == "text":
                total += estimate_text_tokens(part.get("text", ""))
            elif part.get("type") in {"image_url", "image"}:
                total += image_tokens
    return total


def image_part(image: Any, max_side: int | None = 1024, *, detail: str | None = None) -> dict[str, Any]:
    """An OpenAI `image_url` content part holding `image` (PIL image, path or bytes) as a JPEG data URL.

    Paths and bytes are opened with `medvl.io.images.load_image` (raising its `ImageLoadError`);
    the image is downscaled so its longer side is at most `max_side` (None keeps it as is).
    `detail` ("low", "high", "auto") is passed through when given.
    """
    from medvl.io.images import encode_data_url, load_image

    if isinstance(image, (str, Path, bytes)):
        image = load_image(image)
    payload: dict[str, Any] = {"url": encode_data_url(image, "JPEG", max_side)}
    if detail is not None:
        payload["detail"] = detail
    return {"type": "image_url", "image_url": payload}
