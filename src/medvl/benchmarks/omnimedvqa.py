"""OmniMedVQA (Hu et al., CVPR 2024), multiple choice.

`QA_information/Open-access/<dataset>.json` (and `Restricted-access/`): lists of rows with
`question_id`, `question_type`, `question`, `gt_answer` (the correct option's text), `image_path`
(relative to the release root, e.g. `Images/<dataset>/...`), `option_A` ... `option_D` (C and D
absent for two-option questions), `modality_type` and `dataset`. The whole release is one test
set; `access` picks the open-access part (the default: the restricted part needs a separate
licence), the restricted part, or both.
"""

from __future__ import annotations

from itertools import chain
from pathlib import Path
from typing import Any

from medvl.benchmarks.base import (
    BenchmarkData,
    BenchmarkError,
    Located,
    VQAItem,
    finish,
    image_path,
    one_of,
    read_json_rows,
    split_name,
)
from medvl.benchmarks.checks import check_some_question, rejected_reasons
from medvl.benchmarks.registry import register_benchmark

OPTION_KEYS = ("option_A", "option_B", "option_C", "option_D", "option_E")
ACCESS_DIRS = {"open": ("Open-access",), "restricted": ("Restricted-access",),
               "all": ("Open-access", "Restricted-access")}


def locate(root: Path, split: str, access: str) -> Located:
    split = split_name(split, {"test": ("all",)})
    access = one_of("omnimedvqa", "access", access, list(ACCESS_DIRS))
    folders = [root / "QA_information" / name for name in ACCESS_DIRS[access]]
    files = sorted(f for folder in folders if folder.is_dir() for f in folder.glob("*.json"))
    if not files:
        raise BenchmarkError(f"no OmniMedVQA question files under {', '.join(map(str, folders))}")
    return Located(split, files)


def check(files: list[Path], root: Path, access: str) -> None:
    read = [read_json_rows(file) for file in files]  # each file: one that is not a JSON list fails the load
    check_some_question(files[0] if len(files) == 1 else f"{root} (access={access}: {len(files)} question files)",
                        chain(rejected_reasons(r for _, bad in read for r in bad),
                              (_problem(row) for rows, _ in read for _, row in rows)))


@register_benchmark("omnimedvqa", locate=locate, check=check)
def load(root: Path, split: str = "test", access: str = "open") -> BenchmarkData:
    _, files = locate(root, split, access)
    items, rejects = [], []
    for file in files:
        rows, bad = read_json_rows(file)
        rejects += bad
        for index, row in rows:
            item_id = str(row.get("question_id") or f"{file.stem}-{index}")
            options, answer = _options(row), _answer(row)
            problem = _problem(row)
            if problem:
                rejects.append({"id": item_id, "reason": problem, "detail": f"{file.name}: gt_answer={answer!r}"})
                continue
            items.append(VQAItem(
                id=item_id, benchmark="omnimedvqa", split="test", question=str(row.get("question", "")).strip(),
                answer=answer, answer_type="choice", images=[image_path(root / row["image_path"])],
                options=options,
                meta={"question_type": row.get("question_type", ""), "modality": row.get("modality_type", ""),
                      "dataset": row.get("dataset", file.stem), "access": file.parent.name},
            ))
    return finish("omnimedvqa", "test", root, items, rejects=rejects, sources=files)


def _options(row: dict[str, Any]) -> list[str]:
    return [str(row[k]).strip() for k in OPTION_KEYS if row.get(k) not in (None, "")]


def _answer(row: dict[str, Any]) -> str:
    return str(row.get("gt_answer", "")).strip()


def _problem(row: dict[str, Any]) -> str | None:
    """The reject reason of a row the loader cannot ask (no image path, an answer that is no option); None."""
    if not row.get("image_path"):
        return "malformed_row"
    return None if _answer(row) in _options(row) else "answer_not_an_option"
