"""What the model is asked: the prompt text for an item and the chat messages around it.

- Choice items get HuatuoGPT-Vision's prompt (`choice.choice_prompt`), whatever the style.
- Open and closed items: style `plain` sends the question alone (LLaVA-Med's protocol);
  `short` (the default) appends LLaVA-1.5's VQA instruction "Answer the question using a single
  word or phrase.", without which small models rarely answer yes/no questions with yes or no.
- Messages use medvl's content parts: one `{"type": "image"}` per image before the text, which
  the local model's chat template and the OpenAI conversion both understand. The question-only
  baseline (`with_images=False`) leaves the image parts out.
"""

from __future__ import annotations

from typing import Any, Literal

from medvl.eval.benchmarks.base import VQAItem
from medvl.eval.choice import choice_prompt

__all__ = ["SHORT_ANSWER", "PromptStyle", "build_messages", "build_prompt"]

PromptStyle = Literal["short", "plain"]
SHORT_ANSWER = "Answer the question using a single word or phrase."


def build_prompt(item: VQAItem, style: PromptStyle = "short") -> str:
    if item.answer_type == "choice":
        return choice_prompt(item.question, item.options)
    return item.question if style == "plain" else f"{item.question}\n{SHORT_ANSWER}"


def build_messages(prompt: str, n_images: int, system: str | None = None) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = [{"role": "system", "content": [{"type": "text", "text": system}]}] if system else []
    parts = [{"type": "image"} for _ in range(n_images)] + [{"type": "text", "text": prompt}]
    return messages + [{"role": "user", "content": parts}]
