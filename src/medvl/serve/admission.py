"""Admission: the checks a chat request passes before the model thread sees it, cheapest first.

1. The raw body, before any JSON parsing: it may hold at most `limits.max_messages` `"role":`
   keys and `limits.max_content_parts` `"type":` keys. Counting bytes costs a scan where parsing
   a 30 MB body of 300k tiny messages, or of a million empty text parts (whose chat template
   takes seconds to render), would build that many objects. (Keys in ignored fields count too;
   step 2 counts exactly.)
2. Parsing (in a worker thread): the JSON (nested too deeply for the parser: 400 too), the
   message and content part counts, the request model (400 naming the field), then the
   characters of text in all messages (`limits.max_text_chars`).
3. An estimated token bound: the prompt has at least (images x tokens per image) + (characters /
   the longest token's characters) tokens. A request whose bound exceeds its prompt limit could
   never fit and is refused before anything is rendered.
4. The exact prompt length, images expanded: the chat template rendered and tokenised by a
   private copy of the engine's processor (one request at a time, in a worker thread), so neither
   the event loop nor the model thread spends time on a prompt that will be refused. The encoding
   goes with the admitted request to the engine (`Request.inputs`), which does not encode it again.
"""

from __future__ import annotations

import copy
import json
import math
import re
import threading
from itertools import islice
from typing import Any

from PIL import Image
from pydantic import ValidationError

from medvl.model.generate import encode_prompts
from medvl.serve.config import Limits
from medvl.serve.protocol import APIError, ChatCompletionRequest
from medvl.serve.session import system_prompt_too_long

__all__ = ["Admission", "invalid_request"]

_ROLE_KEY = re.compile(rb'"role"\s*:')
_TYPE_KEY = re.compile(rb'"type"\s*:')


def invalid_request(exc: ValidationError) -> APIError:
    """The first problem of a request that does not fit the request model, as a 400 naming the field."""
    first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
    param = ".".join(str(part) for part in first["loc"]) or None
    return APIError(400, f"{param or 'request'}: {first['msg']}", "invalid_request", param)


def _too_many_messages(count: str, limit: int) -> APIError:
    return APIError(400, f"the request holds {count} messages; this server takes at most {limit} "
                    "(limits.max_messages)", "too_many_messages", "messages")


def _too_many_parts(count: str, limit: int) -> APIError:
    return APIError(400, f"the messages hold {count} content parts; this server takes at most {limit} "
                    "(limits.max_content_parts)", "too_many_content_parts", "messages")


def _holds_more(body: bytes, key: bytes, pattern: re.Pattern[bytes], limit: int) -> bool:
    """Whether `body` holds more than `limit` JSON keys `key` (a byte count first, the exact pattern only then)."""
    return body.count(key) > limit and len(list(islice(pattern.finditer(body), limit + 1))) > limit


def _content_parts(messages: Any) -> int:
    """The content parts (text and image) of a parsed body's messages, whatever their shape."""
    if not isinstance(messages, list):
        return 0
    return sum(len(m["content"]) for m in messages if isinstance(m, dict) and isinstance(m.get("content"), list))


def _too_long(tokens: str, limit: int, cause: str = "") -> APIError:
    return APIError(400, f"{cause}the prompt has {tokens} tokens (images included); this request allows at most "
                    f"{limit} (prompt limit and context length, minus max_tokens)", "context_length_exceeded",
                    "messages")


class Admission:
    """The admission checks of one server (one private processor copy, used one request at a time)."""

    def __init__(self, processor: Any, limits: Limits):
        self.limits = limits
        self.processor = copy.deepcopy(processor)
        self._lock = threading.Lock()
        self.longest_token = max(len(token) for token in self.processor.tokenizer.get_vocab())
        text_only = [{"role": "user", "content": [{"type": "text", "text": "x"}]}]
        with_image = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "x"}]}]
        # less one: the text around an image part may tokenise differently next to its neighbours
        self.image_tokens = max(self.prompt_tokens(with_image, [Image.new("RGB", (64, 64))])
                                - self.prompt_tokens(text_only, []) - 1, 0)

    def parse(self, body: bytes) -> ChatCompletionRequest:
        """Steps 1 and 2 (blocking: call it from a worker thread)."""
        limit, part_limit = self.limits.max_messages, self.limits.max_content_parts
        if _holds_more(body, b'"role"', _ROLE_KEY, limit):
            raise _too_many_messages(f"more than {limit}", limit)
        if _holds_more(body, b'"type"', _TYPE_KEY, part_limit):
            raise _too_many_parts(f"more than {part_limit}", part_limit)
        try:
            data = json.loads(body)
        except ValueError as exc:
            raise APIError(400, f"the body is not valid JSON: {exc}", "invalid_json") from None
        except RecursionError:
            raise APIError(400, "the body is not valid JSON: it is nested too deeply", "invalid_json") from None
        if not isinstance(data, dict):
            raise APIError(400, "the body must be a JSON object", "invalid_request")
        if isinstance(data.get("messages"), list) and len(data["messages"]) > limit:
            raise _too_many_messages(str(len(data["messages"])), limit)
        if (parts := _content_parts(data.get("messages"))) > part_limit:
            raise _too_many_parts(str(parts), part_limit)
        try:
            request = ChatCompletionRequest.model_validate(data)
        except ValidationError as exc:
            raise invalid_request(exc) from None
        if (chars := request.text_chars()) > self.limits.max_text_chars:
            raise APIError(400, f"the messages hold {chars} characters of text; this server takes at most "
                           f"{self.limits.max_text_chars} (limits.max_text_chars)", "too_much_text", "messages")
        return request

    def check_estimate(self, request: ChatCompletionRequest, prompt_limit: int) -> None:
        """Step 3: refuse a request that could not fit whatever its text tokenises to."""
        bound = request.image_count() * self.image_tokens + math.ceil(request.text_chars() / self.longest_token)
        if bound > prompt_limit:
            raise _too_long(f"at least {bound}", prompt_limit)

    def encode(self, messages: list[dict[str, Any]], images: list[Any], prompt_limit: int) -> Any:
        """Step 4 (blocking): the prompt encoded (`encode_prompts` of this one conversation), refused when
        its exact token count is over `prompt_limit`."""
        try:
            inputs = self._encode(messages, images)
        except Exception as exc:  # a template/processor failure belongs to this request only
            raise APIError(400, f"the request could not be encoded: {exc}", "invalid_request") from exc
        tokens = int(inputs["input_ids"].shape[1])
        if tokens > prompt_limit:
            raise self._too_long_saying_why(messages, images, tokens, prompt_limit)
        return inputs

    def _too_long_saying_why(self, messages: list[dict[str, Any]], images: list[Any], tokens: int,
                             prompt_limit: int) -> APIError:
        """The 400 for a prompt over the limit, naming the system message when the rest alone would fit (in the
        words of `medvl chat`, `system_prompt_too_long`)."""
        if len(messages) > 1 and messages[0]["role"] == "system":
            without = self.prompt_tokens(messages[1:], images)
            if without <= prompt_limit:
                return _too_long(str(tokens), prompt_limit,
                                 f"{system_prompt_too_long(tokens, 'the other messages', without)}; ")
        return _too_long(str(tokens), prompt_limit)

    def prompt_tokens(self, messages: list[dict[str, Any]], images: list[Any]) -> int:
        return int(self._encode(messages, images)["input_ids"].shape[1])

    def _encode(self, messages: list[dict[str, Any]], images: list[Any]) -> Any:
        with self._lock:
            return encode_prompts(self.processor, [messages], [images])
