"""The chat messages around a benchmark item's prompt (the prompt itself: `medvl.benchmarks.prompts`).

Messages use medvl's content parts: one `{"type": "image"}` per image before the text, which the
local model's chat template and the OpenAI conversion both understand. The question-only baseline
asks with `n_images=0`. An optional system message comes first.
"""

from __future__ import annotations

from typing import Any

__all__ = ["build_messages"]


def build_messages(prompt: str, n_images: int, system: str | None = None) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = [{"role": "system", "content": [{"type": "text", "text": system}]}] if system else []
    parts = [{"type": "image"} for _ in range(n_images)] + [{"type": "text", "text": prompt}]
    return messages + [{"role": "user", "content": parts}]
