"""The optional decontaminate stage of `medvl curate run`: a gather task between dedup and sampling.

It checks every record that survived dedup against the benchmark items of
`_work/decontaminate/reference.jsonl` (written by `run_curation` from the items its caller loaded)
with `medvl.benchmarks.contamination`, using the image descriptors the image filter already computed,
and the caption and mentions as the record's text. A contaminated record is a reject
(`decontaminate/benchmark_image` or `benchmark_text`, the matched items in `matched`), so sampling
skips it; `OUT/decontamination/` holds the report (counts and % per benchmark, pairs side by side).
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

from datatrove.data import DocumentsPipeline
from datatrove.pipeline.base import PipelineStep

from medvl.curate.config import DecontaminateConfig
from medvl.curate.store import RunDirs, iter_prepared, pack_order, reject_provenance
from medvl.io.files import atomic_write_json, atomic_write_text
from medvl.io.jsonl import RejectLog, iter_appended

__all__ = ["DecontaminateStep", "write_reference", "read_reference"]


def write_reference(path: Path, items: list[Any]) -> None:
    """The benchmark items, one JSON line each (what the stage reads, and what its fingerprint hashes)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, "".join(json.dumps(asdict(item), sort_keys=True) + "\n" for item in items))


def read_reference(path: Path) -> list[Any]:
    from medvl.benchmarks.contamination import ReferenceItem

    return [ReferenceItem(**{**row, "images": tuple(row["images"])}) for row in iter_appended(path)]


class DecontaminateStep(PipelineStep):
    """The decontaminate gather task (tasks=1); a no-op when `decontaminate.enabled` is false."""

    name = "decontaminate"
    type = "🧪 - DECONTAMINATE"

    def __init__(self, dirs: RunDirs, n_shards: int, config: DecontaminateConfig):
        super().__init__()
        self.dirs, self.n_shards, self.config = dirs, n_shards, config

    def run(self, data: DocumentsPipeline = None, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        if not self.config.enabled:
            return iter(())
        from medvl.benchmarks.contamination import Decontaminator, TrainingSample, summarise
        from medvl.benchmarks.near_images import decode_descriptor
        from medvl.curate.decontaminate_report import write_decontamination_report
        from medvl.curate.dedup import dedup_dropped

        reference = read_reference(self.dirs.decontaminate_reference)
        checker = Decontaminator(
            reference,
            ngram=self.config.ngram,
            min_text_overlap=self.config.min_text_overlap,
            image_matcher=self.config.image.matcher(),
        )
        dropped = dedup_dropped(self.dirs, stages=("dedup",))  # not this task's own file from a killed attempt
        path = self.dirs.rejects / "decontaminate-00000.jsonl"
        path.unlink(missing_ok=True)
        seen, matches = 0, []
        with RejectLog(path) as rejects:
            for _, _, record in iter_prepared(self.dirs, self.n_shards):
                meta = record["metadata"]
                if pack_order(meta["order"]) in dropped:
                    continue
                seen += 1
                infos = meta.get("images_info", [])
                sample = TrainingSample(
                    record["id"],
                    [m.get("path") or m.get("url") for m in record.get("media", [])],
                    [record["text"], *meta.get("mentions", [])],
                    [decode_descriptor(i["signature"]) if "signature" in i else None for i in infos],
                )
                found = checker.check(sample)
                if not found:
                    continue
                matches.append((record["id"], found))
                first = found[0]
                rejects.reject(
                    record["id"],
                    "decontaminate",
                    f"benchmark_{first.kind}",
                    f"{first.benchmark}/{first.split} item {first.item_ids[0]} ({first.distance()})",
                    matched=[c.to_dict() for c in found],
                    **reject_provenance(meta),
                )
        summary = summarise(reference, [found for _, found in matches], seen)
        summary["benchmark_images_unreadable"] = checker.missing_images[:50]
        write_decontamination_report(self.dirs.decontamination, summary, matches, reference)
        atomic_write_json(self.dirs.summary("decontaminate"), {"seen": seen, "kept": seen - len(matches), **summary})
        self.stat_update("total", value=seen)
        self.stat_update("forwarded", value=seen - len(matches))
        for kind in ("image", "text"):
            count = sum(1 for _, found in matches if found[0].kind == kind)
            if count:
                self.stat_update(f"dropped_benchmark_{kind}", value=count)
        return iter(())
