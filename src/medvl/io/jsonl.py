"""JSON Lines: streaming reads that report bad lines instead of dying, durable appends, rejects.

- `iter_jsonl` yields `(line_number, record)` or `(line_number, JsonlLineError)` so a caller can
  record a malformed line and go on. A whole-file JSON array (`[...]`, as LLaVA-Med and
  PubMedVision release) is read too, and a leading UTF-8 BOM is skipped. A line holding bytes that
  are not UTF-8 is a bad line ("not UTF-8 text (byte 0xe9 at column 12)"), not a record with its
  text silently changed. A path that cannot be read at all (missing, a folder, no permission) is a
  `JsonlFileError`.
- `JsonlAppender` appends one record per line, flushing each line, so a killed job keeps every
  finished record; a torn final line left by a kill is cut off when the file is reopened. A last
  line that is a whole JSON object but for its newline (the kill came between the two) is a
  finished record, as every reader here counts it: it gets its newline instead (cutting it lost
  the record a resumed job had just counted as done).
  `iter_appended` reads such a file back while it may still be written (fast, no checks: medvl
  wrote it): a torn last line is skipped, a missing file is empty.
- `RejectLog` is the one format for "this input was dropped, and why" across all stages.
- `read_json_file(path, what, fix)`: a whole JSON file (a run's scores.json, a candidates file) that
  a command needs; missing, a folder, not UTF-8, empty or not JSON is one `JsonlFileError` line
  naming the file, the problem, what it should be and the fix. `read_json_object` (and
  `check_json_fields`, for a part of one) also wants an object holding given keys with values of
  given types (a file medvl saved: a classifier's metadata, a text filter's weights); a key missing
  or of another type is such a line too.
"""

from __future__ import annotations

import json
import os
import re
from collections import Counter
from pathlib import Path
from typing import Any, Iterable, Iterator

from medvl.errors import UserError
from medvl.io.files import atomic_write_text, check_file_target

__all__ = [
    "READ_TEXT",
    "JsonlFileError",
    "JsonlLineError",
    "iter_jsonl",
    "iter_appended",
    "not_utf8",
    "decode_line",
    "read_json_file",
    "read_json_object",
    "check_json_fields",
    "read_records",
    "write_jsonl",
    "JsonlAppender",
    "RejectLog",
    "reject_line",
]


READ_TEXT = {"encoding": "utf-8-sig", "errors": "surrogateescape"}  # a BOM skipped; bad bytes: see not_utf8
_UNDECODABLE = re.compile("[\udc80-\udcff]")  # what surrogateescape makes of a byte that is not UTF-8


def not_utf8(text: str) -> str | None:
    """The problem with `text` read with `errors="surrogateescape"` (`READ_TEXT`), if it held bytes that
    are not UTF-8 (they were replaced by U+FFFD, silently, before: a record with its text changed,
    counted nowhere)."""
    bad = _UNDECODABLE.search(text)
    if bad is None:
        return None
    byte = ord(bad.group()) - 0xDC00
    return f"not UTF-8 text (byte 0x{byte:02x} at column {bad.start() + 1}); save the file as UTF-8"


class JsonlLineError(UserError, ValueError):
    """A line that is not a JSON object; carries the file, line number and reason.

    Readers that go on past bad lines get it as a value (`iter_jsonl`); `read_records` raises it, a
    `UserError` naming the file and line."""

    def __init__(self, path: str | Path, line_number: int, reason: str):
        self.path, self.line_number, self.reason = str(path), line_number, reason
        super().__init__(f"{path}:{line_number}: {reason}")


class JsonlFileError(UserError, OSError):
    """A JSONL/JSON input that cannot be opened (or, for `read_json_file`, read as JSON); the message
    names the path and what is wrong."""


def _open_input(path: Path) -> Any:
    try:
        return path.open("r", **READ_TEXT)
    except (FileNotFoundError, NotADirectoryError):
        raise JsonlFileError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise JsonlFileError(f"{path} is a folder; give the JSONL/JSON file itself") from None
    except PermissionError:
        raise JsonlFileError(f"{path}: permission denied reading this file") from None


def iter_jsonl(path: str | Path) -> Iterator[tuple[int, dict[str, Any] | JsonlLineError]]:
    """Yield (line_number, record) for each non-blank line; bad lines yield a JsonlLineError.

    A file whose first non-space character is `[` is read as one JSON array (item index + 1 is
    then the "line number").
    """
    path = Path(path)
    with _open_input(path) as handle:
        first = _first_non_space(handle)
        handle.seek(0)
        if first == "[":
            text = handle.read()
            problem = not_utf8(text)
            if problem is None:
                try:
                    items = json.loads(text)
                except json.JSONDecodeError as exc:
                    problem = f"invalid JSON array: {exc}"
            if problem is not None:
                yield 1, JsonlLineError(path, 1, problem)
                return
            for index, item in enumerate(items, start=1):
                yield index, item if isinstance(item, dict) else JsonlLineError(
                    path, index, f"array item is {type(item).__name__}, not an object"
                )
            return
        for number, line in enumerate(handle, start=1):
            line = line.rstrip("\r\n")
            if not line.strip():
                continue
            record, problem = decode_line(line)
            if problem is not None:
                yield number, JsonlLineError(path, number, problem)
                continue
            if not isinstance(record, dict):
                yield number, JsonlLineError(path, number, f"line is {type(record).__name__}, not an object")
                continue
            yield number, record


def iter_appended(path: str | Path) -> Iterator[dict[str, Any]]:
    """The records of a file a `JsonlAppender` wrote (see the module notes)."""
    import orjson

    path = Path(path)
    if not path.exists():
        return
    with path.open("rb") as handle:
        for line in handle:
            if line.endswith(b"\n"):
                yield orjson.loads(line)
            elif (record := _whole_record(line)) is not None:
                yield record


def read_json_file(path: str | Path, what: str, fix: str) -> Any:
    """The JSON value of the whole file `path` (a leading BOM skipped); see the module notes. `what`
    names what the file should be ("a scores file"), `fix` how to get a good one."""
    path = Path(path)
    with _open_input(path) as handle:
        text = handle.read()
    problem = not_utf8(text)
    if problem is None:
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            where = f"line {exc.lineno} column {exc.colno}"
            problem = f"not valid JSON ({exc.msg}: {where})" if text.strip() else "empty"
    raise JsonlFileError(f"{path}: {problem}; expected {what}; {fix}")


_JSON_TYPES = {str: "a string", int: "an integer", float: "a number", bool: "true or false", list: "a list",
               dict: "an object", type(None): "null"}


def read_json_object(path: str | Path, what: str, fix: str, fields: dict[str, type | tuple[type, ...]]
                     ) -> dict[str, Any]:
    """`read_json_file`'s value, which must be an object holding `fields` (`check_json_fields`)."""
    data = read_json_file(path, what, fix)
    check_json_fields(data, str(path), what, fix, fields)
    return data


def check_json_fields(data: Any, where: str, what: str, fix: str, fields: dict[str, type | tuple[type, ...]]) -> None:
    """A `JsonlFileError` naming `where` and each problem unless `data` is an object holding each of
    `fields` (key: its type or types; `float` takes an int too, a bool is neither)."""
    if not isinstance(data, dict):
        raise JsonlFileError(f"{where}: {_JSON_TYPES.get(type(data), type(data).__name__)}, not an object; "
                             f"expected {what}; {fix}")
    problems = []
    for key, types in fields.items():
        declared = types if isinstance(types, tuple) else (types,)
        allowed = declared + ((int,) if float in declared else ())
        value = data.get(key)
        if key not in data:
            problems.append(f"no '{key}'")
        elif not isinstance(value, allowed) or (isinstance(value, bool) and bool not in declared):
            wanted = " or ".join(_JSON_TYPES.get(t, t.__name__) for t in declared)
            problems.append(f"'{key}' is {json.dumps(value)[:40]}, not {wanted}")
    if problems:
        raise JsonlFileError(f"{where}: {'; '.join(problems)}; expected {what}; {fix}")


def read_records(path: str | Path) -> list[dict[str, Any]]:
    """Read every record, raising on the first bad line (for small files the caller trusts)."""
    records = []
    for _, item in iter_jsonl(path):
        if isinstance(item, JsonlLineError):
            raise item
        records.append(item)
    return records


def write_jsonl(path: str | Path, records: Iterable[dict[str, Any]]) -> Path:
    """Write all records at once, atomically."""
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
    return atomic_write_text(path, text)


class JsonlAppender:
    """Append records durably; reopening after a kill mends a torn last line first (module notes)."""

    def __init__(self, path: str | Path, fsync: bool = False):
        self.path = check_file_target(path)
        _mend_torn_tail(self.path)
        self._handle = self.path.open("a", encoding="utf-8")
        self._fsync = fsync

    def write(self, record: dict[str, Any]) -> None:
        self._handle.write(json.dumps(record, ensure_ascii=False) + "\n")
        self._handle.flush()
        if self._fsync:
            os.fsync(self._handle.fileno())

    def close(self) -> None:
        self._handle.close()

    def __enter__(self) -> "JsonlAppender":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class RejectLog(JsonlAppender):
    """Rejected inputs with their reason: `{"id", "stage", "reason", "detail"}` per line.

    `counts` tallies (stage, reason) for the stage report.
    """

    def __init__(self, path: str | Path, fsync: bool = False):
        super().__init__(path, fsync=fsync)
        self.counts: Counter[tuple[str, str]] = Counter()

    def reject(self, record_id: str, stage: str, reason: str, detail: str = "", **extra: Any) -> None:
        self.counts[(stage, reason)] += 1
        self.write(reject_line(record_id, stage, reason, detail, **extra))


def reject_line(record_id: str, stage: str, reason: str, detail: str = "", **extra: Any) -> dict[str, Any]:
    """One reject, in the one shape every stage writes: `{"id", "stage", "reason", "detail", ...extra}`."""
    return {"id": record_id, "stage": stage, "reason": reason, "detail": detail, **extra}


def decode_line(line: str) -> tuple[Any, str | None]:
    """(the JSON value, None), or (None, why not) for one line read with `READ_TEXT` (newline
    stripped): bytes that are not UTF-8 (`not_utf8`), or where its JSON stops parsing (`_decode_problem`)."""
    if problem := not_utf8(line):
        return None, problem
    try:
        return json.loads(line), None
    except json.JSONDecodeError as exc:
        return None, _decode_problem(exc, len(line))


def _decode_problem(exc: json.JSONDecodeError, length: int) -> str:
    """Where a JSON line of `length` characters (newline excluded) stops parsing, as a reject detail.

    E.g. "invalid JSON at column 9 of 8 (end of line: cut off?): Expecting ',' delimiter"; a string
    still open at the end of the line is reported where it starts.
    """
    where = f"column {exc.colno} of {length}"
    if exc.pos >= length or exc.msg.startswith("Unterminated string"):
        where += " (end of line: cut off?)"
    return f"invalid JSON at {where}: {exc.msg}"


def _first_non_space(handle: Any) -> str:
    while True:
        char = handle.read(1)
        if not char or not char.isspace():
            return char


def _whole_record(line: bytes) -> dict[str, Any] | None:
    """`line` as a JSON object, or None when it is not one (a record torn short by a kill); read as
    `iter_jsonl` reads a line, so that both count the same records."""
    try:
        record = json.loads(line.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None
    return record if isinstance(record, dict) else None


def _mend_torn_tail(path: Path) -> None:
    """If the file does not end in a newline (a kill mid-write): a last line that is a whole record gets
    its newline, a part of one is cut back to the previous newline (module notes)."""
    if not path.exists() or path.stat().st_size == 0:
        return
    with path.open("rb+") as handle:
        size = handle.seek(0, os.SEEK_END)
        handle.seek(size - 1)
        if handle.read(1) == b"\n":
            return
        tail_start = _after_last_newline(handle, size)
        handle.seek(tail_start)
        if _whole_record(handle.read()) is not None:
            handle.seek(0, os.SEEK_END)
            handle.write(b"\n")
        else:
            handle.truncate(tail_start)


def _after_last_newline(handle: Any, size: int) -> int:
    """The offset just after the last newline of a binary file of `size` bytes (0 when it has none)."""
    chunk = 1 << 16
    position = size
    while position > 0:
        start = max(0, position - chunk)
        handle.seek(start)
        cut = handle.read(position - start).rfind(b"\n")
        if cut >= 0:
            return start + cut + 1
        position = start
    return 0
