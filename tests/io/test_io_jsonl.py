"""JSONL: bad lines are reported not fatal, appends survive a torn tail, writes are atomic."""

from __future__ import annotations

import json

import pytest

from medvl.errors import UserError
from medvl.io.files import (
    OutputPathError,
    atomic_write_json,
    atomic_write_text,
    ensure_folder,
    refuse_overwriting_inputs,
)
from medvl.io.jsonl import (
    JsonlAppender,
    JsonlFileError,
    JsonlLineError,
    RejectLog,
    iter_appended,
    iter_jsonl,
    read_json_file,
    read_records,
    write_jsonl,
)


def test_bad_lines_are_reported_with_line_numbers(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"id": 1}\n{broken\n\n[1, 2]\n{"id": 2}\n')
    items = list(iter_jsonl(path))
    assert [n for n, _ in items] == [1, 2, 4, 5]
    assert isinstance(items[1][1], JsonlLineError) and "d.jsonl:2" in str(items[1][1])
    assert "not an object" in items[2][1].reason
    assert [r["id"] for _, r in items if isinstance(r, dict)] == [1, 2]
    with pytest.raises(JsonlLineError):
        read_records(path)


def test_json_array_files_are_read(tmp_path):
    path = tmp_path / "a.json"
    path.write_text(json.dumps([{"id": "a"}, 5, {"id": "b"}]))
    items = list(iter_jsonl(path))
    assert items[0] == (1, {"id": "a"}) and isinstance(items[1][1], JsonlLineError) and items[2] == (3, {"id": "b"})


def test_appender_cuts_a_torn_last_line(tmp_path):
    path = tmp_path / "out.jsonl"
    with JsonlAppender(path) as out:
        out.write({"id": 1})
        out.write({"id": 2})
    with path.open("a") as handle:  # a kill mid-write leaves half a line
        handle.write('{"id": 3, "tex')
    with JsonlAppender(path) as out:
        out.write({"id": 4})
    assert [r["id"] for r in read_records(path)] == [1, 2, 4]


def test_a_last_record_without_its_newline_is_kept_as_every_reader_counts_it(tmp_path):
    """A kill between a record and its newline: the resumed job counts the record done (iter_jsonl,
    iter_appended), so reopening must keep it; cutting it lost the record for good."""
    path = tmp_path / "out.jsonl"
    path.write_text('{"id": 1}\n{"id": 2, "text": "\u00e9 ' + "x" * 70_000 + '"}')  # longer than a read chunk
    assert [r["id"] for _, r in iter_jsonl(path)] == [r["id"] for r in iter_appended(path)] == [1, 2]
    with JsonlAppender(path) as out:
        out.write({"id": 3})
    assert [r["id"] for r in read_records(path)] == [1, 2, 3]
    path.write_text('{"id": 1}\n[2]')  # whole JSON, but no record: torn as far as a reader of records goes
    JsonlAppender(path).close()
    assert path.read_text() == '{"id": 1}\n'


def test_torn_single_line_file_is_emptied(tmp_path):
    path = tmp_path / "out.jsonl"
    path.write_text('{"id": 1')
    JsonlAppender(path).close()
    assert path.read_text() == ""


def test_reject_log_counts(tmp_path):
    log = RejectLog(tmp_path / "rejects.jsonl")
    log.reject("a", "image_filter", "too_small", "200x180 < 336")
    log.reject("b", "image_filter", "too_small")
    log.reject("c", "text_filter", "few_terms", extra_field=1)
    log.close()
    assert log.counts[("image_filter", "too_small")] == 2
    rows = read_records(tmp_path / "rejects.jsonl")
    assert rows[2] == {"id": "c", "stage": "text_filter", "reason": "few_terms", "detail": "", "extra_field": 1}


def test_atomic_writes_leave_no_temporary_files(tmp_path):
    write_jsonl(tmp_path / "x.jsonl", [{"a": 1}, {"b": "é"}])
    atomic_write_json(tmp_path / "sub" / "y.json", {"k": [1]})
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == ["x.jsonl", "y.json"]
    assert read_records(tmp_path / "x.jsonl")[1] == {"b": "é"}


@pytest.mark.parametrize("umask", [0o022, 0o002, 0o077])
def test_atomic_writes_get_the_mode_of_a_plain_open_not_mkstemps_0600(tmp_path, umask):
    """A curated dataset or report is for the team sharing the folder: mkstemp's 0600 hid it from them."""
    import os

    old = os.umask(umask)
    try:
        write_jsonl(tmp_path / "x.jsonl", [{"a": 1}])
        (tmp_path / "plain.txt").write_text("x")
    finally:
        os.umask(old)
    assert (tmp_path / "x.jsonl").stat().st_mode & 0o777 == 0o666 & ~umask
    assert (tmp_path / "x.jsonl").stat().st_mode & 0o777 == (tmp_path / "plain.txt").stat().st_mode & 0o777


def test_a_cut_off_line_points_at_where_the_json_stops(tmp_path):
    path = tmp_path / "cut.jsonl"
    path.write_text('{"id": "a", "conversations": []}\n{"id": "b", "conv\n{"id": "c", "n": 1\n{"id": "d", "x": tru}\n')
    problems = [item.reason for _, item in iter_jsonl(path) if isinstance(item, JsonlLineError)]
    assert problems == [
        "invalid JSON at column 13 of 17 (end of line: cut off?): Unterminated string starting at",
        "invalid JSON at column 19 of 18 (end of line: cut off?): Expecting ',' delimiter",
        "invalid JSON at column 18 of 21: Expecting value",
    ]


def test_a_leading_utf8_bom_is_skipped_in_lines_and_arrays(tmp_path):
    """Windows tools write a BOM; it must not turn the first record into a bad line."""
    lines, array = tmp_path / "bom.jsonl", tmp_path / "bom.json"
    lines.write_bytes(b"\xef\xbb\xbf" + b'{"id": "a"}\n{"id": "b"}\n')
    array.write_bytes(b"\xef\xbb\xbf" + b'[{"id": "a"}]')
    assert read_records(lines) == [{"id": "a"}, {"id": "b"}]
    assert read_records(array) == [{"id": "a"}]


def test_a_line_with_bytes_that_are_not_utf8_is_a_bad_line_not_a_changed_record(tmp_path):
    lines = tmp_path / "latin1.jsonl"  # "café" saved as Latin-1: it was read as "caf\ufffd", counted nowhere
    lines.write_bytes(b'{"id": "a", "q": "caf\xe9"}\n{"id": "b", "q": "\xef\xbf\xbd is U+FFFD, valid"}\n')
    items = list(iter_jsonl(lines))
    assert isinstance(items[0][1], JsonlLineError)
    assert items[0][1].reason == "not UTF-8 text (byte 0xe9 at column 22); save the file as UTF-8"
    assert items[1] == (2, {"id": "b", "q": "\ufffd is U+FFFD, valid"})
    array = tmp_path / "latin1.json"
    array.write_bytes(b'[{"id": "a", "q": "caf\xe9"}]')
    [(number, problem)] = list(iter_jsonl(array))
    assert number == 1 and "not UTF-8 text (byte 0xe9" in problem.reason


def test_an_input_that_cannot_be_opened_is_a_user_error_naming_it(tmp_path):
    with pytest.raises(JsonlFileError, match="absent.jsonl: no such file") as missing:
        read_records(tmp_path / "absent.jsonl")
    assert isinstance(missing.value, UserError) and isinstance(missing.value, OSError)
    with pytest.raises(JsonlFileError, match="is a folder; give the JSONL/JSON file itself"):
        list(iter_jsonl(tmp_path))


def test_an_output_path_blocked_by_a_file_or_a_folder_is_a_user_error(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    with pytest.raises(OutputPathError, match=f"^{blocker} is a file, not a folder"):
        ensure_folder(blocker)
    with pytest.raises(OutputPathError, match=f"^{blocker / 'sub'}: {blocker} is a file, not a folder"):
        ensure_folder(blocker / "sub")
    with pytest.raises(OutputPathError, match="is a folder; give a file path"):
        atomic_write_text(tmp_path, "x")
    with pytest.raises(OutputPathError, match="is a file, not a folder"):
        JsonlAppender(blocker / "rows.jsonl")
    assert blocker.read_text() == "x"


def test_a_folder_on_a_read_only_file_system_is_one_output_path_error(tmp_path, monkeypatch):
    """EROFS (or ENOSPC, or ENOENT under /proc) from mkdir: one line naming the folder, not an OSError."""
    import errno
    from pathlib import Path

    def read_only(self, *args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system", str(self))

    monkeypatch.setattr(Path, "mkdir", read_only)
    with pytest.raises(OutputPathError, match=r"out: cannot create this folder \(Read-only file system\)"):
        ensure_folder(tmp_path / "out")


@pytest.mark.parametrize("content, problem", [
    (b'{"benchmark": "vqa', "not valid JSON (Unterminated string starting at: line 1 column 15)"),
    (b"  \n", "empty"),
    (b'{"a": "caf\xe9"}', "not UTF-8 text (byte 0xe9"),
])
def test_read_json_file_names_the_file_the_problem_what_and_the_fix(tmp_path, content, problem):
    path = tmp_path / "scores.json"
    path.write_bytes(content)
    with pytest.raises(JsonlFileError) as error:
        read_json_file(path, "a scores file", "run it again")
    message = str(error.value)
    assert message.startswith(f"{path}: {problem}") and message.endswith("; expected a scores file; run it again")
    assert "\n" not in message and isinstance(error.value, UserError)
    path.write_bytes(b'\xef\xbb\xbf{"a": [1]}')  # a BOM is skipped
    assert read_json_file(path, "a scores file", "run it again") == {"a": [1]}
    with pytest.raises(JsonlFileError, match="no such file"):
        read_json_file(tmp_path / "absent.json", "a scores file", "run it again")


def test_an_output_that_is_an_input_is_refused_through_links_and_dots(tmp_path):
    source = tmp_path / "data" / "train.jsonl"
    source.parent.mkdir()
    source.write_text("{}\n")
    (tmp_path / "link").symlink_to(source.parent)
    for output in (source, tmp_path / "link" / "train.jsonl", tmp_path / "data" / ".." / "data" / "train.jsonl"):
        with pytest.raises(OutputPathError, match=f"{output} would overwrite the input {source}; choose another"):
            refuse_overwriting_inputs([tmp_path / "other.jsonl", output], [source], "choose another")
    refuse_overwriting_inputs([tmp_path / "data" / "train.clean.jsonl"], [source], "choose another")
