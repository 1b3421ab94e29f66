"""The benchmark item model shared by every loader: `VQAItem`, `BenchmarkData`, and their checks.

A loader reads one release from local files and returns `BenchmarkData`: the items in file order,
the ids of items whose image files are missing (reported by count and id, never dropped), and
notes about anything the loader had to decide (a split without answers, a reconstructed field).
Items convert to medvl's LLaVA conversation record (`VQAItem.to_record`, through
`medvl.records.make_record`) so the training stage can fine-tune on a benchmark's train split with
the same loaders.
"""

from __future__ import annotations

import hashlib
import os
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, NamedTuple

from medvl.errors import UserError
from medvl.records import make_record

__all__ = [
    "LETTERS",
    "NOT_THE_RELEASE",
    "AnswerType",
    "BenchmarkData",
    "BenchmarkError",
    "Located",
    "UnknownSplit",
    "VQAItem",
    "closed_as_choice",
    "extract_image_bytes",
    "find_path",
    "finish",
    "image_cache_dir",
    "image_path",
    "missing_field",
    "one_of",
    "open_closed_item",
    "open_closed_problem",
    "option_letter",
    "read_json",
    "read_json_rows",
    "read_parquet_rows",
    "some_of",
    "split_name",
    "text_field",
    "yes_no_answer",
]

AnswerType = Literal["closed", "open", "choice"]
ANSWER_TYPES = ("closed", "open", "choice")
LETTERS = "ABCDEFGHIJK"  # HuatuoGPT-Vision letters up to 11 options


def option_letter(answer: str, options: list[str]) -> str | None:
    """The letter of `answer` among `options` (the first match), or None when it is not one of them."""
    return LETTERS[options.index(answer)] if answer in options else None


class BenchmarkError(UserError, ValueError):
    """A benchmark folder, file or option that cannot be read as the named release; says what is wrong."""


@dataclass
class VQAItem:
    """One benchmark question.

    `answer_type`: "closed" (yes/no and other closed-set answers), "open" (free text) or "choice"
    (lettered options; `answer` is the correct option's text). `images` are absolute paths, which
    may not exist (see `BenchmarkData.missing_images`).
    """

    id: str
    benchmark: str
    split: str
    question: str
    answer: str
    answer_type: AnswerType
    images: list[str]
    options: list[str] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.answer_type not in ANSWER_TYPES:
            raise BenchmarkError(f"item {self.id}: answer_type {self.answer_type!r} is not one of {ANSWER_TYPES}")
        if self.answer_type == "choice" and len(self.options) > len(LETTERS):
            raise BenchmarkError(f"item {self.id}: {len(self.options)} options, at most {len(LETTERS)} are lettered")

    @property
    def answer_letter(self) -> str | None:
        """The correct option's letter for a choice item (None when the answer is not an option)."""
        return option_letter(self.answer, self.options)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_record(self, prompt: str | None = None, answer: str | None = None, id_suffix: str = "") -> dict[str, Any]:
        """A LLaVA conversation record: one human turn (images, then `prompt` or the question) and one
        gpt turn (`answer` or the reference answer); its id is "benchmark-split-id" plus `id_suffix`
        (records that ask one item twice, in two forms, keep distinct ids)."""
        return make_record(
            f"{self.benchmark}-{self.split}-{self.id}{id_suffix}", self.images,
            [(prompt if prompt is not None else self.question, answer if answer is not None else self.answer)],
            answer_type=self.answer_type, benchmark=self.benchmark,
            **({"options": list(self.options)} if self.options else {}),
        )


@dataclass
class BenchmarkData:
    """A loaded split: items in file order plus what the loader found wrong or decided."""

    name: str
    split: str
    root: str
    items: list[VQAItem]
    missing_images: list[str] = field(default_factory=list)  # ids of items with an image file absent
    notes: list[str] = field(default_factory=list)
    rejects: list[dict[str, str]] = field(default_factory=list)  # {"id", "reason", "detail"} of unreadable rows
    sources: list[str] = field(default_factory=list)  # the question files read (a command must not overwrite them)

    def __len__(self) -> int:
        return len(self.items)

    def counts(self) -> dict[str, int]:
        return dict(Counter(item.answer_type for item in self.items))

    def summary(self) -> str:
        parts = ", ".join(f"{n} {t}" for t, n in sorted(self.counts().items()))
        lines = [f"{self.name} [{self.split}]: {len(self.items)} questions ({parts}) from {self.root}"]
        if self.missing_images:
            shown = ", ".join(self.missing_images[:10]) + (" ..." if len(self.missing_images) > 10 else "")
            lines.append(f"  {len(self.missing_images)} questions have missing images: {shown}")
        if self.rejects:
            lines.append(f"  {len(self.rejects)} rows could not be read (first: {self.rejects[0]})")
        lines.extend(f"  note: {note}" for note in self.notes)
        return "\n".join(lines)


class Located(NamedTuple):
    """Where a split's questions are, found without reading them: the release's own name for the split
    and the question files its loader reads (a loader's `locate`, `registry.locate_benchmark`)."""

    split: str
    files: list[Path]


def finish(name: str, split: str, root: str | Path, items: list[VQAItem], notes: Iterable[str] = (),
           rejects: Iterable[dict[str, str]] = (), sources: Iterable[str | Path] = ()) -> BenchmarkData:
    """Check ids are unique and every image exists; return the `BenchmarkData`."""
    duplicates = [i for i, n in Counter(item.id for item in items).items() if n > 1]
    if duplicates:
        raise BenchmarkError(f"{name} [{split}]: duplicate item ids {duplicates[:5]}")
    exists: dict[str, bool] = {}
    missing = []
    for item in items:
        if not all(exists.setdefault(p, os.path.isfile(p)) for p in item.images):
            missing.append(item.id)
    return BenchmarkData(name=name, split=split, root=str(root), items=items, missing_images=missing,
                         notes=list(notes), rejects=list(rejects), sources=[str(path) for path in sources])


YES = {"yes", "是", "是的", "有", "包含", "可以", "存在", "对"}
NO = {"no", "否", "不是", "没有", "无", "不包含", "不可以", "不存在", "不"}


def yes_no_answer(answer: str) -> str | None:
    """'yes' / 'no' when a reference answer is a plain yes/no (English or SLAKE's Chinese forms)."""
    text = answer.strip().strip(".。!！").lower()
    if text in YES:
        return "yes"
    if text in NO:
        return "no"
    return None


def image_cache_dir(benchmark: str, source: Path, override: str | Path | None) -> Path:
    """Where images embedded in a data file (parquet bytes) are written once, by content hash."""
    if override is not None:
        return Path(override)
    base = Path(os.environ.get("MEDVL_CACHE", Path.home() / ".cache" / "medvl"))
    tag = hashlib.sha1(str(source.resolve()).encode()).hexdigest()[:12]
    return base / "eval-images" / benchmark / tag


def image_path(path: Path) -> str:
    """An item's image path: absolute, with the symlinks the user named kept (not resolved to their
    targets), so predictions and records show the folder the user gave."""
    return os.path.abspath(path)


def extract_image_bytes(data: bytes | None, name_hint: str | None, folder: Path) -> str | None:
    """Write embedded image bytes to `folder/<sha1><ext>` (once) and return the absolute path."""
    if not data:
        return None
    suffix = Path(name_hint or "").suffix.lower() or ".png"
    digest = hashlib.sha1(data).hexdigest()
    path = folder / f"{digest}{suffix}"
    if not path.is_file():
        from medvl.io.files import atomic_write_bytes

        atomic_write_bytes(path, data)
    return image_path(path)


def find_path(root: Path, candidates: Iterable[str], what: str) -> Path:
    """The first of `candidates` (relative to `root`) that exists; a clear error naming all of them."""
    tried = []
    for candidate in candidates:
        path = root / candidate
        if path.exists():
            return path
        tried.append(str(path))
    raise BenchmarkError(f"{what} not found; looked for: " + ", ".join(tried) +
                         "; give the release's folder as published (docs/evaluation.md lists each layout)")


NOT_THE_RELEASE = ("is this the release's own question file, downloaded whole? (docs/evaluation.md lists "
                   "each layout)")


class UnknownSplit(BenchmarkError):
    """A split the release does not have; `load_benchmark` names the benchmark and its root."""


def split_name(split: str, aliases: dict[str, tuple[str, ...]]) -> str:
    """Map a split name or alias (`val`, `validation`, `validate`...) to the release's own name."""
    for name, names in aliases.items():
        if split == name or split in names:
            return name
    raise UnknownSplit(f"unknown split {split!r}; this release has: {', '.join(aliases)}")


def read_json(path: Path) -> Any:
    """A release's whole JSON file; a `BenchmarkError` naming the file when it cannot be read as JSON."""
    from medvl.io.jsonl import JsonlFileError, read_json_file

    try:
        return read_json_file(path, "a JSON file of the release",
                              "is this the release's own file, downloaded whole?")
    except JsonlFileError as exc:
        raise BenchmarkError(str(exc)) from None


def read_json_rows(path: Path) -> tuple[list[tuple[int, dict[str, Any]]], list[dict[str, str]]]:
    """The (index, row) pairs of a JSON list of question rows, and rejects for entries that are not objects."""
    rows = read_json(path)
    if not isinstance(rows, list):
        raise BenchmarkError(f"{path}: expected a JSON list of question rows, found a {type(rows).__name__}; "
                             "is this the release's question file?")
    good = [(index, row) for index, row in enumerate(rows) if isinstance(row, dict)]
    bad = [{"id": f"{path.stem}-row-{index}", "reason": "malformed_row", "detail": f"{path.name}: {row!r}"[:200]}
           for index, row in enumerate(rows) if not isinstance(row, dict)]
    return good, bad


def read_parquet_rows(path: Path, columns: Sequence[str] | None = None,
                      required: Sequence[str] = ()) -> list[dict[str, Any]]:
    """The rows of a parquet file as dicts, with those of `columns` it has (every column when None: the
    embedded images too); a file that is not parquet, or lacks a `required` column, is a `BenchmarkError`."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)  # opened once: its schema, then the columns wanted
        present = parquet.schema_arrow.names
        missing = [column for column in required if column not in present]
        if missing:
            raise BenchmarkError(f"{path}: no column {', '.join(missing)} (it has {', '.join(present)}); "
                                 f"{NOT_THE_RELEASE}")
        wanted = None if columns is None else [column for column in columns if column in present]
        return parquet.read(columns=wanted).to_pylist()
    except (pa.ArrowException, OSError) as exc:
        reason = " ".join(str(exc).split())  # pyarrow's messages may span lines
        raise BenchmarkError(f"{path}: not a readable parquet file ({reason}); {NOT_THE_RELEASE}") from exc


def text_field(row: dict[str, Any], key: str) -> str | None:
    """`row[key]` as stripped text (numbers become text), or None when it is absent, null, blank or not
    text at all (a list, an object, true/false: what `missing_field` calls `bad_<key>`)."""
    value = row.get(key)
    if value is None or not _is_text(value):
        return None
    text = str(value).strip()
    return text or None


def _is_text(value: Any) -> bool:
    return isinstance(value, (str, int, float)) and not isinstance(value, bool)


def missing_field(row: dict[str, Any], keys: Sequence[str]) -> str | None:
    """The reject reason for the first of `keys` that is unusable: `no_<key>` when it is absent, null or
    blank, `bad_<key>` when it is not text (a list, an object); None when all are there."""
    for key in keys:
        if text_field(row, key) is None:
            return f"bad_{key}" if row.get(key) is not None and not _is_text(row[key]) else f"no_{key}"
    return None


def open_closed_problem(row: dict[str, Any], image_key: str) -> str | None:
    """The reject reason of a VQA-RAD/SLAKE-style row `open_closed_item` cannot ask; None for one it can."""
    problem = missing_field(row, ("question", "answer", image_key))
    kind = str(row.get("answer_type", "")).strip().upper()
    return problem or (None if kind in ("CLOSED", "OPEN") else "bad_answer_type")


def open_closed_item(row: dict[str, Any], index: int, rejects: list[dict[str, str]], *, benchmark: str, split: str,
                     image_dir: Path, image_key: str, meta: dict[str, Any]) -> VQAItem | None:
    """The item of a VQA-RAD/SLAKE-style row (`qid`, `question`, `answer`, `answer_type` CLOSED/OPEN, an
    image file name under `image_key`), its `meta` completed with `yes_no`; None after recording the
    reject when a field is missing or the answer type unknown."""
    qid = str(row.get("qid", index))
    kind = str(row.get("answer_type", "")).strip().upper()
    problem = open_closed_problem(row, image_key)
    if problem:
        rejects.append({"id": qid, "reason": problem, "detail": f"answer_type={kind!r}"})
        return None
    answer = str(text_field(row, "answer"))
    return VQAItem(
        id=qid,
        benchmark=benchmark,
        split=split,
        question=str(text_field(row, "question")),
        answer=answer,
        answer_type="closed" if kind == "CLOSED" else "open",
        images=[image_path(image_dir / str(text_field(row, image_key)))],
        meta={**meta, "yes_no": yes_no_answer(answer) is not None},
    )


def one_of(benchmark: str, option: str, value: Any, known: Sequence[str]) -> str:
    """`value` when it is one of `known`, else an error naming the known values."""
    if value not in known:
        raise BenchmarkError(f"{benchmark}: option {option}={value!r} is not one of: {', '.join(known)}")
    return value


def some_of(benchmark: str, option: str, values: str | Iterable[str], known: Sequence[str]) -> list[str]:
    """`values` as a list (one string becomes a one-element list), each checked against `known`."""
    if not isinstance(values, (str, list, tuple)):
        raise BenchmarkError(f"{benchmark}: option {option}={values!r} is neither a name nor a list of names; "
                             f"known: {', '.join(known)}")
    chosen = [values] if isinstance(values, str) else list(values)
    unknown = [v for v in chosen if v not in known]
    if unknown or not chosen:
        raise BenchmarkError(f"{benchmark}: option {option}={unknown or chosen!r} names no known value; "
                             f"known: {', '.join(known)}")
    return chosen


YES_NO_OPTIONS = ["yes", "no"]


def closed_as_choice(items: Iterable[VQAItem]) -> tuple[list[VQAItem], int]:
    """HuatuoGPT-Vision's multiple-choice view of an open/closed benchmark.

    Closed items with a yes/no reference become choice items with options A. yes / B. no; items
    that already have options stay; open items (and closed ones that are not yes/no and carry no
    options) are left out, as HuatuoGPT-Vision's scorer skips them. Returns (items, left out).
    """
    kept, left_out = [], 0
    for item in items:
        if item.answer_type == "choice":
            kept.append(item)
            continue
        answer = yes_no_answer(item.answer) if item.answer_type == "closed" else None
        if answer is None:
            left_out += 1
            continue
        kept.append(VQAItem(id=item.id, benchmark=item.benchmark, split=item.split, question=item.question,
                            answer=answer, answer_type="choice", images=item.images,
                            options=list(YES_NO_OPTIONS), meta={**item.meta, "protocol": "choice"}))
    return kept, left_out
