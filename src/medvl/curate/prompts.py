"""The prompt files under `curate/prompts/` and their rendering (jinja2, strict undefined).

- `concise_instructions.txt`, `detailed_instructions.txt`: LLaVA's 11 / 16 describe-the-image pools.
- `alignment_questions.txt`: description questions for PubMedVision-style Alignment VQA.
- `roles.txt`: `role | description` scenarios for Instruction-Tuning VQA.
- `reformat_system.j2`, `reformat_user.j2`: the unblinded reformatting prompt (image(s) + text).
- `self_instruct_system.txt`, `self_instruct_examples.json`: LLaVA-Med-style blinded self-instruct.
- `postprocess.yaml`: refusal and context-leak phrase lists and patterns.

A seeded choice (`pick`) hashes (seed, record id, purpose), so a record gets the same question,
role and instruction on every run and in every task.
"""

from __future__ import annotations

import hashlib
import json
from functools import lru_cache
from pathlib import Path
from typing import Any, NamedTuple, Sequence, TypeVar

import jinja2
import yaml

__all__ = [
    "prompt_dir",
    "read_text",
    "read_pool",
    "read_roles",
    "render",
    "pick",
    "self_instruct_examples",
    "postprocess_rules",
    "Role",
]

T = TypeVar("T")


def prompt_dir() -> Path:
    return Path(__file__).parent / "prompts"


@lru_cache(maxsize=None)
def read_text(name: str) -> str:
    return (prompt_dir() / name).read_text(encoding="utf-8").strip()


@lru_cache(maxsize=None)
def read_pool(name: str) -> tuple[str, ...]:
    """Non-empty, non-comment lines of a prompt text file."""
    lines = (prompt_dir() / name).read_text(encoding="utf-8").splitlines()
    return tuple(line.strip() for line in lines if line.strip() and not line.startswith("#"))


class Role(NamedTuple):
    """An Instruction-Tuning scenario: who asks, and what their question is like."""

    name: str
    description: str


def read_roles(names: Sequence[str] | None = None) -> list[Role]:
    """The scenarios of `roles.txt`, optionally restricted to `names` (unknown names are an error)."""
    roles = [Role(*(part.strip() for part in line.split("|", 1))) for line in read_pool("roles.txt")]
    if names is None:
        return roles
    known = {r.name: r for r in roles}
    missing = [n for n in names if n not in known]
    if missing:
        raise ValueError(f"unknown roles {missing}; known: {sorted(known)}")
    return [known[n] for n in names]


@lru_cache(maxsize=None)
def _environment() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(prompt_dir())),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=False,
        autoescape=False,
    )


def render(template: str, **values: Any) -> str:
    return _environment().get_template(template).render(**values).strip()


def pick(options: Sequence[T], seed: int, record_id: str, purpose: str) -> T:
    digest = hashlib.blake2b(f"{seed}:{purpose}:{record_id}".encode(), digest_size=8).digest()
    return options[int.from_bytes(digest, "big") % len(options)]


@lru_cache(maxsize=None)
def self_instruct_examples() -> tuple[dict[str, Any], ...]:
    return tuple(json.loads((prompt_dir() / "self_instruct_examples.json").read_text(encoding="utf-8")))


@lru_cache(maxsize=None)
def postprocess_rules() -> dict[str, list[str]]:
    return yaml.safe_load((prompt_dir() / "postprocess.yaml").read_text(encoding="utf-8"))
