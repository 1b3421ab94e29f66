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

Nothing is dropped silently: rows the loader could not read (its reasons: `malformed_row`,
`no_question`, `bad_answer`, ...) and items whose images are missing (`missing_image`) go to the
rejects file (`OUT.rejects.jsonl`, rewritten each run) with their reason, and are counted per reason.
A conversion that writes no conversation is `NothingConverted` (after writing its rejects), and an
output that is one of the inputs (the release's question file, an image) is refused before anything
is written.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from medvl.benchmarks import VQAItem, choice_prompt, load_benchmark, yes_no_answer
from medvl.errors import UserError
from medvl.io.files import check_file_target, refuse_overwriting_inputs
from medvl.io.jsonl import reject_line, write_jsonl

__all__ = ["closed_prompt", "item_to_record", "convert_items", "convert_benchmark", "ConvertResult",
           "NothingConverted"]

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


class NothingConverted(UserError):
    """Every item was rejected: no conversation written (the rejects file says why, item by item)."""


@dataclass
class ConvertResult:
    written: int
    reasons: dict[str, int]  # rejects per reason
    out: Path
    rejects: Path

    @property
    def rejected(self) -> int:
        return sum(self.reasons.values())

    def summary(self) -> str:
        """One line: what was written where, and the rejects per reason."""
        return f"{self.written} conversations written to {self.out}; {_rejected(self.reasons)} in {self.rejects}"


def _rejected(reasons: dict[str, int]) -> str:
    counts = ", ".join(f"{reason} {n}" for reason, n in sorted(reasons.items(), key=lambda kv: (-kv[1], kv[0])))
    return f"{sum(reasons.values())} rejected" + (f" ({counts})" if counts else "")


def rejects_path(out: str | Path) -> Path:
    """Where the rejects of a conversion into `out` go: `OUT.rejects.jsonl` beside it."""
    return Path(out).with_suffix(".rejects.jsonl")


def convert_items(items: Iterable[VQAItem], out: str | Path, missing: Iterable[str] = (), with_options: bool = True,
                  unreadable: Iterable[dict[str, str]] = ()) -> ConvertResult:
    """Write the items as a LLaVA JSONL; items listed in `missing` (no image file) and the loader's
    `unreadable` rows (`BenchmarkData.rejects`) go to the rejects file first, each with its reason."""
    out, missing_ids = check_file_target(out), set(missing)  # an --out that cannot be a file: before any write
    rejects = [reject_line(row["id"], "load", row["reason"], row.get("detail", "")) for row in unreadable]
    records = []
    for item in items:
        if item.id in missing_ids:
            rejects.append(reject_line(item.id, "convert", "missing_image", ", ".join(item.images)))
        else:
            records.append(item_to_record(item, with_options))
    result = ConvertResult(len(records), dict(Counter(r["reason"] for r in rejects)), out, rejects_path(out))
    write_jsonl(result.rejects, rejects)
    if not records:
        hint = (" (missing_image: the image files are not where the release's question file names them)"
                if "missing_image" in result.reasons else "")
        raise NothingConverted(f"nothing converted, {out} not written: {_rejected(result.reasons)}{hint}; "
                               f"each reject with its reason in {result.rejects}")
    write_jsonl(out, records)
    return result


def convert_benchmark(name: str, root: str | Path, out: str | Path, split: str = "train",
                      with_options: bool = True, concepts: bool = False, seed: int = 0,
                      **options: Any) -> ConvertResult:
    """Load a benchmark split with the evaluation's loaders and write it as training conversations;
    `concepts` adds the image-grounded questions `medvl.train.concepts` derives from the same split."""
    data = load_benchmark(name, root, split=split, **options)
    items = list(data.items)
    refuse_overwriting_inputs([out, rejects_path(out)], [*data.sources, *(p for i in items for p in i.images)],
                              "choose another --out")
    if concepts:
        from medvl.train.concepts import concept_items

        missing = set(data.missing_images)
        items += concept_items([item for item in items if item.id not in missing], name, seed=seed)[0]
    return convert_items(items, out, missing=data.missing_images, with_options=with_options,
                         unreadable=data.rejects)
