"""MMMU Health & Medicine (Yue et al. 2024): the five medical subjects, from the parquet release.

Layout (MMMU/MMMU on the Hugging Face hub): `<Subject>/<split>-00000-of-00001.parquet`, splits
dev/validation/test. Columns: `id`, `question` (with `<image 1>`-style tags), `options` (a Python
list written as a string), `answer` (a letter; hidden as "?" in the test split), `image_1` ...
`image_7` ({bytes, path} or null), `question_type` ("multiple-choice"/"open"), `subfield`,
`img_type`, `topic_difficulty`. Embedded images are written once (by content hash) to a cache
folder (`image_dir` option); the `<image N>` tags stay in the question text, as MMMU and
HuatuoGPT-Vision present them. The images are those whose tags occur in the question or the
options, in tag order, as lmms-eval's `mmmu_doc_to_visual` picks them (every non-null image column
when no tag occurs); a tagged image without bytes rejects the row. A file without the `id`, `question`,
`options` or `answer` column is an error naming it.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Sequence
from pathlib import Path

from medvl.benchmarks.base import (
    LETTERS,
    BenchmarkData,
    BenchmarkError,
    Located,
    VQAItem,
    extract_image_bytes,
    finish,
    image_cache_dir,
    read_parquet_rows,
    some_of,
    split_name,
)
from medvl.benchmarks.checks import check_some_question
from medvl.benchmarks.registry import register_benchmark

MEDICAL_SUBJECTS = (
    "Basic_Medical_Science",
    "Clinical_Medicine",
    "Diagnostics_and_Laboratory_Medicine",
    "Pharmacy",
    "Public_Health",
)
SPLITS = {"dev": (), "validation": ("val", "validate"), "test": ()}
IMAGE_COLUMNS = tuple(f"image_{i}" for i in range(1, 8))
QUESTION_COLUMNS = ("id", "question", "options", "answer")  # every file has them (and question_type)
_IMAGE_TAG = re.compile(r"<image (\d+)>")


def locate(root: Path, split: str, subjects: str | Sequence[str]) -> Located:
    """The split's parquet files, subject by subject (each under its subject's folder)."""
    split = split_name(split, SPLITS)
    files = []
    for subject in some_of("mmmu_med", "subjects", subjects, MEDICAL_SUBJECTS):
        found = sorted((root / subject).glob(f"{split}-*.parquet"))
        if not found:
            raise BenchmarkError(f"MMMU: no {split} parquet for subject {subject!r} under {root / subject}")
        files += found
    return Located(split, files)


def check(files: list[Path], root: Path, split: str) -> None:
    """The question columns only, not the image columns (which the load writes out)."""
    rows = [row for file in files
            for row in read_parquet_rows(file, (*QUESTION_COLUMNS, "question_type"), required=QUESTION_COLUMNS)]
    asked = [row for row in rows if not _hidden(row)]
    if rows and not asked:
        raise _answers_hidden(split)
    where = files[0] if len(files) == 1 else f"{root} ({split}: {len(files)} parquet files)"
    check_some_question(where, (_problem(row) for row in asked))


@register_benchmark("mmmu_med", locate=locate, check=check)
def load(root: Path, split: str = "validation", subjects: str | Sequence[str] = MEDICAL_SUBJECTS,
         image_dir: str | None = None) -> BenchmarkData:
    split, sources = locate(root, split, subjects)
    items, rejects, hidden = [], [], 0
    cache = image_cache_dir("mmmu_med", root, image_dir)
    for file in sources:
        subject = file.parent.name
        for row in read_parquet_rows(file, required=QUESTION_COLUMNS):
            item_id = str(row.get("id"))
            if _hidden(row):
                hidden += 1
                continue
            answer, problem = _answer(row), _problem(row)
            if problem:
                rejects.append({"id": item_id, "reason": problem,
                                "detail": f"answer={answer!r} options={row.get('options')!r}"[:200]})
                continue
            options = _options(row.get("options")) or []
            images = [extract_image_bytes((row.get(c) or {}).get("bytes"), (row.get(c) or {}).get("path"), cache)
                      for c in _image_columns(row, options)]
            if None in images:
                rejects.append({"id": item_id, "reason": "missing_image_bytes", "detail": str(file)})
                continue
            is_choice = _is_choice(row, options)
            items.append(VQAItem(
                id=item_id, benchmark="mmmu_med", split=split, question=str(row.get("question") or "").strip(),
                answer=options[LETTERS.index(answer)] if is_choice else answer,
                answer_type="choice" if is_choice else "open", images=[p for p in images if p is not None],
                options=options if is_choice else [],
                meta={"subject": subject, "subfield": row.get("subfield", ""), "img_type": row.get("img_type", ""),
                      "difficulty": row.get("topic_difficulty", "")},
            ))
    if hidden and not items:
        raise _answers_hidden(split)
    notes = [f"{hidden} questions with hidden answers left out"] if hidden else []
    return finish("mmmu_med", split, root, items, notes=notes + [f"embedded images written to {cache}"],
                  rejects=rejects, sources=sources)


def _answers_hidden(split: str) -> BenchmarkError:
    return BenchmarkError(f"MMMU {split}: answers are hidden ('?'); score on split=validation or dev")


def _answer(row: dict) -> str:
    return str(row.get("answer") or "").strip()


def _hidden(row: dict) -> bool:
    """A row whose answer the release hides (the test split's "?"): left out, not a reject."""
    return _answer(row) in ("", "?")


def _is_choice(row: dict, options: list[str]) -> bool:
    return row.get("question_type") != "open" and bool(options)


def _problem(row: dict) -> str | None:
    """The reject reason of a row with an answer that the loader cannot ask (options that are no list, a
    choice answer that is no option's letter), its images aside; None for one it can."""
    options = _options(row.get("options"))
    if options is None:
        return "bad_options"
    answer = _answer(row)
    wrong = _is_choice(row, options) and (len(answer) != 1 or answer not in LETTERS[: len(options)])
    return "answer_not_an_option" if wrong else None


def _options(value: object) -> list[str] | None:
    """MMMU's options: a Python list written as a string; None when it is not one."""
    try:
        options = ast.literal_eval(value) if isinstance(value, str) and value.strip() else []
    except (ValueError, SyntaxError):
        return None
    return [str(o).strip() for o in options] if isinstance(options, list) else None


def _image_columns(row: dict, options: list[str]) -> list[str]:
    """The image columns a question shows: its `<image N>` tags (question and options) in order, else every
    non-null image column."""
    text = " ".join([str(row.get("question") or ""), *options])
    tagged = [c for c in IMAGE_COLUMNS if c.removeprefix("image_") in set(_IMAGE_TAG.findall(text))]
    return tagged or [c for c in IMAGE_COLUMNS if row.get(c)]
