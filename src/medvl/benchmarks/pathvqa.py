"""PathVQA (He et al. 2020), in either of its two published layouts.

- The original release (`pvqa/`): `qas/<split>/<split>_qa.pkl` (also `qas/<split>_qa.pkl`), a
  pickled list of `{"image": "test_0261", "question", "answer"}` dicts, with images at
  `images/<split>/<image>.jpg`; splits train/val/test. The pickle is read with an unpickler that
  only builds lists, dicts, strings and numbers, plus numpy scalars (numpy strings and numbers,
  which released pickles may hold: `numpy.dtype` and `multiarray.scalar` only, no arrays, no
  other class), so a tampered file cannot run code. Numpy values become plain Python values.
- The Hugging Face parquet release (flaviagiammarino/path-vqa): `data/<split>-*.parquet` with
  columns `image` ({bytes, path}), `question`, `answer`; splits train/validation/test. Embedded
  images are written once (by content hash) to a cache folder (`image_dir` option).

Answers "yes"/"no" are closed questions and the rest open, the convention LLaVA-Med follows.
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path
from typing import Any

from medvl.benchmarks.base import (
    BenchmarkData,
    BenchmarkError,
    Located,
    VQAItem,
    extract_image_bytes,
    finish,
    image_cache_dir,
    image_path,
    missing_field,
    read_parquet_rows,
    split_name,
    yes_no_answer,
)
from medvl.benchmarks.checks import check_some_question
from medvl.benchmarks.registry import register_benchmark

PICKLE_SPLITS = {"train": (), "val": ("validation", "validate", "dev"), "test": ()}
PARQUET_SPLITS = {"train": (), "validation": ("val", "validate", "dev"), "test": ()}
PICKLE_FIELDS = ("image", "question", "answer")
PARQUET_FIELDS = ("question", "answer")
PARQUET_COLUMNS = ("image", *PARQUET_FIELDS)  # `image`: {bytes, path}


# the globals a pickled numpy scalar needs (protocol 2 adds _codecs.encode for its raw bytes)
NUMPY_SCALAR_GLOBALS = {("numpy._core.multiarray", "scalar"), ("numpy.core.multiarray", "scalar"),
                        ("numpy", "dtype"), ("_codecs", "encode")}


class _PlainUnpickler(pickle.Unpickler):
    """Refuses every class lookup except numpy scalars: only plain data can be loaded."""

    def find_class(self, module: str, name: str) -> type:
        if (module, name) in NUMPY_SCALAR_GLOBALS:
            return super().find_class(module, name)
        raise BenchmarkError(f"PathVQA pickle refers to {module}.{name}; only plain data is accepted")


def _plain(value: object) -> object:
    """A numpy scalar as the matching Python value (numpy strings become str); anything else as is."""
    item = getattr(value, "item", None)
    return item() if callable(item) and type(value).__module__ == "numpy" else value


def locate(root: Path, split: str) -> Located:
    """The split's pickle (the original layout, `qas/`) or its parquet files; `load` tells them by suffix."""
    if (root / "qas").is_dir():
        split = split_name(split, PICKLE_SPLITS)
        candidates = [root / "qas" / split / f"{split}_qa.pkl", root / "qas" / f"{split}_qa.pkl"]
        path = next((p for p in candidates if p.is_file()), None)
        if path is None:
            raise BenchmarkError(f"PathVQA {split} questions not found; looked for: "
                                 f"{', '.join(map(str, candidates))}")
        return Located(split, [path])
    parquet_dir = root / "data" if (root / "data").is_dir() else root
    if any(parquet_dir.glob("*.parquet")):
        split = split_name(split, PARQUET_SPLITS)
        files = sorted(parquet_dir.glob(f"{split}-*.parquet"))
        if not files:
            raise BenchmarkError(f"no PathVQA parquet files for split {split!r} in {parquet_dir}")
        return Located(split, files)
    raise BenchmarkError(f"{root}: neither the original PathVQA layout (qas/) nor parquet files (data/*.parquet)")


def check(files: list[Path]) -> None:
    """The pickle whole, or the parquet files' question columns (not their images, which the load writes out)."""
    if files[0].suffix == ".pkl":
        check_some_question(files[0], (_pickle_problem(_plain_row(row)) for row in _read_pickle(files[0])))
        return
    rows = (row for file in files for row in read_parquet_rows(file, PARQUET_FIELDS, required=PARQUET_COLUMNS))
    check_some_question(files[0].parent, (missing_field(row, PARQUET_FIELDS) for row in rows))


@register_benchmark("pathvqa", locate=locate, check=check)
def load(root: Path, split: str = "test", image_dir: str | None = None) -> BenchmarkData:
    split, files = locate(root, split)
    if files[0].suffix == ".pkl":
        return _load_pickle(root, split, files[0])
    return _load_parquet(root, split, files, image_dir)


def _read_pickle(path: Path) -> list[Any]:
    try:
        rows = _PlainUnpickler(io.BytesIO(path.read_bytes())).load()
    except BenchmarkError:
        raise
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError) as exc:
        raise BenchmarkError(f"{path}: not a readable pickle: {exc}") from exc
    if not isinstance(rows, list):
        raise BenchmarkError(f"{path}: expected a pickled list of question dicts, found a {type(rows).__name__}")
    return rows


def _plain_row(row: object) -> dict[str, Any] | None:
    """A pickled row with plain keys and values (`_plain`); None when it is no dict."""
    return {str(_plain(k)): _plain(v) for k, v in row.items()} if isinstance(row, dict) else None


def _pickle_problem(row: dict[str, Any] | None) -> str | None:
    return "malformed_row" if row is None else missing_field(row, PICKLE_FIELDS)


def _load_pickle(root: Path, split: str, path: Path) -> BenchmarkData:
    rows = _read_pickle(path)
    items, rejects = [], []
    for index, pickled in enumerate(rows):
        item_id = f"{split}_{index:05d}"
        row = _plain_row(pickled)
        problem = _pickle_problem(row)
        if problem:
            rejects.append({"id": item_id, "reason": problem, "detail": repr(pickled)[:200]})
            continue
        image = root / "images" / split / f"{row['image']}.jpg"
        items.append(_item(item_id, split, row["question"], row["answer"], image_path(image),
                           {"image_id": str(row["image"])}))
    return finish("pathvqa", split, root, items, rejects=rejects, sources=[path])


def _load_parquet(root: Path, split: str, files: list[Path], image_dir: str | None) -> BenchmarkData:
    cache = image_cache_dir("pathvqa", files[0], image_dir)
    items, rejects = [], []
    index = 0
    for file in files:
        for row in read_parquet_rows(file, PARQUET_COLUMNS, required=PARQUET_COLUMNS):
            item_id = f"{split}_{index:05d}"
            index += 1
            image = row.get("image") or {}
            problem = missing_field(row, PARQUET_FIELDS)
            path = None if problem else extract_image_bytes(image.get("bytes"), image.get("path"), cache)
            if path is None:
                rejects.append({"id": item_id, "reason": problem or "no_image_bytes", "detail": str(file)})
                continue
            items.append(_item(item_id, split, row["question"], row["answer"], path,
                               {"source_image": image.get("path")}))
    return finish("pathvqa", split, root, items, notes=[f"embedded images written to {cache}"], rejects=rejects,
                  sources=files)


def _item(item_id: str, split: str, question: object, answer: object, image: str, meta: dict) -> VQAItem:
    answer = str(answer).strip()
    yes_no = yes_no_answer(answer) is not None
    return VQAItem(
        id=item_id, benchmark="pathvqa", split=split, question=str(question).strip(), answer=answer,
        answer_type="closed" if yes_no else "open", images=[image], meta={**meta, "yes_no": yes_no},
    )
