"""OmniMedVQA (Hu et al., CVPR 2024), multiple choice.

`QA_information/Open-access/<dataset>.json` (and `Restricted-access/`): lists of rows with
`question_id`, `question_type`, `question`, `gt_answer` (the correct option's text), `image_path`
(relative to the release root, e.g. `Images/<dataset>/...`), `option_A` ... `option_D` (C and D
absent for two-option questions), `modality_type` and `dataset`. The whole release is one test
set; `access` picks the open-access part (the default: the restricted part needs a separate
licence), the restricted part, or both.
"""

from __future__ import annotations

from pathlib import Path

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


@register_benchmark("omnimedvqa", locate=locate)
def load(root: Path, split: str = "test", access: str = "open") -> BenchmarkData:
    _, files = locate(root, split, access)
    items, rejects = [], []
    for file in files:
        rows, bad = read_json_rows(file)
        rejects += bad
        for index, row in rows:
            item_id = str(row.get("question_id") or f"{file.stem}-{index}")
            options = [str(row[k]).strip() for k in OPTION_KEYS if row.get(k) not in (None, "")]
            answer = str(row.get("gt_answer", "")).strip()
            if not row.get("image_path") or answer not in options:
                rejects.append({"id": item_id, "reason": "answer_not_an_option" if row.get("image_path")
                                else "malformed_row", "detail": f"{file.name}: gt_answer={answer!r}"})
                continue
            items.append(VQAItem(
                id=item_id, benchmark="omnimedvqa", split="test", question=str(row.get("question", "")).strip(),
                answer=answer, answer_type="choice", images=[image_path(root / row["image_path"])],
                options=options,
                meta={"question_type": row.get("question_type", ""), "modality": row.get("modality_type", ""),
                      "dataset": row.get("dataset", file.stem), "access": file.parent.name},
            ))
    return finish("omnimedvqa", "test", root, items, rejects=rejects, sources=files)
