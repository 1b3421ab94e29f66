"""PMC-VQA (Zhang et al. 2023), multiple choice, from its CSV files.

Columns: `Figure_path` (an image file name under `images/` or `figures/`), `Question`, `Answer`
(the correct option's text), `Choice A` ... `Choice D` (each written "A:text", often with
spaces around it) and `Answer_label` (the correct letter). Some files carry only the letter in
`Answer`; both are read. `split="test"` reads `test_clean.csv` (the cleaned 2k test set most papers
report) when present, else `test.csv`; `csv=` names any other file (e.g. `test_2.csv`).
"""

from __future__ import annotations

import csv
import re
from pathlib import Path

from medvl.eval.benchmarks.base import LETTERS, BenchmarkData, VQAItem, find_path, finish

CHOICE_COLUMNS = ("Choice A", "Choice B", "Choice C", "Choice D")
IMAGE_DIRS = ("images", "figures", "images_2")
_LABEL_PREFIX = re.compile(r"^\s*([A-D])\s*[:：.]\s*")


def load(root: Path, split: str = "test", csv_file: str | None = None) -> BenchmarkData:
    names = [csv_file] if csv_file else (["test_clean.csv", "test.csv"] if split == "test" else [f"{split}.csv"])
    path = root if root.is_file() else find_path(root, names, f"PMC-VQA {split} CSV")
    folder = path.parent
    image_dir = next((folder / d for d in IMAGE_DIRS if (folder / d).is_dir()), folder)
    items, rejects = [], []
    with path.open(newline="", encoding="utf-8-sig") as handle:
        for index, row in enumerate(csv.DictReader(handle)):
            item_id = f"{path.stem}-{index}"
            options = [_strip_label(row.get(c) or "") for c in CHOICE_COLUMNS if (row.get(c) or "").strip()]
            letter = _answer_letter(row, options)
            figure = (row.get("Figure_path") or "").strip()
            if not figure or not options or letter is None:
                rejects.append({"id": item_id, "reason": "malformed_row",
                                "detail": f"figure={figure!r} options={len(options)} answer={row.get('Answer')!r}"})
                continue
            items.append(VQAItem(
                id=item_id, benchmark="pmc_vqa", split=split, question=(row.get("Question") or "").strip(),
                answer=options[LETTERS.index(letter)], answer_type="choice",
                images=[str((image_dir / figure).resolve())], options=options, meta={"figure": figure},
            ))
    return finish("pmc_vqa", split, folder, items, notes=[f"questions from {path.name}"], rejects=rejects)


def _strip_label(choice: str) -> str:
    return _LABEL_PREFIX.sub("", choice.strip(), count=1).strip()


def _answer_letter(row: dict[str, str | None], options: list[str]) -> str | None:
    """The correct letter from `Answer_label`, a letter in `Answer`, or `Answer` text matching an option."""
    for value in (row.get("Answer_label"), row.get("Answer")):
        value = (value or "").strip()
        if len(value) == 1 and value.upper() in LETTERS[: len(options)]:
            return value.upper()
    text = _strip_label(row.get("Answer") or "").lower()
    matches = [LETTERS[i] for i, option in enumerate(options) if option.lower() == text]
    return matches[0] if len(matches) == 1 else None
