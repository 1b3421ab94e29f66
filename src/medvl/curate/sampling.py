"""Sampling: which de-duplicated records go on to generation, balanced by class, seeded.

LLaVA-Med built its 60K self-instruct set by cycling over its five domains (`zip_longest` over the
domain lists) until 60,000; medvl generalises that: records are grouped by `sample.by` (domain,
modality or source; `none` = one group), each group is ordered by a seeded random priority
(`shuffle: true`) or by input order (`shuffle: false`, LLaVA-Med's behaviour), cut to
`cap_per_class`, and the groups are then taken round-robin (in `classes` order) until `max_total`.

Streaming: with no cap and no total every survivor is selected as it streams past; otherwise only
the best `min(cap, max_total)` candidates of each class are held (heaps), never the corpus.
The result is one file per prepared shard, `selected/<rank>.json`, listing the selected rows.
"""

from __future__ import annotations

import hashlib
import heapq
import itertools
from collections import Counter, defaultdict
from typing import Any

from datatrove.data import DocumentsPipeline
from datatrove.pipeline.base import PipelineStep

from medvl.curate.config import SampleConfig
from medvl.curate.dedup import dedup_dropped
from medvl.curate.store import RunDirs, iter_prepared, pack_order
from medvl.io.files import atomic_write_json

__all__ = ["select", "SampleStep", "record_class"]


def record_class(record: dict[str, Any], by: str) -> str:
    if by == "none":
        return "all"
    return str(record["metadata"].get(by) or "unknown")


def _priority(seed: int, record_id: str, packed: int, shuffle: bool) -> int:
    if not shuffle:
        return packed
    digest = hashlib.blake2b(f"{seed}:{packed}:{record_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def select(candidates: Any, config: SampleConfig) -> tuple[dict[int, list[int]], dict[str, Any]]:
    """Pick from an iterable of (shard, row, record); return ({shard: rows}, per-class counts)."""
    limit = min(x for x in (config.cap_per_class, config.max_total, float("inf")) if x is not None)
    available: Counter[str] = Counter()
    chosen: dict[int, list[int]] = defaultdict(list)
    heaps: dict[str, list[tuple[int, int, int]]] = defaultdict(list)
    allowed = set(config.classes) if config.classes else None
    for shard, row, record in candidates:
        name = record_class(record, config.by)
        available[name] += 1
        if allowed is not None and name not in allowed:
            continue
        if limit == float("inf"):
            chosen[shard].append(row)
            continue
        priority = _priority(
            config.seed, record["id"], pack_order(record["metadata"]["order"]), config.shuffle
        )
        heap = heaps[name]
        item = (-priority, shard, row)  # max-heap on priority: the worst kept candidate is heap[0]
        if len(heap) < limit:
            heapq.heappush(heap, item)
        elif item > heap[0]:
            heapq.heapreplace(heap, item)
    selected: Counter[str] = Counter()
    if heaps:
        order = config.classes or sorted(heaps)
        ranked = [sorted(heaps.get(name, []), reverse=True) for name in order]
        taken = 0
        for round_items in itertools.zip_longest(*ranked):
            for name, item in zip(order, round_items):
                if item is None or (config.max_total is not None and taken >= config.max_total):
                    continue
                chosen[item[1]].append(item[2])
                selected[name] += 1
                taken += 1
    else:
        selected = Counter({name: n for name, n in available.items() if allowed is None or name in allowed})
    counts = {
        "by": config.by,
        "available": dict(sorted(available.items())),
        "selected": dict(sorted(selected.items())),
        "not_selected": sum(available.values()) - sum(selected.values()),
    }
    return {shard: sorted(rows) for shard, rows in chosen.items()}, counts


class SampleStep(PipelineStep):
    """The sampling gather task (tasks=1): survivors of dedup → `selected/<rank>.json` per shard."""

    name = "sample"
    type = "🎲 - SAMPLE"

    def __init__(self, dirs: RunDirs, n_shards: int, config: SampleConfig):
        super().__init__()
        self.dirs, self.n_shards, self.config = dirs, n_shards, config

    def run(self, data: DocumentsPipeline = None, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        dropped = dedup_dropped(self.dirs)
        survivors = (
            (shard, row, record)
            for shard, row, record in iter_prepared(self.dirs, self.n_shards)
            if pack_order(record["metadata"]["order"]) not in dropped
        )
        chosen, counts = select(survivors, self.config)
        for shard in range(self.n_shards):
            atomic_write_json(self.dirs.selected_shard(shard), chosen.get(shard, []), indent=None)
        atomic_write_json(self.dirs.summary("sample"), counts)
        self.stat_update("total", value=sum(counts["available"].values()))
        self.stat_update("forwarded", value=sum(counts["selected"].values()))
        self.stat_update("dropped_not_selected", value=counts["not_selected"])
        return iter(())
