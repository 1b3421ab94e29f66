"""Multi-turn chat state shared by `medvl chat` and `medvl webui`, and the API's sampling settings.

A conversation is medvl's chat messages (user turns hold `{"type": "image"}` parts) plus the
images in the order their parts appear. `fit_context` drops the oldest exchanges, images
included, when the prompt and the answer would not fit the model's context, instead of failing
on turn N. `ChatSession` keeps the history and the images attached for the next question.
`check_text` refuses text that is not UTF-8 (bytes a terminal could not decode, lone surrogates
sent as JSON escapes), which the tokenizer would fail on with a TypeError.
"""

from __future__ import annotations

import secrets
from contextlib import closing
from dataclasses import dataclass, field
from typing import Any, Iterator

from PIL import Image

from medvl.errors import UserError
from medvl.model.generate import GenerationSettings, Generator, context_length
from medvl.records import message_image_count

__all__ = ["ChatSession", "ContextOverflow", "NotUtf8Text", "check_answer_room", "check_text", "fit_context",
           "sampling_settings", "system_prompt_too_long", "user_turn"]


class ContextOverflow(UserError, ValueError):
    """The newest question with its images alone does not fit the model's context."""


class NotUtf8Text(UserError, ValueError):
    """A question or system prompt holding characters that are not UTF-8 text (the message says where)."""


def check_text(text: str, what: str) -> str:
    """`text`, or `NotUtf8Text` naming `what` ("the question") and the first character that is not UTF-8:
    a byte the terminal could not decode (Python keeps it as a surrogate) or a lone surrogate."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        code = ord(text[exc.start])
        found = f"byte 0x{code - 0xDC00:02x}" if 0xDC80 <= code <= 0xDCFF else f"lone surrogate U+{code:04X}"
        raise NotUtf8Text(f"{what} is not UTF-8 text ({found} at character {exc.start + 1})") from None
    return text


def sampling_settings(max_new_tokens: int, temperature: float = 0.0, top_p: float = 1.0,
                      seed: int | None = None) -> GenerationSettings:
    """Greedy for temperature 0 (reproducible), otherwise sampling with temperature/top_p, seeded by
    `seed` or, without one, by fresh randomness (so asking again gives another answer)."""
    if temperature <= 0:
        return GenerationSettings(max_new_tokens=max_new_tokens)
    seed = secrets.randbits(63) if seed is None else seed
    return GenerationSettings(max_new_tokens=max_new_tokens, do_sample=True, temperature=temperature,
                              top_p=top_p, seed=seed)


def user_turn(text: str, n_images: int) -> dict[str, Any]:
    """A user message with `n_images` image parts before the text."""
    return {"role": "user", "content": [{"type": "image"} for _ in range(n_images)] + [{"type": "text", "text": text}]}


def check_answer_room(generator: Generator, max_new_tokens: int) -> int:
    """The prompt tokens left beside `max_new_tokens` in the model's context (`ContextOverflow` if none)."""
    context = context_length(generator.model.config)
    if max_new_tokens >= context:
        raise ContextOverflow(f"max_new_tokens={max_new_tokens} leaves no room for a question in the model's "
                              f"context of {context} tokens; ask for at most {context - 1}, fewer for long questions")
    return context - max_new_tokens


def fit_context(generator: Generator, messages: list[dict[str, Any]], images: list[Any], max_new_tokens: int
                ) -> tuple[list[dict[str, Any]], list[Any], int]:
    """(messages, images, exchanges dropped) so that prompt + max_new_tokens fits the context.

    A leading system message is kept; whole user/assistant exchanges go, oldest first.
    """
    limit = check_answer_room(generator, max_new_tokens)
    system = [m for m in messages[:1] if m["role"] == "system"]
    turns, dropped = messages[len(system):], 0
    while True:
        prompt = len(generator.encode([system + turns], [images])["input_ids"][0])
        if prompt <= limit:
            return system + turns, images, dropped
        if len(turns) <= 1:
            raise _overflow(generator, system, turns, images, prompt, limit, max_new_tokens)
        cut = 2 if len(turns) > 2 and turns[1]["role"] == "assistant" else 1
        images = images[message_image_count(turns[:cut]):]
        turns, dropped = turns[cut:], dropped + 1


def system_prompt_too_long(prompt_tokens: int, rest: str, rest_tokens: int) -> str:
    """The words, for `medvl chat` and `medvl serve` alike, for a prompt of `prompt_tokens` that does not fit
    because of its system prompt: `rest` (the rest of the prompt, e.g. "the question") takes `rest_tokens`,
    which would fit. The caller adds the limit (each counts tokens its own way)."""
    return f"the system prompt is too long: it takes {prompt_tokens - rest_tokens} tokens, {rest} {rest_tokens}"


def _overflow(generator: Generator, system: list[dict[str, Any]], question: list[dict[str, Any]], images: list[Any],
              prompt: int, limit: int, max_new_tokens: int) -> ContextOverflow:
    """The error for a prompt of `prompt` tokens over `limit`, naming the system prompt when it is what
    does not fit (the question with its images alone would)."""
    allowed = f"with max_new_tokens={max_new_tokens} the model's context allows {limit} prompt tokens"
    if system:
        alone = len(generator.encode([question], [images])["input_ids"][0])
        if alone <= limit:
            return ContextOverflow(f"{system_prompt_too_long(prompt, 'the question', alone)}; {allowed}")
        prompt = alone
    return ContextOverflow(f"the question and its images take {prompt} tokens; {allowed}")


@dataclass
class ChatSession:
    """History + attached images; `stream(question)` answers and records the exchange."""

    generator: Generator
    settings: GenerationSettings = field(default_factory=GenerationSettings)
    system_prompt: str | None = None
    messages: list[dict[str, Any]] = field(default_factory=list)
    images: list[Image.Image] = field(default_factory=list)
    pending: list[Image.Image] = field(default_factory=list)
    dropped: int = 0  # exchanges dropped from the start to fit the context

    def attach(self, image: Image.Image) -> None:
        self.pending.append(image)

    def clear(self) -> None:
        self.messages, self.images, self.pending, self.dropped = [], [], [], 0

    def stream(self, question: str) -> Iterator[str]:
        """Yield the answer's text deltas; the exchange joins the history once it is complete."""
        messages, images, dropped = self._conversation(question)
        answer = ""
        with closing(self.generator.stream(messages, images, self.settings)) as deltas:  # closed: the model stops
            for delta in deltas:
                answer += delta
                yield delta
        self._record(messages, images, dropped, answer)

    def ask(self, question: str) -> str:
        messages, images, dropped = self._conversation(question)
        answer = self.generator.generate([messages], [images], self.settings)[0].text
        self._record(messages, images, dropped, answer)
        return answer

    def _conversation(self, question: str) -> tuple[list[dict[str, Any]], list[Any], int]:
        check_text(question, "the question")
        system = [{"role": "system", "content": self.system_prompt}] if self.system_prompt and not self.messages else []
        messages = system + self.messages + [user_turn(question, len(self.pending))]
        return fit_context(self.generator, messages, self.images + self.pending, self.settings.max_new_tokens)

    def _record(self, messages: list[dict[str, Any]], images: list[Any], dropped: int, answer: str) -> None:
        """Keep a completed exchange; the exchanges dropped to make room for it are gone only now (a
        stopped answer leaves the history as it was)."""
        self.messages = messages + [{"role": "assistant", "content": answer.strip()}]
        self.images, self.pending = list(images), []
        self.dropped += dropped
