"""The one data model of medvl: the LLaVA conversation record.

    {"id": str, "image": [paths] (or one path), "conversations": [{"from": "human"|"gpt", "value": str}], ...meta}

PubMedVision and LLaVA-Med release this format; curation writes it, training reads it, evaluation
and serving speak it. `<image>` in a human turn marks where an image goes; a record whose text has
no `<image>` tag gets one per image at the start of the first human turn (as HuatuoGPT-Vision's
trainer does). This module converts records to chat messages (the shape chat templates and the
OpenAI API use) and back, and says what is wrong with a malformed record.
"""

from __future__ import annotations

import re
from typing import Any

__all__ = [
    "IMAGE_TAG",
    "RecordError",
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


def record_id(record: dict[str, Any]) -> str:
    return str(record.get("id", ""))


def record_images(record: dict[str, Any]) -> list[str]:
    """The record's image paths as a list (`image` may be absent, one string, or a list)."""
    images = record.get("image")
    if images is None or images == "":
        return []
    if isinstance(images, str):
        return [images]
    if isinstance(images, list) and all(isinstance(i, str) for i in images):
        return list(images)
    raise RecordError(f"'image' must be a path or a list of paths, got {type(images).__name__}")


def record_problems(record: Any) -> list[str]:
    """Every structural problem of a record (empty list when it is well formed)."""
    if not isinstance(record, dict):
        return [f"record is {type(record).__name__}, not an object"]
    problems = []
    if not record_id(record):
        problems.append("missing 'id'")
    try:
        images = record_images(record)
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


def to_messages(record: dict[str, Any]) -> list[dict[str, Any]]:
    """Chat messages with content parts: `[{"type": "image"}, {"type": "text", "text": ...}]`.

    Raises RecordError for a malformed record.
    """
    problems = record_problems(record)
    if problems:
        raise RecordError(f"record {record_id(record)!r}: " + "; ".join(problems))
    images = record_images(record)
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
