"""PMC-VQA (Zhang et al. 2023), multiple choice, from its CSV files.

Version 1 (`train.csv`, `test.csv`, `test_clean.csv`, images in `images/`): `Figure_path`,
`Question`, `Answer` (spelled `Anwser` in some copies: the correct option's text), `Choice A` ...
`Choice D` (each written "A:text", often with spaces around it) and `Answer_label` (the correct
letter). Version 2 (`train_2.csv`, `test_2.csv`, images in `figures/`), as MedEvalKit reads it:
`index`, `Figure_path`, `Caption`, `Question`, `Choice A` ... `Choice D`, `Answer` (the letter),
`split`. `split="test"` reads `test_clean.csv` (the cleaned 2k test set most papers report) when
present, else `test.csv`; `csv_file=` names any other file (e.g. `test_2.csv`). A file that is
not UTF-8 or lacks the question columns is an error naming it.
"""

from __future__ import annotations

import csv
import re
from pathlib import Path

from medvl.benchmarks.base import (
    LETTERS,
    BenchmarkData,
    BenchmarkError,
    Located,
    VQAItem,
    find_path,
    finish,
    image_path,
)
from medvl.benchmarks.checks import check_some_question
from medvl.benchmarks.registry import register_benchmark

CHOICE_COLUMNS = ("Choice A", "Choice B", "Choice C", "Choice D")
REQUIRED_COLUMNS = ("Figure_path", "Question", *CHOICE_COLUMNS)
ANSWER_COLUMNS = ("Answer_label", "Answer", "Anwser")
IMAGE_DIRS = ("images", "figures", "images_2")
_LABEL_PREFIX = re.compile(r"^\s*([A-D])\s*[:：.]\s*")


def locate(root: Path, split: str, csv_file: str | None) -> Located:
    names = [csv_file] if csv_file else (["test_clean.csv", "test.csv"] if split == "test" else [f"{split}.csv"])
    return Located(split, [root if root.is_file() else find_path(root, names, f"PMC-VQA {split} CSV")])


def check(files: list[Path]) -> None:
    (path,) = files
    check_some_question(path, (None if _letter(row) else "malformed_row" for row in _read_rows(path)))


@register_benchmark("pmc_vqa", locate=locate, check=check)
def load(root: Path, split: str = "test", csv_file: str | None = None) -> BenchmarkData:
    split, (path,) = locate(root, split, csv_file)
    folder = path.parent
    image_dir = next((folder / d for d in IMAGE_DIRS if (folder / d).is_dir()), folder)
    items, rejects = [], []
    for index, row in enumerate(_read_rows(path)):
        item_id = f"{path.stem}-{index}"
        options, letter, figure = _options(row), _letter(row), (row.get("Figure_path") or "").strip()
        if letter is None:
            rejects.append({"id": item_id, "reason": "malformed_row",
                            "detail": f"figure={figure!r} options={len(options)} answer={_answer_text(row)!r}"})
            continue
        items.append(VQAItem(
            id=item_id, benchmark="pmc_vqa", split=split, question=(row.get("Question") or "").strip(),
            answer=options[LETTERS.index(letter)], answer_type="choice",
            images=[image_path(image_dir / figure)], options=options, meta={"figure": figure},
        ))
    return finish("pmc_vqa", split, folder, items, notes=[f"questions from {path.name}"], rejects=rejects,
                  sources=[path])


def _read_rows(path: Path) -> list[dict[str, str | None]]:
    """The CSV's rows; an error naming the file when it is not UTF-8 CSV with the question columns."""
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            missing = [c for c in REQUIRED_COLUMNS if c not in (reader.fieldnames or [])]
            if missing or not any(c in (reader.fieldnames or []) for c in ANSWER_COLUMNS):
                raise BenchmarkError(f"{path}: missing column(s) {missing or ANSWER_COLUMNS}; a PMC-VQA CSV has "
                                     f"{', '.join(REQUIRED_COLUMNS)} and one of {', '.join(ANSWER_COLUMNS)}")
            return list(reader)
    except UnicodeDecodeError as exc:
        raise BenchmarkError(f"{path}: not UTF-8 text ({exc}); re-save the CSV as UTF-8") from exc
    except csv.Error as exc:
        raise BenchmarkError(f"{path}: not a readable CSV: {exc}") from exc


def _options(row: dict[str, str | None]) -> list[str]:
    return [_strip_label(row.get(c) or "") for c in CHOICE_COLUMNS if (row.get(c) or "").strip()]


def _letter(row: dict[str, str | None]) -> str | None:
    """The correct option's letter of a row the loader can ask (a figure, a question, options, an answer
    that is one of them); None for one it rejects."""
    options = _options(row)
    if not (row.get("Figure_path") or "").strip() or not (row.get("Question") or "").strip() or not options:
        return None
    return _answer_letter(row, options)


def _answer_text(row: dict[str, str | None]) -> str:
    return row.get("Answer") or row.get("Anwser") or ""


def _strip_label(choice: str) -> str:
    return _LABEL_PREFIX.sub("", choice.strip(), count=1).strip()


def _answer_letter(row: dict[str, str | None], options: list[str]) -> str | None:
    """The correct letter from `Answer_label`, a letter in `Answer`, or `Answer` text matching an option."""
    for value in (row.get("Answer_label"), _answer_text(row)):
        value = (value or "").strip()
        if len(value) == 1 and value.upper() in LETTERS[: len(options)]:
            return value.upper()
    text = _strip_label(_answer_text(row)).lower()
    matches = [LETTERS[i] for i, option in enumerate(options) if option.lower() == text]
    return matches[0] if len(matches) == 1 else None
