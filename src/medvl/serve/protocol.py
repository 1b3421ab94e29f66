"""The OpenAI chat-completions wire format, as much of it as medvl serves.

Request models accept what the official clients send (unknown fields are ignored, as OpenAI
does) and reject what medvl cannot honour (`n` > 1, logprobs, penalties, logit_bias,
response_format other than text, tools, audio) with a 400 naming the field instead of silently
doing something else. A seed must lie in 0..2^63-1. `APIError` is every failure, rendered in OpenAI's error shape
`{"error": {"message", "type", "param", "code"}}`. Responses are typed models too
(`ChatCompletion`, `ChatCompletionChunk`), as vLLM's OpenAI server has them; they carry the
research-only disclaimer as an extra `medvl` field, which OpenAI clients keep in `model_extra`.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from medvl.engine import Reply
from medvl.model.checkpoint import DISCLAIMER

__all__ = [
    "APIError",
    "MAX_SEED",
    "ChatCompletionRequest",
    "conversation_of",
    "ChatCompletion",
    "ChatCompletionChunk",
    "Choice",
    "ChunkChoice",
    "AssistantMessage",
    "Notice",
    "Usage",
    "apply_stop",
]

MAX_SEED = 2**63 - 1

_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    404: "not_found_error",
    408: "invalid_request_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
    500: "server_error",
    503: "server_error",
}


class APIError(Exception):
    """A request that gets an HTTP error; `body()` is OpenAI's error object."""

    def __init__(self, status: int, message: str, code: str | None = None, param: str | None = None,
                 headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.code, self.param = status, message, code, param
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        kind = _ERROR_TYPES.get(self.status, "server_error" if self.status >= 500 else "invalid_request_error")
        return {"error": {"message": self.message, "type": kind, "param": self.param, "code": self.code}}


class _Lenient(BaseModel):
    model_config = ConfigDict(extra="ignore")


class TextPart(_Lenient):
    type: Literal["text"]
    text: str


class ImageURL(_Lenient):
    url: str
    detail: str | None = None


class ImagePart(_Lenient):
    type: Literal["image_url"]
    image_url: ImageURL


ContentPart = Annotated[TextPart | ImagePart, Field(discriminator="type")]


class ChatMessage(_Lenient):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[ContentPart] | None = None


class StreamOptions(_Lenient):
    include_usage: bool = False


class ChatCompletionRequest(_Lenient):
    model: str | None = None
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    n: int = Field(1, ge=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = None
    seed: int | None = Field(None, ge=0, le=MAX_SEED)
    # fields read only to refuse values medvl cannot honour (see `unsupported`)
    logprobs: bool | None = None
    top_logprobs: int | None = None
    frequency_penalty: float | None = None
    presence_penalty: float | None = None
    logit_bias: dict[str, Any] | None = None
    response_format: dict[str, Any] | None = None
    tools: list[Any] | None = None
    functions: list[Any] | None = None
    audio: dict[str, Any] | None = None
    modalities: list[str] | None = None
    prediction: dict[str, Any] | None = None

    def unsupported(self) -> APIError | None:
        """The first option medvl cannot honour, as a 400 naming it."""
        refused = {
            "n": self.n != 1,
            "logprobs": bool(self.logprobs),
            "top_logprobs": bool(self.top_logprobs),
            "frequency_penalty": bool(self.frequency_penalty),
            "presence_penalty": bool(self.presence_penalty),
            "logit_bias": bool(self.logit_bias),
            "response_format": self.response_format is not None and self.response_format.get("type") != "text",
            "tools": bool(self.tools),
            "functions": bool(self.functions),
            "audio": self.audio is not None,
            "modalities": any(m != "text" for m in self.modalities or []),
            "prediction": self.prediction is not None,
        }
        for name, is_refused in refused.items():
            if is_refused:
                value = json.dumps(getattr(self, name), default=str)[:80]
                return APIError(400, f"{name}={value} is not supported by this server (only n=1, text answers, "
                                "no logprobs, penalties, logit_bias, tools or audio)", "unsupported_parameter", name)
        if len(self.stop_list()) > 4 or any(not s for s in self.stop_list()):
            return APIError(400, "stop takes up to 4 non-empty strings", "invalid_value", "stop")
        return None

    def stop_list(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)

    def requested_max_tokens(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens

    def text_chars(self) -> int:
        """Characters of text in all messages."""
        total = 0
        for message in self.messages:
            if isinstance(message.content, str):
                total += len(message.content)
            elif message.content:
                total += sum(len(part.text) for part in message.content if isinstance(part, TextPart))
        return total

    def image_count(self) -> int:
        return sum(isinstance(part, ImagePart) for m in self.messages if isinstance(m.content, list)
                   for part in m.content)


def conversation_of(request: ChatCompletionRequest, system_prompt: str | None = None
                    ) -> tuple[list[dict[str, Any]], list[str]]:
    """medvl chat messages (`{"type": "image"}` parts) and the image URLs, in order. Text that is not UTF-8
    (a lone surrogate sent as a JSON escape, which the tokenizer fails on) is a 400 naming the message."""
    from medvl.serve.session import NotUtf8Text, check_text

    def text_of(value: str, index: int) -> str:
        try:
            return check_text(value, f"messages[{index}].content")
        except NotUtf8Text as exc:
            raise APIError(400, str(exc), "invalid_value", f"messages[{index}].content") from None

    messages: list[dict[str, Any]] = []
    urls: list[str] = []
    if system_prompt and not any(m.role in ("system", "developer") for m in request.messages):
        messages.append({"role": "system", "content": system_prompt})
    for index, message in enumerate(request.messages):
        role = "system" if message.role == "developer" else message.role
        content = message.content
        if content is None or isinstance(content, str):
            messages.append({"role": role, "content": text_of(content or "", index)})
            continue
        parts: list[dict[str, Any]] = []
        for part in content:
            if isinstance(part, TextPart):
                parts.append({"type": "text", "text": text_of(part.text, index)})
            elif role != "user":
                raise APIError(400, f"messages[{index}]: images are only accepted in user messages",
                               "invalid_value", f"messages[{index}].content")
            else:
                parts.append({"type": "image"})
                urls.append(part.image_url.url)
        if role == "user":
            messages.append({"role": role, "content": parts})
        else:
            messages.append({"role": role, "content": "".join(p["text"] for p in parts)})
    return messages, urls


def apply_stop(text: str, stops: list[str]) -> tuple[str, bool]:
    """`text` cut before the first stop string, and whether one was found."""
    positions = [text.find(s) for s in stops if s in text]
    return (text[: min(positions)], True) if positions else (text, False)


def new_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex[:24]}"


def _now() -> int:
    return int(time.time())


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int

    @classmethod
    def of(cls, reply: Reply) -> "Usage":
        """The tokens of an engine's reply (the prompt's, and those it generated)."""
        return cls(prompt_tokens=reply.prompt_tokens, completion_tokens=reply.new_tokens,
                   total_tokens=reply.prompt_tokens + reply.new_tokens)


class Notice(BaseModel):
    """medvl's extra field on answers (OpenAI clients keep it in `model_extra`)."""

    disclaimer: str = DISCLAIMER


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class Choice(BaseModel):
    index: int = 0
    message: AssistantMessage
    finish_reason: str
    logprobs: None = None


class ChatCompletion(BaseModel):
    """A non-streaming `chat.completion` (the disclaimer always in `medvl`)."""

    id: str = Field(default_factory=new_id)
    object: Literal["chat.completion"] = "chat.completion"
    created: int = Field(default_factory=_now)
    model: str
    choices: list[Choice]
    usage: Usage
    medvl: Notice = Field(default_factory=Notice)


class ChunkChoice(BaseModel):
    index: int = 0
    delta: dict[str, str]
    finish_reason: str | None = None
    logprobs: None = None


class ChatCompletionChunk(BaseModel):
    """One `chat.completion.chunk`; without choices and with `usage`, the usage-only chunk. `usage` and
    `medvl` appear only when set."""

    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int = Field(default_factory=_now)
    model: str
    choices: list[ChunkChoice] = Field(default_factory=list)
    usage: Usage | None = None
    medvl: Notice | None = None

    def body(self) -> dict[str, Any]:
        return self.model_dump(exclude={name for name in ("usage", "medvl") if getattr(self, name) is None})
