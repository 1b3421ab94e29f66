"""What a benchmark's `check` uses: the question files read, their images not, to refuse a run that would fail.

A loader's `check(files, ...)` (registered with `register_benchmark(..., check=check)`; `files` are what
its `locate` found) raises what every process of a launched run would otherwise fail on once it loads:
a question file that is not of its format (truncated JSON, not JSON, a parquet file that is not one,
a CSV without the question columns; a parquet file's question columns are read with
`base.read_parquet_rows`, not its images), an option value none of its rows has, and a split none of whose
rows the loader can ask (another release's file, rows without the fields it needs): such a run would
answer nothing. Rows the loader rejects one by one are its business (counted, never a refusal).

    rows, rejects = read_json_rows(path)
    check_some_question(path, chain(rejected_reasons(rejects), (problem(row) for _, row in rows)))
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path

from medvl.benchmarks.base import NOT_THE_RELEASE, BenchmarkError

__all__ = ["check_some_question", "rejected_reasons"]


def rejected_reasons(rejects: Iterable[dict[str, str]]) -> Iterator[str]:
    """The reasons of rows rejected while reading a file (`read_json_rows`'s), for `check_some_question`."""
    return (reject["reason"] for reject in rejects)


def check_some_question(where: str | Path, reasons: Iterable[str | None], fix: str = NOT_THE_RELEASE) -> None:
    """Raise unless some row of `where` is one its loader asks. `reasons` holds, row by row, the reason the
    loader would reject it, or None for a row it asks; it is read up to the first None. None at all (no
    row, or every one rejected) is a run that would answer nothing."""
    counts: Counter[str] = Counter()
    for reason in reasons:
        if reason is None:
            return
        counts[reason] += 1
    if not counts:
        raise BenchmarkError(f"{where}: no question rows; {fix}")
    found = ", ".join(f"{reason} {n}" for reason, n in counts.most_common())
    raise BenchmarkError(f"{where}: none of its {counts.total()} question rows can be asked ({found}); {fix}")

