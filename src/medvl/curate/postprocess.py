"""Post-processing of generated text: JSON schema, refusals, context leaks, LLaVA-Med turn cleaning.

Every function either returns clean data or raises `Rejected(reason, detail)`, which the
generation step records as a reject (stage `generate`). Reasons:

- `invalid_json`: the reformatting reply is not one JSON object (fenced ```json blocks are accepted);
- `schema`: the object lacks a field, has a wrong type, or an empty / too-short text;
- `refusal`: a refusal phrase ("I'm sorry", "as an AI", "cannot see the image", ...);
- `context_leak`: the text talks about its input ("based on the caption", "the text mentions", ...);
- `no_turns`: a self-instruct reply with no usable User/Assistant pair left after cleaning.

The phrase lists and patterns live in `prompts/postprocess.yaml`.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import lru_cache

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from medvl.curate.prompts import postprocess_rules
from medvl.errors import Rejection

__all__ = [
    "Rejected",
    "ReformatReply",
    "parse_reformat",
    "find_refusal",
    "find_leak",
    "parse_conversation",
    "clean_turns",
]

_FENCE = re.compile(r"^```(?:json)?\s*(.*?)\s*```$", re.DOTALL | re.IGNORECASE)
_TURN = re.compile(r"^\s*(User|Assistant)\s*:\s*", re.IGNORECASE | re.MULTILINE)


class Rejected(Rejection):
    """A generated reply turned away (`reason`, `detail`: see the module notes)."""


class ReformatReply(BaseModel):
    """The JSON object the reformatting prompt asks for."""

    model_config = ConfigDict(extra="ignore", str_strip_whitespace=True)

    modality: str = Field(min_length=1)
    body_part: str = Field(min_length=1)
    description: str = Field(min_length=20)
    question: str = Field(min_length=5)
    answer: str = Field(min_length=2)


@dataclass(frozen=True)
class _Rules:
    refusals: tuple[str, ...]
    leaks: tuple[str, ...]
    prefixes: tuple[re.Pattern, ...]
    inline: tuple[re.Pattern, ...]
    forbidden: tuple[str, ...]


@lru_cache(maxsize=1)
def _rules() -> _Rules:
    raw = postprocess_rules()
    return _Rules(
        refusals=tuple(p.lower() for p in raw["refusal_phrases"]),
        leaks=tuple(p.lower() for p in raw["leak_phrases"]),
        prefixes=tuple(re.compile(p, re.IGNORECASE) for p in raw["leak_prefix_patterns"]),
        inline=tuple(re.compile(p, re.IGNORECASE) for p in raw["leak_inline_patterns"]),
        forbidden=tuple(w.lower() for w in raw["forbidden_words"]),
    )


def _normalise_quotes(text: str) -> str:
    return text.replace("\u2019", "'").replace("\u2018", "'").lower()


def find_refusal(text: str) -> str | None:
    low = _normalise_quotes(text)
    return next((p for p in _rules().refusals if p in low), None)


def find_leak(text: str) -> str | None:
    low = _normalise_quotes(text)
    return next((p for p in _rules().leaks if p in low), None)


def parse_reformat(text: str) -> ReformatReply:
    """Validate a reformatting reply; raise `Rejected` with the reason."""
    refusal = find_refusal(text)
    stripped = text.strip()
    fenced = _FENCE.match(stripped)
    if fenced:
        stripped = fenced.group(1)
    try:
        data = json.loads(stripped)
    except json.JSONDecodeError as exc:
        if refusal:
            raise Rejected("refusal", f"{refusal!r} in a non-JSON reply") from None
        raise Rejected("invalid_json", f"{exc.msg} at column {exc.colno}: {text[:120]!r}") from None
    if not isinstance(data, dict):
        raise Rejected("invalid_json", f"reply is a JSON {type(data).__name__}, not an object")
    try:
        reply = ReformatReply.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise Rejected("schema", problems) from None
    for field in ("description", "question", "answer"):
        value = getattr(reply, field)
        if (phrase := find_refusal(value)) is not None:
            raise Rejected("refusal", f"{field}: {phrase!r}")
        if (phrase := find_leak(value)) is not None:
            raise Rejected("context_leak", f"{field}: {phrase!r}")
    return reply


def parse_conversation(text: str) -> list[tuple[str, str]]:
    """'User: ... Assistant: ...' text → [(question, answer)] (an unpaired tail is dropped)."""
    pieces = _TURN.split(text)
    turns = [(pieces[i].lower(), pieces[i + 1].strip()) for i in range(1, len(pieces) - 1, 2)]
    pairs = []
    for (role_a, question), (role_b, answer) in zip(turns, turns[1:]):
        if role_a == "user" and role_b == "assistant" and question and answer:
            pairs.append((question, answer))
    return pairs


def clean_answer(answer: str) -> str | None:
    """LLaVA-Med's cleaning of one answer: None drops the turn, else the cleaned text."""
    rules = _rules()
    if find_refusal(answer):
        return None
    cleaned = answer
    for pattern in rules.prefixes:
        match = pattern.match(cleaned)
        if match:
            cleaned = cleaned[match.end() :]
            break
    for pattern in rules.inline:
        cleaned = pattern.sub("", cleaned)
    cleaned = " ".join(cleaned.split())
    cleaned = cleaned[:1].upper() + cleaned[1:]
    low = cleaned.lower()
    if not cleaned or any(word in low for word in rules.forbidden):
        return None
    return cleaned


def clean_turns(pairs: list[tuple[str, str]]) -> tuple[list[tuple[str, str]], list[str]]:
    """Clean every pair; return (kept pairs, why each dropped pair was dropped)."""
    kept, dropped = [], []
    for question, answer in pairs:
        if find_leak(question) or any(w in question.lower() for w in _rules().forbidden):
            dropped.append(f"question leaks: {question[:60]!r}")
            continue
        cleaned = clean_answer(answer)
        if cleaned is None:
            dropped.append(f"answer refused or leaked: {answer[:60]!r}")
            continue
        kept.append((question, cleaned))
    return kept, dropped
