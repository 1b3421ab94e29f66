"""Any LLaVA-format file (JSONL, or a JSON array) as a benchmark.

Each record is `{"id", "image", "conversations": [{"from": "human", ...}, {"from": "gpt", ...}]}`:
the question is the first human turn (its `<image>` tags removed), the reference answer is the gpt
turn after it. Optional fields: `answer_type` (CLOSED/OPEN/choice, any case), `options` (a list:
the item is then multiple choice and the answer must be one of them) and any other field, kept in
`meta`. Without `answer_type`, a yes/no answer makes the item closed, anything else open. Image
paths are relative to `image_folder` (default: the file's folder). Malformed records are listed
in `rejects` with the reason, not dropped silently.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from medvl.benchmarks.base import (
    BenchmarkData,
    BenchmarkError,
    Located,
    VQAItem,
    finish,
    image_path,
    yes_no_answer,
)
from medvl.benchmarks.checks import check_some_question
from medvl.benchmarks.registry import register_benchmark
from medvl.io.jsonl import JsonlLineError, iter_jsonl
from medvl.records import IMAGE_TAG, ROLE_OF, record_images, record_problems

KNOWN = {"id", "image", "conversations", "answer_type", "options"}


def locate(root: Path, split: str) -> Located:
    if root.is_dir():
        raise BenchmarkError(f"llava_jsonl: {root} is a folder; set benchmark.root to the JSONL (or JSON) file itself")
    return Located(split, [root])


def check(files: list[Path], split: str) -> None:
    (path,) = files
    read = (_read(line, record, split, path.parent) for line, record in iter_jsonl(path))
    check_some_question(path, (None if isinstance(r, VQAItem) else r["reason"] for r in read))


@register_benchmark("llava_jsonl", locate=locate, check=check)
def load(root: Path, split: str = "test", image_folder: str | None = None) -> BenchmarkData:
    locate(root, split)
    folder = Path(image_folder) if image_folder else root.parent
    items, rejects = [], []
    for line, record in iter_jsonl(root):
        read = _read(line, record, split, folder)
        if isinstance(read, VQAItem):
            items.append(read)
        else:
            rejects.append(read)
    return finish("llava_jsonl", split, root, items, rejects=rejects, sources=[root])


def _read(line: int, record: dict[str, Any] | JsonlLineError, split: str, folder: Path) -> VQAItem | dict[str, str]:
    """The item of a record the loader asks, else its reject (`id`, `reason`, `detail`)."""
    if isinstance(record, JsonlLineError):
        return {"id": f"line-{line}", "reason": "bad_json", "detail": record.reason}
    record_id = str(record.get("id") or f"line-{line}")
    problems = record_problems(record)
    turns = record.get("conversations") or []
    roles = [ROLE_OF.get(t.get("from", "")) for t in turns if isinstance(t, dict)]
    if not problems and "user" in roles and "assistant" not in roles[roles.index("user"):]:
        problems = ["no gpt turn after the first human turn"]
    if problems:
        return {"id": record_id, "reason": "malformed_record", "detail": "; ".join(problems)}
    first = roles.index("user")
    question = turns[first]["value"].replace(IMAGE_TAG + "\n", "").replace(IMAGE_TAG, "").strip()
    answer = next(t["value"] for t, r in zip(turns[first:], roles[first:]) if r == "assistant").strip()
    options = [str(o) for o in record.get("options") or []]
    kind = str(record.get("answer_type") or "").strip().lower()
    if kind not in ("closed", "open", "choice"):
        kind = "choice" if options else ("closed" if yes_no_answer(answer) is not None else "open")
    if kind == "choice" and answer not in options:
        return {"id": record_id, "reason": "answer_not_an_option", "detail": answer[:200]}
    return VQAItem(
        id=record_id, benchmark="llava_jsonl", split=split, question=question, answer=answer,
        answer_type=kind, images=[image_path(folder / p) for p in record_images(record)], options=options,
        meta={k: v for k, v in record.items() if k not in KNOWN},
    )
