"""Ingest: figure–caption inputs of five formats → one normalised record each, as a datatrove Document.

`SourceReader` is the pipeline's reader: every configured source, this task's shard, in global
input order. `check_sources` refuses a source path that names no input before a run starts. What a
record holds: `medvl.curate.ingest_document`; the formats, their files and fields:
`medvl.curate.ingest_formats`.

A malformed input never stops the run: it becomes a Document flagged with `ingest_error`, which the
`IngestCheck` filter turns into a reject with its reason; a caption holding bytes that are not UTF-8
is one (`malformed_line`, "not UTF-8 text (byte 0xe9 at column 31)"), not a caption silently
changed. `path` may be a glob (`shards/*.jsonl`).
Sharding: with at least as many files as tasks a task reads whole files (`index % world_size ==
rank`), otherwise every task reads its own items of each file, parsing only those.
"""

from __future__ import annotations

import glob
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

from datatrove.data import Document, DocumentsPipeline
from datatrove.pipeline.base import PipelineStep
from tqdm.auto import tqdm

from medvl.curate.ingest_document import make_document
from medvl.curate.ingest_formats import PARSERS, IngestError, RawItem, file_items
from medvl.errors import UserError

if TYPE_CHECKING:
    from medvl.curate.config import SourceConfig

__all__ = ["SourceMissing", "SourceReader", "check_sources"]


class SourceMissing(UserError, FileNotFoundError):
    """A configured source path that names no input of its format (checked before a run starts)."""


def check_sources(sources: list[SourceConfig]) -> None:
    """Raise `SourceMissing` for a source path that does not exist, or that is a folder where its format
    reads a file (only `roco` and `folder` read folders); glob patterns match what they match."""
    for index, source in enumerate(sources):
        path = Path(source.path)
        if _is_pattern(source.path):
            continue
        where = f"sources[{index}].path (format {source.format})"
        if not path.exists():
            raise SourceMissing(f"{where}: {path} does not exist; fix the path (a relative one is taken from "
                                "the config file's folder, or from the working directory in an override)")
        if path.is_dir() and source.format not in ("roco", "folder"):
            raise SourceMissing(f"{where}: {path} is a folder; give the file in it (this format reads a "
                                ".jsonl, .json, .csv or .tsv file)")


class SourceReader(PipelineStep):
    """datatrove reader: every configured source, this task's shard, in global input order."""

    name = "ingest"
    type = "📖 - READER"

    def __init__(self, sources: list[SourceConfig], limit: int | None = None):
        super().__init__()
        self.sources = sources
        self.limit = limit

    def run(self, data: DocumentsPipeline = None, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        if data:
            yield from data
        with tqdm(desc=f"prepare task {rank}", unit="record", mininterval=1.0) as bar:
            for source_index, source in enumerate(self.sources):
                label = source.name or Path(source.path).stem
                for item in _iter_items(source, rank, world_size, self.limit):
                    order = [source_index, item.file_index, item.item_index]
                    with self.track_time():
                        doc = _normalise(source, label, order, item)
                    self.stat_update("read")
                    bar.update(1)
                    yield doc


def _normalise(source: SourceConfig, label: str, order: list[int], item: RawItem) -> Document:
    if isinstance(item.raw, IngestError):  # the reader's: its detail names the place
        return _rejected(label, order, item.raw)
    try:
        return PARSERS[source.format](source, label, order, item.raw, item.file)
    except IngestError as exc:
        return _rejected(label, order, IngestError(exc.reason, f"{item.where}: {exc.detail}"))


def _rejected(label: str, order: list[int], error: IngestError) -> Document:
    doc = make_document(f"{label}:{':'.join(map(str, order[1:]))}", [], "", order=order, source=label)
    doc.metadata["ingest_error"] = [error.reason, error.detail]
    return doc


def _is_pattern(path: str) -> bool:
    return any(ch in path for ch in "*?[")


def _source_files(source: SourceConfig) -> list[Path]:
    if _is_pattern(source.path):
        return sorted(Path(p) for p in glob.glob(source.path))
    return [Path(source.path)]


def _iter_items(source: SourceConfig, rank: int, world_size: int, limit: int | None) -> Iterator[RawItem]:
    files = _source_files(source)
    by_file = len(files) >= world_size > 1
    for file_index, path in enumerate(files):
        if by_file and file_index % world_size != rank:
            continue
        shard = (0, 1) if by_file else (rank, world_size)
        for item in file_items(source, path, *shard):
            if limit is not None and item.item_index >= limit:
                break
            item.file_index = file_index
            yield item
