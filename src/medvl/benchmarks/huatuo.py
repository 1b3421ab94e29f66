"""HuatuoGPT-Vision's combined evaluation file (`medical_multimodel_evaluation_data.json`).

Released as FreedomIntelligence/Medical_Multimodal_Evaluation_Data with `images.zip`. A JSON list;
each row has `question`, `options` (a list, or a Python list written as a string), `answer` (the
correct option's text; "?" where unknown, which the reference scorer counts wrong), `image` (a list
of paths relative to the JSON file's folder, e.g. `images/...`), `dataset` (VQA-RAD, SLAKE,
PathVQA, PMC-VQA, OmniMedVQA, MMMU-...), and optionally `question_type` and `subset`. The reference
`eval.py` numbers rows from 1 in file order (`test_id`); medvl uses that number as the item id.
Rows with options are choice items; rows without are open (the reference scorer skips them).
"""

from __future__ import annotations

import ast
from collections.abc import Callable, Sequence
from itertools import chain
from pathlib import Path
from typing import Any

from medvl.benchmarks.base import (
    BenchmarkData,
    Located,
    VQAItem,
    find_path,
    finish,
    image_path,
    missing_field,
    read_json_rows,
    some_of,
    split_name,
)
from medvl.benchmarks.checks import check_some_question, rejected_reasons
from medvl.benchmarks.registry import register_benchmark

FILE = "medical_multimodel_evaluation_data.json"


def locate(root: Path, split: str) -> Located:
    return Located(split_name(split, {"test": ()}),
                   [root if root.is_file() else find_path(root, [FILE], "HuatuoGPT-Vision evaluation file")])


def check(files: list[Path], datasets: str | Sequence[str] | None) -> None:
    (path,) = files
    rows, rejects = read_json_rows(path)
    asked = _asked(rows, datasets)
    check_some_question(path, chain(rejected_reasons(rejects), (_problem(row) for _, row in rows if asked(row))))


@register_benchmark("huatuo_eval", locate=locate, check=check)
def load(root: Path, split: str = "test", datasets: str | Sequence[str] | None = None) -> BenchmarkData:
    _, (path,) = locate(root, split)
    folder = path.parent
    rows, rejects = read_json_rows(path)
    asked = _asked(rows, datasets)
    items, unknown_answers = [], 0
    for index, row in rows:
        item_id = str(index + 1)  # the reference's test_id
        dataset = str(row.get("dataset", ""))
        if not asked(row):
            continue
        problem = _problem(row)
        if problem:
            rejects.append({"id": item_id, "reason": problem,
                            "detail": f"dataset={dataset!r} options={row.get('options')!r}"[:200]})
            continue
        options = _options(row.get("options")) or []
        images = row.get("image") or []
        images = [images] if isinstance(images, str) else images
        answer = str(row["answer"]).strip()
        options = [str(o) for o in options]
        unknown_answers += bool(options) and answer not in options
        items.append(VQAItem(
            id=item_id, benchmark="huatuo_eval", split="test", question=str(row["question"]),
            answer=answer, answer_type="choice" if options else "open",
            images=[image_path(folder / p) for p in images], options=options,
            meta={"dataset": dataset, "subset": row.get("subset", ""), "question_type": row.get("question_type", "")},
        ))
    notes = [(f"{unknown_answers} choice rows whose answer is not one of the options (scored wrong, as the "
              "reference does)")] if unknown_answers else []
    return finish("huatuo_eval", "test", folder, items, notes=notes, rejects=rejects, sources=[path])


def _asked(rows: list[tuple[int, dict[str, Any]]], datasets: str | Sequence[str] | None) -> Callable[[dict], bool]:
    """Whether a row is of one of `datasets` (each one a `dataset` some row has; None: every row is)."""
    if datasets is None:
        return lambda row: True
    wanted = set(some_of("huatuo_eval", "datasets", datasets, sorted({str(row.get("dataset", "")) for _, row in rows})))
    return lambda row: str(row.get("dataset", "")) in wanted


def _problem(row: dict[str, Any]) -> str | None:
    """The reject reason of a row the loader cannot ask (no question or answer, options of no list); None."""
    return missing_field(row, ("question", "answer")) or (None if _options(row.get("options")) is not None
                                                          else "bad_options")


def _options(value: object) -> list[object] | None:
    """The row's options: a list, or a Python list written as a string; None when it is neither."""
    if isinstance(value, str):
        try:
            value = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            return None
    value = value or []
    return value if isinstance(value, list) else None
