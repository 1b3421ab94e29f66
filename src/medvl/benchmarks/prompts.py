"""What a benchmark item is asked: the one multiple-choice prompt and the default prompt.

- Choice items get HuatuoGPT-Vision's prompt exactly (`choice_prompt`): the question, the options
  lettered A–K one per line ("A. text"), then "Answer with the option's letter from the given
  choices directly." Evaluation asks it, and fine-tuning data (`medvl data convert`) trains on it.
- Open and closed items (`default_prompt`): style `plain` sends the question alone (LLaVA-Med's
  protocol); `short` (the default) appends LLaVA-1.5's VQA instruction "Answer the question using
  a single word or phrase.", without which small models rarely answer yes/no questions with yes or no.

A benchmark registers `default_prompt` unless it asks its items another way
(`medvl.benchmarks.registry.register_benchmark(..., prompt=...)`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from medvl.benchmarks.base import LETTERS, VQAItem

__all__ = ["CHOICE_INSTRUCTION", "SHORT_ANSWER", "PromptStyle", "choice_prompt", "default_prompt"]

PromptStyle = Literal["short", "plain"]
CHOICE_INSTRUCTION = "Answer with the option's letter from the given choices directly."
SHORT_ANSWER = "Answer the question using a single word or phrase."


def choice_prompt(question: str, options: Sequence[str]) -> str:
    """HuatuoGPT-Vision's multiple-choice prompt."""
    lines = [f"{LETTERS[i]}. {option}" for i, option in enumerate(options)]
    return "\n".join([question, *lines, CHOICE_INSTRUCTION])


def default_prompt(item: VQAItem, style: PromptStyle = "short") -> str:
    """The text an item is asked with (see the module notes)."""
    if item.answer_type == "choice":
        return choice_prompt(item.question, item.options)
    return item.question if style == "plain" else f"{item.question}\n{SHORT_ANSWER}"
