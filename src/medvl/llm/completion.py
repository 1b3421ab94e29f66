"""How `LLMClient` reads the body of a 200: a `ChatReply`, or an `LLMError` for its request.

A body that is not a usable chat completion (not a JSON object, no choices, no message, content
that is neither a string nor null with a `refusal`) is a "bad_response"; finish_reason
"content_filter" is a "content_filter" error. A message with null content but a `refusal` returns
the refusal as its text: detecting refusals and validating JSON belong to the caller.

The body is the server's word, so each field a reply keeps is checked before anything relies on it
(the cache stores them in typed columns; costs add them up): a `model` or `finish_reason` that is
not a string is replaced by the model asked for and "unknown". A token count in `usage` that is not
a whole number from 0 to `MAX_TOKENS_PER_REPLY` (missing, a string, negative, fractional, absurd)
is estimated instead, as when `usage` is missing: chars/4 of the reply, `estimate_prompt_tokens`
of the request. `billed_usage` reads only the counts a body states, for the bodies that fail: the
provider bills those too.
"""

from __future__ import annotations

import math
from typing import Any

from medvl.llm.messages import (
    ChatReply,
    ChatRequest,
    LLMError,
    Usage,
    estimate_prompt_tokens,
    estimate_text_tokens,
)

__all__ = ["MAX_TOKENS_PER_REPLY", "billed_usage", "read_completion"]

# More tokens than any model's context holds (the largest are ~10 million): a count above is garbage.
MAX_TOKENS_PER_REPLY = 100_000_000


def read_completion(completion: Any, request: ChatRequest, image_token_estimate: int) -> ChatReply:
    """The reply in a chat.completion body (module notes); raises `LLMError`."""
    key = request.key
    choices = completion.get("choices") if isinstance(completion, dict) else None
    choice = choices[0] if isinstance(choices, list) and choices else None
    message = choice.get("message") if isinstance(choice, dict) else None
    if not isinstance(message, dict):
        raise LLMError("bad_response", "reply has no choices (or no message)", key=key)
    finish_reason = choice.get("finish_reason") or "unknown"
    finish_reason = finish_reason if isinstance(finish_reason, str) else "unknown"
    if finish_reason == "content_filter":
        raise LLMError("content_filter", "the provider's content filter stopped the reply", key=key)
    text = message.get("content")
    text = message.get("refusal") if text is None else text
    if not isinstance(text, str):
        said = f"reply content is {text!r:.200} (finish_reason {finish_reason})"
        raise LLMError("bad_response", said, key=key)
    prompt, generated = _stated_counts(completion)
    counted = Usage(
        estimate_prompt_tokens(request.messages, image_token_estimate) if prompt is None else prompt,
        estimate_text_tokens(text) if generated is None else generated,
    )
    model = completion.get("model")
    return ChatReply(text, finish_reason, counted, False, key, model if isinstance(model, str) and model
                     else request.params["model"])


def billed_usage(completion: Any) -> Usage:
    """The token counts a body states (0 for each one it does not state readably)."""
    prompt, generated = _stated_counts(completion)
    return Usage(prompt or 0, generated or 0)


def _stated_counts(completion: Any) -> tuple[int | None, int | None]:
    """(prompt_tokens, completion_tokens) of a body's `usage`, None for each missing or unreadable one."""
    usage = completion.get("usage") if isinstance(completion, dict) else None
    usage = usage if isinstance(usage, dict) else {}
    return _count(usage.get("prompt_tokens")), _count(usage.get("completion_tokens"))


def _count(value: Any) -> int | None:
    """A token count: a whole JSON number from 0 to `MAX_TOKENS_PER_REPLY`, else None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    if not math.isfinite(value) or value != int(value) or not 0 <= value <= MAX_TOKENS_PER_REPLY:
        return None
    return int(value)
