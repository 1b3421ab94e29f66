"""The one data model of medvl: the LLaVA conversation record.

    {"id": str, "image": [paths] (or one path), "conversations": [{"from": "human"|"gpt", "value": str}], ...meta}

PubMedVision and LLaVA-Med release this format; curation writes it, training reads it, evaluation
and serving speak it. `<image>` in a human turn marks where an image goes; a record whose text has
no `<image>` tag gets one per image at the start of the first human turn (as HuatuoGPT-Vision's
trainer does). This module is the one place records are built (`make_record`) and read: their
images (`record_images`), conversion to chat messages (the shape chat templates and the OpenAI API
use) and back, and what is wrong with a malformed record.

Records read from JSON hold image paths. Rows of a Hugging Face dataset may instead hold the images
themselves, under `image` or `images`: `{"bytes", "path"}` dicts or decoded PIL images. Readers of
such rows pass `embedded=True` to `record_images`, `record_problems` and `to_messages`.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

__all__ = [
    "IMAGE_TAG",
    "RecordError",
    "make_record",
    "record_id",
    "record_images",
    "record_problems",
    "to_messages",
    "from_messages",
    "message_image_count",
]

IMAGE_TAG = "<image>"
ROLE_OF = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}
FROM_OF = {"user": "human", "assistant": "gpt", "system": "system"}
_TAG_SPLIT = re.compile(r"(<image>\n?)")


class RecordError(ValueError):
    """A record that does not fit the conversation format; the message says why."""


def make_record(record_id: str, images: Sequence[str], exchanges: Sequence[tuple[str, str]],
                images_after: bool = False, **meta: Any) -> dict[str, Any]:
    """A record of question/answer `exchanges` about `images`: one `<image>` line per image opens the
    first human turn (with `images_after`, closes it, as LLaVA-Med places them half the time);
    `meta` keys follow the conversation."""
    turns = []
    for index, (question, answer) in enumerate(exchanges):
        if index == 0 and images:
            question = (f"{question}\n" + "\n".join([IMAGE_TAG] * len(images)) if images_after
                        else (IMAGE_TAG + "\n") * len(images) + question)
        turns += [{"from": "human", "value": question}, {"from": "gpt", "value": answer}]
    return {"id": record_id, "image": list(images), "conversations": turns, **meta}


def record_id(record: dict[str, Any]) -> str:
    return str(record.get("id", ""))


def record_images(record: dict[str, Any], embedded: bool = False) -> list[Any]:
    """The record's images as a list (`image` may be absent, one entry, or a list of entries).

    Entries are paths; with `embedded` (rows of a Hugging Face dataset) the field may be called
    `images` and an entry may also be a `{"bytes", "path"}` dict or a decoded image. Any other entry
    is a RecordError.
    """
    images = record.get("image", record.get("images")) if embedded else record.get("image")
    if images is None or images == "":
        return []
    entries = images if isinstance(images, list) else [images]
    if all(isinstance(i, str) or (embedded and _is_embedded_image(i)) for i in entries):
        return list(entries)
    if embedded:
        raise RecordError("an image entry is neither a path, {bytes, path} nor a decoded image")
    raise RecordError(f"'image' must be a path or a list of paths, got {type(images).__name__}")


def _is_embedded_image(entry: Any) -> bool:
    if isinstance(entry, dict):
        return bool(entry.get("bytes") or entry.get("path"))
    return hasattr(entry, "mode") and hasattr(entry, "size")  # a decoded PIL image


def record_problems(record: Any, embedded: bool = False) -> list[str]:
    """Every structural problem of a record (empty list when it is well formed)."""
    if not isinstance(record, dict):
        return [f"record is {type(record).__name__}, not an object"]
    problems = []
    if not record_id(record):
        problems.append("missing 'id'")
    try:
        images = record_images(record, embedded)
    except RecordError as exc:
        problems.append(str(exc))
        images = []
    turns = record.get("conversations")
    if not isinstance(turns, list) or not turns:
        return problems + ["'conversations' must be a non-empty list"]
    tags = 0
    roles = []
    for index, turn in enumerate(turns):
        if not isinstance(turn, dict) or not isinstance(turn.get("value"), str):
            problems.append(f"turn {index} must be an object with a string 'value'")
            continue
        role = ROLE_OF.get(turn.get("from", ""))
        if role is None:
            problems.append(f"turn {index}: unknown speaker {turn.get('from')!r}")
            continue
        roles.append(role)
        tags += turn["value"].count(IMAGE_TAG)
        if role == "assistant" and IMAGE_TAG in turn["value"]:
            problems.append(f"turn {index}: <image> in an assistant turn")
    dialogue = [r for r in roles if r != "system"]
    if dialogue and dialogue[0] != "user":
        problems.append("the first turn must be from the human")
    if any(a == b for a, b in zip(dialogue, dialogue[1:])):
        problems.append("speakers must alternate human/gpt")
    if "assistant" not in dialogue:
        problems.append("no gpt turn")
    if tags and tags != len(images):
        problems.append(f"{tags} <image> tags but {len(images)} images")
    return problems


def to_messages(record: dict[str, Any], embedded: bool = False) -> list[dict[str, Any]]:
    """Chat messages with content parts: `[{"type": "image"}, {"type": "text", "text": ...}]`.

    Raises RecordError for a malformed record.
    """
    problems = record_problems(record, embedded)
    if problems:
        raise RecordError(f"record {record_id(record)!r}: " + "; ".join(problems))
    images = record_images(record, embedded)
    turns = record["conversations"]
    tagged = any(IMAGE_TAG in t["value"] for t in turns)
    messages = []
    first_user = True
    for turn in turns:
        role = ROLE_OF[turn["from"]]
        text = turn["value"]
        if role == "user" and first_user and images and not tagged:
            text = (IMAGE_TAG + "\n") * len(images) + text
        if role == "user":
            first_user = False
        messages.append({"role": role, "content": _split_parts(text) if role == "user" else _text_only(text)})
    return messages


def from_messages(messages: list[dict[str, Any]]) -> list[dict[str, str]]:
    """Inverse of `to_messages`: conversations with `<image>\\n` where each image part was."""
    turns = []
    for message in messages:
        content = message["content"]
        if isinstance(content, str):
            value = content
        else:
            value = "".join(IMAGE_TAG + "\n" if p["type"] in ("image", "image_url") else p["text"] for p in content)
        turns.append({"from": FROM_OF[message["role"]], "value": value})
    return turns


def message_image_count(messages: list[dict[str, Any]]) -> int:
    return sum(
        1
        for m in messages
        if not isinstance(m["content"], str)
        for p in m["content"]
        if p.get("type") in ("image", "image_url")
    )


def _split_parts(text: str) -> list[dict[str, Any]]:
    parts: list[dict[str, Any]] = []
    for piece in _TAG_SPLIT.split(text):
        if not piece:
            continue
        if piece.startswith(IMAGE_TAG):
            parts.append({"type": "image"})
        else:
            parts.append({"type": "text", "text": piece})
    return parts


def _text_only(text: str) -> list[dict[str, Any]]:
    return [{"type": "text", "text": text}]
