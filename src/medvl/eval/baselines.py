"""Baselines that show whether a model uses the image.

- **majority**: always give the most frequent answer of the item's answer type — for closed and
  open items the most frequent normalised reference answer, for choice items the most frequent
  correct letter. Counted on the train split when the release has one, else on the evaluated
  split itself (an optimistic baseline; the run's notes say so).
- **question-only**: the same model and prompt with the image parts left out (`use_images: false`
  in the run config); nothing here, the runner handles it.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence

from medvl.eval.backends import Reply, Request
from medvl.eval.benchmarks.base import LETTERS, VQAItem
from medvl.eval.metrics import normalize_answer

__all__ = ["MajorityBackend", "majority_table"]


def majority_table(items: Iterable[VQAItem]) -> dict[str, str]:
    """{answer_type: answer}: the most common normalised answer (choice: the most common letter)."""
    counts: dict[str, Counter[str]] = {}
    for item in items:
        key = (item.answer_letter or "") if item.answer_type == "choice" else normalize_answer(item.answer)
        if key:
            counts.setdefault(item.answer_type, Counter())[key] += 1
    # ties broken alphabetically so the table is deterministic
    return {kind: min(c.items(), key=lambda kv: (-kv[1], kv[0]))[0] for kind, c in counts.items()}


class MajorityBackend:
    """Answers every request from the majority table, ignoring the image and the question."""

    def __init__(self, table: dict[str, str]):
        self.table = table

    def generate(self, requests: Sequence[Request]) -> list[Reply]:
        replies = []
        for request in requests:
            item = request.item
            answer = self.table.get(item.answer_type, "")
            if item.answer_type == "choice" and answer not in LETTERS[: len(item.options)]:
                answer = "A"
            replies.append(Reply(answer, 0, 0, "stop"))
        return replies
