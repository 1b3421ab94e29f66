"""The output folder of a curation run and the intermediate files its stages pass on.

    OUT/
      alignment.jsonl  instruction.jsonl      PubMedVision-style Alignment / Instruction VQA
      concept_alignment.jsonl                 LLaVA-Med stage-1 (caption as answer)
      self_instruct.jsonl                     LLaVA-Med stage-2 (blinded multi-turn)
      images/                                 image root: records' `image` paths are relative to it
      rejects.jsonl                           every dropped input with stage, reason and detail
      decontamination/                        report.json/.html/.png (when decontaminate.enabled)
      report.json  report.md  report.png      counts per stage, reason and modality; LLM usage/cost
      config.yaml                             the resolved config the run used
      _work/                                  intermediate state (resume); safe to delete when done
        logs/<stage>/                         datatrove logging dir: completions/, stats/, logs/
        prepared/<rank>.jsonl, emb-<rank>.f16 records that passed the filters (+ caption embeddings)
        rejects/<stage>-<rank>.jsonl          rejects per stage and task
        decontaminate/reference.jsonl         the benchmark items decontamination checks against
        selected/<rank>.json                  ids chosen by dedup + sampling, per shard
        generate/<rank>.jsonl                 one durable line per generated record (resume unit)
        llm_usage/<rank>.jsonl                what each generation task invocation sent and spent (changes, each second)
        llm-cache/                            the LLM client's response cache (default location)

Shard files are each in input order; `iter_prepared` merges them into the global order (the
`order` key of every record), so outputs do not depend on the number of tasks. Every stage's reject
lines carry the same provenance of the dropped record, `reject_provenance(metadata)`.
"""

from __future__ import annotations

import heapq
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np

from medvl.errors import UserError
from medvl.io.jsonl import iter_appended

__all__ = [
    "CurateIncomplete",
    "RunDirs",
    "iter_prepared",
    "EmbeddingShards",
    "OUTPUT_FILES",
    "REJECT_PROVENANCE",
    "pack_order",
    "reject_provenance",
]


class CurateIncomplete(UserError, RuntimeError):
    """Some tasks or records did not finish this time; running the same command again resumes
    (`medvl curate run` exits 3)."""

    exit_code = 3


# what a curation reject line keeps of its record's metadata (None where unknown): where the record came
# from, its licence and modality (counted in the report), and its input `order` (the merge key)
REJECT_PROVENANCE = ("source", "pmcid", "figure_id", "licence", "modality", "order")


def reject_provenance(metadata: dict[str, Any]) -> dict[str, Any]:
    """The provenance fields of a reject line (`REJECT_PROVENANCE`) from a record's metadata."""
    return {key: metadata.get(key) for key in REJECT_PROVENANCE}


OUTPUT_FILES = {
    "alignment": "alignment.jsonl",
    "instruction": "instruction.jsonl",
    "concept": "concept_alignment.jsonl",
    "self_instruct": "self_instruct.jsonl",
}


@dataclass(frozen=True)
class RunDirs:
    out: Path

    @property
    def work(self) -> Path:
        return self.out / "_work"

    @property
    def images(self) -> Path:
        return self.out / "images"

    def logs(self, stage: str) -> Path:
        return self.work / "logs" / stage

    @property
    def prepared(self) -> Path:
        return self.work / "prepared"

    @property
    def rejects(self) -> Path:
        return self.work / "rejects"

    @property
    def decontaminate_reference(self) -> Path:
        return self.work / "decontaminate" / "reference.jsonl"

    @property
    def selected(self) -> Path:
        return self.work / "selected"

    @property
    def generated(self) -> Path:
        return self.work / "generate"

    @property
    def decontamination(self) -> Path:
        return self.out / "decontamination"

    def summary(self, stage: str) -> Path:
        """The counts a gathering stage (dedup, decontaminate, sample) leaves for the report."""
        return self.work / f"{stage}.json"

    def stage_outputs(self, stage: str, filters: Iterable[str] = ()) -> list[Path]:
        """What `stage` writes, removed before it runs again from scratch (`filters`: the names of the
        prepare stage's filters, whose rejects it writes)."""
        gathered = [*self.rejects.glob(f"{stage}-*"), self.summary(stage)]
        prepare_rejects = [path for name in ("ingest", *filters) for path in self.rejects.glob(f"{name}-*")]
        return {
            "prepare": [self.prepared, *prepare_rejects],
            "dedup": gathered,
            "decontaminate": [*gathered, self.decontamination],
            "sample": [self.selected, self.summary(stage)],
            "generate": [self.generated, self.images],
        }.get(stage, [])

    @property
    def llm_usage(self) -> Path:
        return self.work / "llm_usage"

    @property
    def llm_cache(self) -> Path:
        return self.work / "llm-cache"

    def prepared_shard(self, rank: int) -> Path:
        return self.prepared / f"{rank:05d}.jsonl"

    def embedding_shard(self, rank: int) -> Path:
        return self.prepared / f"emb-{rank:05d}.f16"

    def selected_shard(self, rank: int) -> Path:
        return self.selected / f"{rank:05d}.json"

    def generated_shard(self, rank: int) -> Path:
        return self.generated / f"{rank:05d}.jsonl"


def pack_order(order: list[int]) -> int:
    """A record's global position [source, file, item] as one int (sorts the same way)."""
    source, file, item = order
    return (source << 52) | (file << 32) | item


def iter_prepared(dirs: RunDirs, n_shards: int) -> Iterator[tuple[int, int, dict[str, Any]]]:
    """(shard, row, record) over every prepared shard, merged into the global input order."""

    def shard(rank: int) -> Iterator[tuple[list[int], int, int, dict[str, Any]]]:
        for row, record in enumerate(iter_appended(dirs.prepared_shard(rank))):
            yield record["metadata"]["order"], rank, row, record

    for _, rank, row, record in heapq.merge(*(shard(r) for r in range(n_shards)), key=lambda t: t[0]):
        yield rank, row, record


class EmbeddingShards:
    """Read-only memory maps of the caption-embedding side files (float16, L2-normalised rows)."""

    def __init__(self, dirs: RunDirs, n_shards: int):
        meta = json.loads((dirs.prepared / "embedding.json").read_text(encoding="utf-8"))
        self.dim = int(meta["dim"])
        self.shards = []
        for rank in range(n_shards):
            path = dirs.embedding_shard(rank)
            size = path.stat().st_size if path.exists() else 0
            rows = size // (2 * self.dim)
            self.shards.append(
                np.memmap(path, dtype=np.float16, mode="r", shape=(rows, self.dim)) if rows else None
            )

    def rows(self, shards: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """float32 embeddings of (shard, row) pairs, in the given order."""
        out = np.empty((len(rows), self.dim), dtype=np.float32)
        for rank in np.unique(shards):
            mask = shards == rank
            out[mask] = self.shards[int(rank)][rows[mask]]
        return out
