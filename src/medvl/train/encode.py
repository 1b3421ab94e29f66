"""Chat messages → training tokens: input ids with image tokens expanded, labels on assistant text.

The model's own chat template renders the conversation. Assistant character spans come from the
template's `{% generation %}` markers when it has them (one per assistant message), else from
prefix rendering, which works for any template: the span of assistant message i runs from the end
of `render(messages[:i], add_generation_prompt=True)` to the end of `render(messages[:i+1])`
(surrounding whitespace trimmed). A token is supervised when its characters overlap a span.

Each image placeholder token is then expanded to the number of image tokens the processor uses, so
the ids equal `processor(text, images)`'s. Truncation to `max_length` never cuts inside an image
span: such a sample is an `EncodeError` (reason `image_cut_by_truncation`), as is a sample with no
supervised token left; `Encoded.answer_tokens_cut` says how many supervised tokens a cut removed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from transformers.utils.chat_template_utils import render_jinja_template

from medvl.errors import Rejection, UserError
from medvl.records import message_image_count

__all__ = ["EncodeError", "EncoderUnusable", "Encoded", "ChatEncoder", "IGNORE_INDEX"]

IGNORE_INDEX = -100
_GENERATION_TAG = re.compile(r"\{%-?\s*generation\s*-?%\}")


class EncodeError(Rejection):
    """A conversation that cannot become a training example; `.reason` is a short code."""


class EncoderUnusable(UserError, ValueError):
    """A processor that cannot encode training data at all (slow tokenizer, no chat template)."""


@dataclass
class Encoded:
    input_ids: list[int]
    labels: list[int]
    num_images: int
    full_length: int  # before truncation
    answer_tokens_cut: int = 0  # supervised tokens truncation removed

    @property
    def supervised(self) -> int:
        return sum(1 for label in self.labels[1:] if label != IGNORE_INDEX)


class ChatEncoder:
    """Encodes chat messages for one processor (tokenizer + chat template + image token count)."""

    def __init__(self, processor: Any, max_length: int, last_turn_only: bool = False,
                 overlong: str = "truncate", chat_template: str | None = None):
        self.tokenizer = processor.tokenizer
        if not getattr(self.tokenizer, "is_fast", False):
            raise EncoderUnusable("training needs a fast tokenizer (character offsets locate the assistant spans)")
        self.template = chat_template or processor.chat_template
        if not self.template:
            raise EncoderUnusable("the processor has no chat template")
        self.image_token_id = processor.image_token_id
        self.tokens_per_image = image_token_count(processor)
        self.max_length = max_length
        self.last_turn_only = last_turn_only
        self.overlong = overlong
        self.uses_generation_tags = bool(_GENERATION_TAG.search(self.template))
        self._template_vars = dict(self.tokenizer.special_tokens_map)

    def render(self, messages: list[dict], add_generation_prompt: bool = False) -> str:
        rendered, _ = render_jinja_template(
            [messages], chat_template=self.template, add_generation_prompt=add_generation_prompt,
            **self._template_vars,
        )
        return rendered[0]

    def assistant_spans(self, messages: list[dict]) -> tuple[str, list[tuple[int, int]]]:
        """The rendered text and one (start, end) character span per assistant message."""
        assistants = [i for i, m in enumerate(messages) if m["role"] == "assistant"]
        if self.uses_generation_tags:
            rendered, indices = render_jinja_template(
                [messages], chat_template=self.template, return_assistant_tokens_mask=True, **self._template_vars
            )
            if len(indices[0]) == len(assistants):
                return rendered[0], [tuple(span) for span in indices[0]]
        text = self.render(messages)
        spans = []
        for index in assistants:
            prefix = self.render(messages[:index], add_generation_prompt=True)
            upto = self.render(messages[: index + 1])
            if not (upto.startswith(prefix) and text.startswith(upto)):
                raise EncodeError(
                    "template_not_prefix_stable",
                    f"rendering the first {index} messages is not a prefix of the conversation; "
                    "add {% generation %} markers to the chat template",
                )
            start, end = len(prefix), len(upto)
            while start < end and upto[start].isspace():
                start += 1
            while end > start and upto[end - 1].isspace():
                end -= 1
            spans.append((start, end))
        return text, spans

    def encode(self, messages: list[dict]) -> Encoded:
        """Token ids and labels of a conversation; raises EncodeError for an unusable one."""
        try:
            text, spans = self.assistant_spans(messages)
        except EncodeError:
            raise
        except Exception as exc:  # a template that raises on this conversation (roles, content)
            raise EncodeError("template_error", str(exc)) from exc
        if self.last_turn_only:
            spans = spans[-1:]
        tokens = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        input_ids: list[int] = []
        labels: list[int] = []
        image_positions: list[int] = []
        for token, (start, end) in zip(tokens["input_ids"], tokens["offset_mapping"]):
            if token == self.image_token_id:
                image_positions.append(len(input_ids))
                input_ids.extend([token] * self.tokens_per_image)
                labels.extend([IGNORE_INDEX] * self.tokens_per_image)
                continue
            supervised = any(start < b and end > a for a, b in spans)
            input_ids.append(token)
            labels.append(token if supervised else IGNORE_INDEX)
        expected = message_image_count(messages)
        if len(image_positions) != expected:
            raise EncodeError("template_error", f"{expected} images but {len(image_positions)} image tokens rendered")
        full_length, cut = len(input_ids), 0
        if full_length > self.max_length:
            if self.overlong == "reject":
                raise EncodeError("too_long", f"{full_length} tokens > max_length {self.max_length}")
            if image_positions and image_positions[-1] + self.tokens_per_image > self.max_length:
                raise EncodeError(
                    "image_cut_by_truncation",
                    f"{full_length} tokens; an image span ends at {image_positions[-1] + self.tokens_per_image} "
                    f"> max_length {self.max_length}",
                )
            cut = sum(1 for label in labels[self.max_length:] if label != IGNORE_INDEX)
            input_ids, labels = input_ids[: self.max_length], labels[: self.max_length]
        encoded = Encoded(input_ids, labels, len(image_positions), full_length, cut)
        if encoded.supervised == 0:
            where = "after truncation" if full_length > self.max_length else "in the rendered conversation"
            raise EncodeError("no_supervised_tokens", f"no assistant token {where}")
        return encoded


def image_token_count(processor: Any) -> int:
    """Image tokens per image, as the processor expands them (fixed crop size for LLaVA)."""
    data = processor._get_num_multimodal_tokens(image_sizes=[(1, 1)])
    return int(data["num_image_tokens"][0])
