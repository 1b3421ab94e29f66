"""Baselines that show whether a model uses the image.

- **majority**: always give the most frequent answer of the item's answer type — for closed and
  open items the most frequent normalised reference answer, for choice items the most frequent
  correct letter. Counted on the train split when the release has one, else on the evaluated
  split itself (an optimistic baseline; the run's notes say so).
- **question-only**: the same model and prompt with the image parts left out (`use_images: false`
  in the run config); nothing here, the runner handles it.
- **shuffled images** (`use_images: shuffled`): the same model and prompt, each item shown another
  item's image(s) — in distribution for a model always trained with an image, unlike removing it.
  `image_derangement` draws a seeded derangement of the split's distinct image sets, one cycle
  through them per image count, so every item gets a *different image file* (not merely another
  question about the same image, as VQA-RAD's 451 test questions share 203 images) and the same
  number of images. Items whose image count has no other image set cannot be shuffled and are
  returned as such (the runner rejects them with reason `no_other_image`).
"""

from __future__ import annotations

import random
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from typing import Any

from medvl.benchmarks.base import LETTERS, VQAItem
from medvl.engine import Engine, Reply, Request
from medvl.eval.metrics import normalize_answer

__all__ = ["MajorityBackend", "image_derangement", "majority_table"]


def majority_table(items: Iterable[VQAItem]) -> dict[str, str]:
    """{answer_type: answer}: the most common normalised answer (choice: the most common letter)."""
    counts: dict[str, Counter[str]] = {}
    for item in items:
        key = (item.answer_letter or "") if item.answer_type == "choice" else normalize_answer(item.answer)
        if key:
            counts.setdefault(item.answer_type, Counter())[key] += 1
    # ties broken alphabetically so the table is deterministic
    return {kind: min(c.items(), key=lambda kv: (-kv[1], kv[0]))[0] for kind, c in counts.items()}


class MajorityBackend(Engine):
    """Answers every request from the majority table, ignoring the image and the question (reads the
    request's `item` for its answer type)."""

    def __init__(self, table: dict[str, str]):
        self.table = table

    def run(self, requests: Sequence[Request], settings: Any = None) -> list[Reply]:
        replies = []
        for request in requests:
            item = request.item
            answer = self.table.get(item.answer_type, "")
            if item.answer_type == "choice" and answer not in LETTERS[: len(item.options)]:
                answer = "A"
            replies.append(Reply(answer, 0, 0, "stop"))
        return replies


def image_derangement(items: Sequence[VQAItem], seed: int = 0) -> tuple[dict[str, VQAItem], list[str]]:
    """{item id: the item whose images it is shown} and the ids that cannot be shuffled.

    Deterministic for a given item list and seed: the distinct image sets of each image count are
    sorted, shuffled with `random.Random(f"{seed}:{count}")` and each is mapped to the next one in
    that order (a single cycle, so no set maps to itself); an item is shown the images of the first
    item, in file order, holding its set's successor.
    """
    holders: dict[int, dict[tuple[str, ...], VQAItem]] = defaultdict(dict)
    for item in items:
        holders[len(item.images)].setdefault(tuple(item.images), item)
    successor: dict[tuple[str, ...], VQAItem] = {}
    for count, by_images in holders.items():
        order = sorted(by_images)
        if count == 0 or len(order) < 2:
            continue
        random.Random(f"{seed}:{count}").shuffle(order)
        successor.update({images: by_images[order[(i + 1) % len(order)]] for i, images in enumerate(order)})
    donors = {item.id: successor[tuple(item.images)] for item in items if tuple(item.images) in successor}
    return donors, [item.id for item in items if item.id not in donors]
