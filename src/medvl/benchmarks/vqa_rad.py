"""VQA-RAD (Lau et al. 2018), the original public release.

`VQA_RAD Dataset Public.json`: a list of rows with `qid`, `image_name`, `question`, `answer` (a
string, or a number for a few counting questions), `answer_type` ("CLOSED"/"OPEN", sometimes with
a trailing space), `question_type`, `image_organ`, `phrase_type`. The official test split is the
rows whose `phrase_type` is `test_freeform` or `test_para` (451 questions over 203 images); all
other rows are train. Images sit in `images/` (or the release's `VQA_RAD Image Folder/`).
"""

from __future__ import annotations

from itertools import chain
from pathlib import Path
from typing import Any

from medvl.benchmarks.base import (
    BenchmarkData,
    BenchmarkError,
    Located,
    find_path,
    finish,
    open_closed_item,
    open_closed_problem,
    read_json_rows,
    split_name,
)
from medvl.benchmarks.checks import check_some_question, rejected_reasons
from medvl.benchmarks.registry import register_benchmark

FILE = "VQA_RAD Dataset Public.json"
TEST_PHRASES = {"test_freeform", "test_para"}
IMAGE_DIRS = ("images", "VQA_RAD Image Folder")


def locate(root: Path, split: str) -> Located:
    return Located(split_name(split, {"test": (), "train": (), "all": ()}),
                   [root if root.is_file() else find_path(root, [FILE], "VQA-RAD question file")])


def check(files: list[Path], split: str) -> None:
    (path,) = files
    rows, rejects = _split_rows(path, split)
    check_some_question(path, chain(rejected_reasons(rejects),
                                    (open_closed_problem(row, "image_name") for _, row in rows)))


@register_benchmark("vqa_rad", locate=locate, check=check)
def load(root: Path, split: str = "test") -> BenchmarkData:
    split, (path,) = locate(root, split)
    folder = path.parent
    image_dir = next((folder / d for d in IMAGE_DIRS if (folder / d).is_dir()), folder)
    rows, rejects = _split_rows(path, split)
    items = []
    for index, row in rows:
        is_test = row.get("phrase_type") in TEST_PHRASES
        item = open_closed_item(row, index, rejects, benchmark="vqa_rad", split="test" if is_test else "train",
                                image_dir=image_dir, image_key="image_name", meta={
                                    "question_type": str(row.get("question_type", "")).strip().upper(),
                                    "organ": str(row.get("image_organ", "")).strip().upper(),
                                    "phrase_type": row.get("phrase_type"),
                                })
        if item is not None:
            items.append(item)
    return finish("vqa_rad", split, folder, items, rejects=rejects, sources=[path])


def _split_rows(path: Path, split: str) -> tuple[list[tuple[int, dict[str, Any]]], list[dict[str, str]]]:
    """The file's (index, row) pairs of `split` (test: phrase_type test_freeform/test_para; train: the others;
    all), and the rejects of entries that are not rows."""
    rows, rejects = read_json_rows(path)
    if split == "all":
        return rows, rejects
    if rows and not any("phrase_type" in row for _, row in rows):
        raise BenchmarkError(f"{path}: no row has a phrase_type, so the official test/train split cannot be "
                             "told apart; use the original public release, or split=all, or the llava_jsonl loader")
    return [(i, row) for i, row in rows if (row.get("phrase_type") in TEST_PHRASES) == (split == "test")], rejects
