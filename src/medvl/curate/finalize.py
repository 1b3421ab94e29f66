"""The finalize task: shard outputs → the release files, in global input order, then the report.

Generated lines of every shard are merged by input order (a resumed shard is not in order on
disk, so each shard is read through a sorted (order, byte offset) index — ints, not records), and
written to `alignment.jsonl`, `instruction.jsonl`, `concept_alignment.jsonl`, `self_instruct.jsonl`
(each written to a temporary file and renamed). `rejects.jsonl` collects every stage's rejects:
ingest and the filters (merged by input order), dedup and decontaminate (as those tasks wrote
them), generation.
"""

from __future__ import annotations

import heapq
import os
from collections import Counter
from pathlib import Path
from typing import IO, Any, Iterator

import orjson
from datatrove.data import DocumentsPipeline
from datatrove.pipeline.base import PipelineStep

from medvl.curate.config import CurateConfig
from medvl.curate.filters import FILTERS
from medvl.curate.store import OUTPUT_FILES, RunDirs, pack_order

__all__ = ["FinalizeStep", "iter_generated"]


def _indexed(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """Lines of one generated shard in input order (first line per row wins), via an int index."""
    index: dict[int, tuple[int, int]] = {}  # packed input order -> (byte offset, length)
    with path.open("rb") as handle:
        offset = 0
        for line in handle:
            if line.endswith(b"\n"):
                index.setdefault(pack_order(orjson.loads(line)["order"]), (offset, len(line)))
            offset += len(line)
        for order in sorted(index):
            start, size = index[order]
            handle.seek(start)
            yield order, orjson.loads(handle.read(size))


def iter_generated(dirs: RunDirs, n_shards: int) -> Iterator[dict[str, Any]]:
    shards = [_indexed(dirs.generated_shard(r)) for r in range(n_shards) if dirs.generated_shard(r).exists()]
    for _, line in heapq.merge(*shards, key=lambda t: t[0]):
        yield line


def _iter_rejects(path: Path) -> Iterator[tuple[list[int], dict[str, Any]]]:
    with path.open("rb") as handle:
        for line in handle:
            if line.endswith(b"\n"):
                item = orjson.loads(line)
                yield item.get("order") or [0, 0, 0], item


class _AtomicLines:
    """JSON lines written to `<path>.tmp`, renamed onto `path` by `commit()`."""

    def __init__(self, path: Path):
        self.path, self.tmp = path, path.with_name(f".{path.name}.tmp")
        self.handle: IO[bytes] = self.tmp.open("wb")
        self.count = 0

    def write(self, item: dict[str, Any]) -> None:
        self.handle.write(orjson.dumps(item, option=orjson.OPT_APPEND_NEWLINE))
        self.count += 1

    def commit(self) -> int:
        self.handle.flush()
        os.fsync(self.handle.fileno())
        self.handle.close()
        os.replace(self.tmp, self.path)
        return self.count


def write_outputs(dirs: RunDirs, n_shards: int) -> dict[str, Any]:
    """Write the release files and rejects.jsonl; return counts for the report."""
    outputs = {kind: _AtomicLines(dirs.out / name) for kind, name in OUTPUT_FILES.items()}
    rejects = _AtomicLines(dirs.out / "rejects.jsonl")
    reasons: Counter[str] = Counter()
    modality_out: dict[str, Counter[str]] = {kind: Counter() for kind in OUTPUT_FILES}
    licence_out: Counter[str] = Counter()
    usage: dict[str, Counter[str]] = {}

    def reject(item: dict[str, Any]) -> None:
        rejects.write(item)
        reasons[f"{item['stage']}/{item['reason']}"] += 1

    prepare_files = sorted(p for stage in ("ingest", *FILTERS) for p in dirs.rejects.glob(f"{stage}-*.jsonl"))
    for _, item in heapq.merge(*(_iter_rejects(p) for p in prepare_files), key=lambda t: t[0]):
        reject(item)
    for gather in ("dedup", "decontaminate"):
        path = dirs.rejects / f"{gather}-00000.jsonl"
        if path.exists():
            for _, item in _iter_rejects(path):
                reject(item)
    processed = 0
    for line in iter_generated(dirs, n_shards):
        processed += 1
        modality = str(line.get("modality") or "other")
        for kind, records in line["outputs"].items():
            for record in records:
                outputs[kind].write(record)
                modality_out[kind][modality] += 1
                licence_out[str(record.get("licence") or "unknown")] += 1
        for item in line["rejects"]:
            reject(item)
        for kind, used in line["usage"].items():
            totals = usage.setdefault(kind, Counter())
            totals["replies"] += 1
            totals["cached_at_first_use"] += int(bool(used["cached"]))
            totals["prompt_tokens"] += used["prompt_tokens"]
            totals["completion_tokens"] += used["completion_tokens"]
    counts = {kind: writer.commit() for kind, writer in outputs.items()}
    rejects.commit()
    return {
        "generated": counts,
        "generation_inputs": processed,
        "rejects": dict(sorted(reasons.items())),
        "modality_generated": {k: dict(sorted(v.items())) for k, v in modality_out.items()},
        "licence_generated": dict(sorted(licence_out.items())),
        "llm_tokens": {k: dict(v) for k, v in usage.items()},
    }


class FinalizeStep(PipelineStep):
    """The last task (tasks=1): release files, rejects, report."""

    name = "finalize"
    type = "📦 - FINALIZE"

    def __init__(self, dirs: RunDirs, n_shards: int, config: CurateConfig):
        super().__init__()
        self.dirs, self.n_shards, self.config = dirs, n_shards, config

    def run(self, data: DocumentsPipeline = None, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        from medvl.curate.report import write_report

        counts = write_outputs(self.dirs, self.n_shards)
        write_report(self.dirs, self.n_shards, self.config, counts)
        return iter(())
