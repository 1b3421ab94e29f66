"""Benchmark training splits (VQA-RAD, SLAKE, PathVQA, ...) → LLaVA conversations for fine-tuning.

Items come from `medvl.benchmarks.load_benchmark`, so fine-tuning reads a release exactly as
evaluation does. Prompts, as LLaVA-Med's downstream fine-tuning data phrased them:

- closed questions get their candidate answers in the prompt:
  `"{question} Please choose from the following two options: [yes, no]."`
  (the item's own options when it has them, else yes/no when the answer is yes or no; a closed
  question with neither keeps the plain question);
- open questions stay as asked;
- multiple-choice items use HuatuoGPT-Vision's lettered prompt (`medvl.benchmarks.choice_prompt`,
  the one evaluation asks) and the answer is the letter.

Items whose images are missing are written to the rejects file (`missing_image`), never dropped
silently.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from medvl.benchmarks import VQAItem, choice_prompt, load_benchmark, yes_no_answer
from medvl.io.jsonl import RejectLog, write_jsonl

__all__ = ["closed_prompt", "item_to_record", "convert_items", "convert_benchmark", "ConvertResult"]

_COUNT_WORDS = {2: "two", 3: "three", 4: "four", 5: "five", 6: "six"}


def closed_prompt(question: str, options: list[str]) -> str:
    count = _COUNT_WORDS.get(len(options), str(len(options)))
    return f"{question.strip()} Please choose from the following {count} options: [{', '.join(options)}]."


def item_to_record(item: VQAItem, with_options: bool = True) -> dict[str, Any]:
    """One VQAItem as a conversation record (see the module docstring for the prompts)."""
    if item.answer_type == "choice" and item.options:
        return item.to_record(choice_prompt(item.question.strip(), item.options), item.answer_letter or item.answer)
    if item.answer_type == "closed" and with_options:
        options = list(item.options) or (["yes", "no"] if yes_no_answer(item.answer) else [])
        if options:
            answer = yes_no_answer(item.answer) if not item.options else None
            return item.to_record(closed_prompt(item.question, options), answer or item.answer.strip())
    return item.to_record(answer=item.answer.strip())


@dataclass
class ConvertResult:
    written: int
    rejected: int
    out: Path


def convert_items(items: Iterable[VQAItem], out: str | Path, missing: Iterable[str] = (), with_options: bool = True,
                  rejects_path: str | Path | None = None) -> ConvertResult:
    """Write the items as a LLaVA JSONL; items listed in `missing` (no image file) go to the rejects."""
    out = Path(out)
    missing_ids = set(missing)
    records, rejected = [], 0
    with RejectLog(rejects_path or out.with_suffix(".rejects.jsonl")) as rejects:
        for item in items:
            if item.id in missing_ids:
                rejects.reject(item.id, "convert", "missing_image", ", ".join(item.images))
                rejected += 1
                continue
            records.append(item_to_record(item, with_options))
    write_jsonl(out, records)
    return ConvertResult(written=len(records), rejected=rejected, out=out)


def convert_benchmark(name: str, root: str | Path, out: str | Path, split: str = "train",
                      with_options: bool = True, concepts: bool = False, seed: int = 0,
                      **options: Any) -> ConvertResult:
    """Load a benchmark split with the evaluation's loaders and write it as training conversations;
    `concepts` adds the image-grounded questions `medvl.train.concepts` derives from the same split."""
    data = load_benchmark(name, root, split=split, **options)
    items = list(data.items)
    if concepts:
        from medvl.train.concepts import concept_items

        missing = set(data.missing_images)
        items += concept_items([item for item in items if item.id not in missing], name, seed=seed)[0]
    return convert_items(items, out, missing=data.missing_images, with_options=with_options)
