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
from collections.abc import Sequence
from pathlib import Path

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
from medvl.benchmarks.registry import register_benchmark

FILE = "medical_multimodel_evaluation_data.json"


def locate(root: Path, split: str) -> Located:
    return Located(split_name(split, {"test": ()}),
                   [root if root.is_file() else find_path(root, [FILE], "HuatuoGPT-Vision evaluation file")])


@register_benchmark("huatuo_eval", locate=locate)
def load(root: Path, split: str = "test", datasets: str | Sequence[str] | None = None) -> BenchmarkData:
    _, (path,) = locate(root, split)
    folder = path.parent
    rows, rejects = read_json_rows(path)
    present = sorted({str(row.get("dataset", "")) for _, row in rows})
    wanted = set(some_of("huatuo_eval", "datasets", datasets, present)) if datasets is not None else None
    items, unknown_answers = [], 0
    for index, row in rows:
        item_id = str(index + 1)  # the reference's test_id
        dataset = str(row.get("dataset", ""))
        if wanted is not None and dataset not in wanted:
            continue
        problem = missing_field(row, ("question", "answer"))
        if problem:
            rejects.append({"id": item_id, "reason": problem, "detail": f"dataset={dataset!r}"})
            continue
        options = _options(row.get("options"))
        if options is None:
            rejects.append({"id": item_id, "reason": "bad_options", "detail": repr(row.get("options"))[:200]})
            continue
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


def _options(value: object) -> list[object] | None:
    """The row's options: a list, or a Python list written as a string; None when it is neither."""
    if isinstance(value, str):
        try:
            value = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            return None
    value = value or []
    return value if isinstance(value, list) else None
