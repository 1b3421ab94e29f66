"""The one validation of training records, shared by `medvl data check` and `medvl train`.

`check_record` says whether a row can become a training example and, if not, why:

| stage     | reasons                                                                           |
|-----------|-----------------------------------------------------------------------------------|
| structure | `bad_json`, `bad_structure` (`records.record_problems`), `ends_on_question`,      |
|           | `empty_answer`, `too_many_images`                                                  |
| image     | `image_<reason>` from `medvl.io.images` (`image_missing`, `image_truncated`, ...)   |
| tokens    | `image_cut_by_truncation`, `too_long` (overlong=reject), `no_supervised_tokens`,  |
|           | `template_error`, `template_not_prefix_stable`                                     |

A blank assistant turn teaches nothing but the end-of-turn token: `data.empty_answers: reject`
(the default) rejects the record as `empty_answer`; `warn` keeps it with a warning. A usable row is
also kept with a warning when truncation cut it (`truncated`, with the answer tokens lost) or when
an earlier row of its source has its id (`duplicate_id`).

`check_sources` runs it over every row of every source, writes each reject to `rejects.jsonl` and
each warning to `warnings.jsonl` (`medvl.io.jsonl.RejectLog`'s format) and a report
(`data_check.json`) with the valid row indices, the counts and a fingerprint of everything the
verdicts depend on (files, tokenizer/template, settings). Training calls it too and reuses a report
whose fingerprint matches, so it skips exactly the records the check rejected, with the same
counts, and never meets a bad record mid-epoch. `require_usable` refuses sources that give nothing.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, NamedTuple

from medvl.errors import Rejection
from medvl.io.files import atomic_write_json, ensure_folder, file_lock
from medvl.io.images import ImageLoadError
from medvl.io.jsonl import JsonlLineError, RejectLog
from medvl.records import ROLE_OF, record_problems, to_messages
from medvl.train.config import DataConfig
from medvl.train.encode import ChatEncoder, EncodeError
from medvl.train.sources import DataError, LoadedSource, open_image

__all__ = ["Rejected", "Usable", "check_record", "check_sources", "SourceReport", "CheckReport", "REPORT_NAME",
           "REJECTS_NAME", "WARNINGS_NAME", "count_text", "require_usable"]

log = logging.getLogger(__name__)
REPORT_NAME = "data_check.json"
REJECTS_NAME = "rejects.jsonl"
WARNINGS_NAME = "warnings.jsonl"
CHECK_LOCK = "check.lock"
_VERSION = 3  # 2: empty assistant turns are checked; 3: ends_on_question, truncated, duplicate_id


class Rejected(Rejection):
    """A row that cannot become a training example: the `stage` of the check that turned it away, and why."""

    def __init__(self, stage: str, reason: str, detail: str = ""):
        self.stage = stage
        super().__init__(reason, detail, f"{stage}/{reason}: {detail}")


class Warned(NamedTuple):
    """Something about a usable row worth knowing, counted and listed in `warnings.jsonl`, not rejected."""

    stage: str
    reason: str
    detail: str


class Usable(NamedTuple):
    length: int  # tokens, image tokens included (0 without an encoder), after truncation
    warnings: tuple[Warned, ...] = ()  # e.g. `empty_answer` with `warn`, `truncated`


def check_record(source: LoadedSource, row: Any, encoder: ChatEncoder | None, data: DataConfig) -> Usable:
    """The token length and warnings of a usable row; raises `Rejected` otherwise."""
    if isinstance(row, JsonlLineError):
        raise Rejected("structure", "bad_json", row.reason)
    if not isinstance(row, dict):
        raise Rejected("structure", "bad_structure", f"row is {type(row).__name__}, not an object")
    problems = record_problems(row, embedded=True)
    if problems:
        raise Rejected("structure", "bad_structure", "; ".join(problems))
    if ROLE_OF[(last := row["conversations"][-1])["from"]] == "user":
        raise Rejected("structure", "ends_on_question", f"the last turn ({len(row['conversations']) - 1}) is from "
                       f"{last['from']!r}: its question has no answer (a lost answer?)")
    refs = source.image_refs(row)
    warnings: tuple[Warned, ...] = ()
    empty = _empty_answers(row)
    if empty and data.empty_answers == "reject":
        raise Rejected("structure", "empty_answer", empty)
    if empty:
        warnings = (Warned("structure", "empty_answer", empty),)
    if data.max_images is not None and len(refs) > data.max_images:
        raise Rejected("structure", "too_many_images", f"{len(refs)} images > max_images {data.max_images}")
    for ref in refs:
        try:
            if data.image_check == "exists" and isinstance(ref, Path):
                if not ref.is_file():
                    raise ImageLoadError(str(ref), "missing", "no such file")
            else:
                open_image(ref)
        except ImageLoadError as exc:
            raise Rejected("image", f"image_{exc.reason}", f"{exc.path}: {exc.detail}") from None
    if encoder is None:
        return Usable(0, warnings)
    try:
        encoded = encoder.encode(to_messages(row, embedded=True))
    except EncodeError as exc:
        raise Rejected("tokens", exc.reason, exc.detail) from None
    if encoded.full_length > len(encoded.input_ids):
        warnings += (Warned("tokens", "truncated", f"{encoded.full_length} tokens cut to max_length "
                            f"{encoder.max_length}: {encoded.answer_tokens_cut} answer tokens lost"),)
    return Usable(len(encoded.input_ids), warnings)


def _empty_answers(record: dict[str, Any]) -> str:
    """Which assistant turns are blank, as a reject detail ("" when none is)."""
    answers = [turn["value"] for turn in record["conversations"] if ROLE_OF[turn["from"]] == "assistant"]
    blank = [str(index) for index, answer in enumerate(answers, start=1) if not answer.strip()]
    return f"assistant turn {', '.join(blank)} of {len(answers)} is blank" if blank else ""


@dataclass
class SourceReport:
    name: str
    rows: int = 0
    valid: list[int] = field(default_factory=list)
    lengths: list[int] = field(default_factory=list)
    rejects: Counter = field(default_factory=Counter)
    warnings: Counter = field(default_factory=Counter)

    def summary(self) -> dict[str, Any]:
        lengths = sorted(self.lengths)
        stats = {}
        if lengths:
            stats = {"mean": round(sum(lengths) / len(lengths), 1), "p95": lengths[int(0.95 * (len(lengths) - 1))],
                     "max": lengths[-1]}
        return {"name": self.name, "rows": self.rows, "valid": len(self.valid),
                "rejected": sum(self.rejects.values()), "reasons": dict(self.rejects.most_common()),
                "warnings": dict(self.warnings.most_common()), "tokens": stats}


@dataclass
class CheckReport:
    fingerprint: str
    sources: list[SourceReport]
    path: Path | None = None
    benchmark_overlap: dict[str, Any] | None = None  # `medvl data check --against` (medvl.train.overlap)

    @property
    def rejected(self) -> int:
        return sum(sum(s.rejects.values()) for s in self.sources)

    @property
    def valid(self) -> int:
        return sum(len(s.valid) for s in self.sources)

    @property
    def warned(self) -> int:
        return sum(sum(s.warnings.values()) for s in self.sources)

    def to_json(self) -> dict[str, Any]:
        return {
            "version": _VERSION, "fingerprint": self.fingerprint,
            "totals": {"rows": sum(s.rows for s in self.sources), "valid": self.valid, "rejected": self.rejected,
                       "warnings": self.warned},
            "sources": [{**s.summary(), "valid_rows": s.valid, "lengths": s.lengths} for s in self.sources],
            **({"benchmark_overlap": self.benchmark_overlap} if self.benchmark_overlap is not None else {}),
        }

    def write(self, path: Path) -> None:
        self.path = path
        atomic_write_json(path, self.to_json(), indent=None)

    @classmethod
    def from_json(cls, data: dict[str, Any], path: Path) -> "CheckReport":
        sources = [
            SourceReport(name=s["name"], rows=s["rows"], valid=s["valid_rows"], lengths=s["lengths"],
                         rejects=Counter(s["reasons"]), warnings=Counter(s["warnings"]))
            for s in data["sources"]
        ]
        return cls(fingerprint=data["fingerprint"], sources=sources, path=path)


def fingerprint(sources: list[LoadedSource], encoder: ChatEncoder | None, data: DataConfig) -> str:
    """A hash of everything a verdict depends on: inputs, tokenizer, template and data settings."""
    parts: dict[str, Any] = {
        "version": _VERSION,
        "sources": [s.fingerprint for s in sources],
        "settings": data.model_dump(include={"max_length", "overlong", "last_turn_only", "max_images",
                                             "image_check", "empty_answers"}),
        "roots": [str(s.image_root.resolve()) for s in sources],
    }
    if encoder is not None:
        parts["encoder"] = [encoder.template, encoder.tokens_per_image, len(encoder.tokenizer),
                            encoder.image_token_id, _tokenizer_digest(encoder.tokenizer)]
    return hashlib.sha1(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def _tokenizer_digest(tokenizer: Any) -> str:
    """A hash of how `tokenizer` splits text: a fast tokenizer's whole definition (vocabulary, merges,
    normalizer, pre-tokenizer, added tokens; a vocabulary alone misses a tokenizer whose merges
    changed), else its vocabulary."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    text = backend.to_str() if backend is not None else json.dumps(sorted(tokenizer.get_vocab().items()))
    return hashlib.sha1(text.encode()).hexdigest()


def check_sources(sources: list[LoadedSource], encoder: ChatEncoder | None, data: DataConfig,
                  out_dir: str | Path, reuse: bool = True, progress: bool = True,
                  annotate: Callable[[CheckReport], None] | None = None) -> CheckReport:
    """Validate every row; write `rejects.jsonl` and `data_check.json` under `out_dir`. `annotate` adds
    to the report before it is written, once (a check with it is never reused).

    One process checks into a folder at a time, holding `check.lock` in it; one that waited reuses
    the report the other wrote. The main process of each node of a multi-node run checks at once
    (`main_process_first` is per node), and two checks into one shared folder listed every reject
    twice in rejects.jsonl."""
    out = ensure_folder(out_dir)
    with file_lock(out / CHECK_LOCK, f"checking the training data into {out}"):
        return _check_sources(sources, encoder, data, out, reuse, progress, annotate)


def _check_sources(sources: list[LoadedSource], encoder: ChatEncoder | None, data: DataConfig, out: Path,
                   reuse: bool, progress: bool, annotate: Callable[[CheckReport], None] | None) -> CheckReport:
    report_path = out / REPORT_NAME
    key = fingerprint(sources, encoder, data)
    if reuse and annotate is None and report_path.is_file():
        saved = json.loads(report_path.read_text(encoding="utf-8"))
        if saved.get("fingerprint") == key:
            log.info("reusing the data check in %s (inputs and settings unchanged)", report_path)
            return CheckReport.from_json(saved, report_path)
    for name in (REJECTS_NAME, WARNINGS_NAME):
        (out / name).unlink(missing_ok=True)
    with RejectLog(out / REJECTS_NAME) as rejects, RejectLog(out / WARNINGS_NAME) as warned:
        reports = [_check_source(source, encoder, data, rejects, warned, progress) for source in sources]
    result = CheckReport(fingerprint=key, sources=reports)
    if annotate is not None:
        annotate(result)
    result.write(report_path)
    return result


def _check_source(source: LoadedSource, encoder: ChatEncoder | None, data: DataConfig, rejects: RejectLog,
                  warned: RejectLog, progress: bool) -> SourceReport:
    """One source's verdicts; a usable row whose id an earlier usable row of the source has is kept with
    a `duplicate_id` warning (rejects and warnings name rows by id)."""
    report = SourceReport(name=source.name, rows=len(source))
    first_row: dict[str, int] = {}
    for index in _progress(range(len(source)), f"checking {source.name}", progress):
        row = source.row(index)
        row_id = source.row_id(index, row)
        try:
            usable = check_record(source, row, encoder, data)
        except Rejected as exc:
            report.rejects[exc.reason] += 1
            rejects.reject(row_id, exc.stage, exc.reason, exc.detail, source=source.name, row=index + 1)
            continue
        warnings = usable.warnings
        if (first := first_row.setdefault(row_id, index + 1)) != index + 1:
            warnings += (Warned("structure", "duplicate_id", f"row {first} has the same id"),)
        report.valid.append(index)
        report.lengths.append(usable.length)
        for warning in warnings:
            report.warnings[warning.reason] += 1
            warned.reject(row_id, warning.stage, warning.reason, warning.detail, source=source.name, row=index + 1)
    return report


def require_usable(report: CheckReport, sources: list[LoadedSource]) -> None:
    """A `DataError` naming the first source that gives training no record: an empty file, or one whose
    every row was rejected (a wrong image root, a JSON array that does not parse). One such source in a
    mix was dropped from training with a log line, the others trained on."""
    rejects = report.path.parent / REJECTS_NAME if report.path is not None else REJECTS_NAME
    for source, checked in zip(sources, report.sources):
        if checked.valid:
            continue
        why = "no rows at all"
        if checked.rows:
            why = f"all {checked.rows} rows rejected: {count_text(checked.rejects)}; the reasons are in {rejects}"
        if checked.rejects.get("image_missing"):
            why += f"; relative image paths resolve against {source.image_root.resolve()} (set image_root)"
        where = source.config.path or source.config.hf
        also = "; fix it or remove it from data.sources" if len(sources) > 1 else ""
        raise DataError(f"{where}: no usable record ({why}){also}")


def count_text(counts: Counter) -> str:
    """"reason: n, ..." most frequent first; "-" when there are none."""
    return ", ".join(f"{key}: {value}" for key, value in counts.most_common()) or "-"


def _progress(items: range, description: str, enabled: bool) -> Any:
    if not enabled or len(items) < 2:
        return items
    from tqdm.auto import tqdm

    return tqdm(items, desc=description, unit="rec", mininterval=1.0)
