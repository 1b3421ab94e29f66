"""De-duplication: exact (image bytes, normalised caption), near images, and semantic captions.

Runs as one gather task over every prepared shard in global input order; the first record of a
duplicate group is kept and each dropped one is a reject whose `kept` field and detail name the
kept one.

- Exact: sha256 of each image file's bytes; sha1 of the caption lower-cased to word tokens.
- Near image (`medvl.benchmarks.near_images`): each image's descriptor (computed by the image filter)
  is searched among the kept images; a candidate is confirmed on the descriptor alone when nearly
  identical, else by ORB keypoints on the two image files. Robust to resizing, re-encoding,
  brightness, crops up to 10%, rotations up to 5 degrees and horizontal flips.
- Semantic caption: the caption embeddings (written during prepare) of the kept records go into a
  faiss inner-product index (exact up to 50k records, an inverted file beyond); every caption's `candidates` nearest earlier captions with cosine
  >= 1 - eps are candidates, and a candidate is merged only when the two captions state the same
  clinical facts (`medvl.curate.clinical`: numbers and times, side, pre/post, negation, case and
  figure indices, modality, anatomy); each refusal is counted by kind. Changing eps, candidates or
  the check re-runs this task only: the embeddings are part of the prepare stage.

Memory holds signatures, never records: image digests, image descriptors (1.5 KB per image),
7 fact digests per kept caption, and the embeddings stay in memory-mapped side files.
A record with several images is a duplicate when any of its images matches a kept image.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from datatrove.data import DocumentsPipeline
from datatrove.pipeline.base import PipelineStep

from medvl.curate.clinical import fact_signature, signature_difference
from medvl.benchmarks.near_images import NearImageConfig
from medvl.curate.config import DedupConfig, SemanticConfig
from medvl.curate.store import (
    REJECT_PROVENANCE,
    EmbeddingShards,
    RunDirs,
    iter_prepared,
    pack_order,
    reject_provenance,
)
from medvl.curate.vocab import tokenize
from medvl.io.files import atomic_write_json
from medvl.io.jsonl import RejectLog

__all__ = [
    "caption_key",
    "semantic_candidates",
    "semantic_merges",
    "DedupStep",
    "dedup_corpus",
    "dedup_dropped",
]

log = logging.getLogger("medvl.curate")


def caption_key(caption: str) -> int:
    """Exact-caption signature: 64 bits of sha1 over the lower-cased word tokens."""
    digest = hashlib.sha1(" ".join(tokenize(caption)).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big")


def semantic_candidates(vectors: np.ndarray, eps: float, k: int) -> list[list[tuple[int, float]]]:
    """Per row i, its earlier rows j < i with cosine >= 1 - eps, best first (at most k).

    Rows are L2-normalised; exact search up to 50k rows, an inverted file (`ivf_index`) beyond.
    """
    import faiss

    from medvl.benchmarks.near_images import ivf_index

    n = len(vectors)
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    index = ivf_index(vectors) if n > 50_000 else faiss.IndexFlatIP(vectors.shape[1])
    index.add(vectors)
    threshold = 1.0 - eps
    out: list[list[tuple[int, float]]] = []
    for start in range(0, n, 8192):
        sims, ids = index.search(vectors[start : start + 8192], min(n, 2 * k + 1))
        for offset, (row_sims, row_ids) in enumerate(zip(sims, ids)):
            i = start + offset
            found = [(int(j), float(s)) for j, s in zip(row_ids, row_sims) if 0 <= j < i and s >= threshold]
            out.append(found[:k])
    return out


def semantic_merges(
    candidates: list[list[tuple[int, float]]], facts: list[np.ndarray] | None = None, refused: Counter[str] | None = None
) -> list[tuple[int, int, float]]:
    """(row, earlier row it merges into, cosine) per semantic duplicate, in row order.

    A row merges into its first candidate (`semantic_candidates`) that is not itself merged; with
    `facts` (`fact_signature` per row), only into one stating the same clinical facts, each refusal
    counted by kind in `refused`.
    """
    refused = Counter() if refused is None else refused
    merged: set[int] = set()
    found = []
    for i, pairs in enumerate(candidates):
        for j, sim in pairs:
            if j in merged:
                continue
            difference = None if facts is None else signature_difference(facts[i], facts[j])
            if difference is not None:
                refused[difference] += 1
                continue
            merged.add(i)
            found.append((i, j, sim))
            break
    return found


@dataclass
class DedupStats:
    seen: int = 0
    kept: int = 0
    dropped: dict[str, int] = field(default_factory=dict)
    refused: Counter[str] = field(default_factory=Counter)
    unreadable_images: int = 0


@dataclass
class _Kept:
    """What the semantic pass needs of each record kept by the exact and near-image passes."""

    ids: list[str] = field(default_factory=list)
    meta: list[tuple[Any, ...]] = field(default_factory=list)  # reject provenance values (REJECT_PROVENANCE)
    shard: list[int] = field(default_factory=list)
    row: list[int] = field(default_factory=list)
    facts: list[np.ndarray] = field(default_factory=list)


def dedup_corpus(dirs: RunDirs, n_shards: int, config: DedupConfig, rejects: RejectLog) -> DedupStats:
    """Write a reject line per duplicate; return the counts. Survivors are what is not rejected.

    Pass 1 streams the shards for ids and exact duplicates; pass 2 searches the surviving images'
    descriptors all at once and confirms candidates in input order; pass 3 is the semantic pass.
    Each reject names the kept record its group ends at.
    """
    stats = DedupStats()
    seen_ids: dict[str, str] = {}
    images: dict[bytes, int] = {}
    captions: dict[int, int] = {}
    kept = _Kept()
    # (dropped, reason, kept, detail with {kept}); dropped: a kept index, or (id, provenance) of a record
    # never kept (its own: one id can be dropped several times, each time at another input position)
    drops: list[tuple[int | tuple[str, tuple[Any, ...]], str, int | str, str]] = []
    signed = _Signed()
    for rank, row, record in iter_prepared(dirs, n_shards):
        stats.seen += 1
        record_id, meta = record["id"], record["metadata"]
        summary = tuple(reject_provenance(meta).values())  # a tuple: one is kept per record
        infos = meta.get("images_info", [])
        if record_id in seen_ids:
            used_by = f"id already used by a record of {seen_ids[record_id]}"
            drops.append(((record_id, summary), "duplicate_id", record_id, used_by))
            continue
        seen_ids[record_id] = meta.get("source", "")
        digests = [bytes.fromhex(i["sha256"])[:16] for i in infos if "sha256" in i]
        hit = next((images[d] for d in digests if d in images), None) if config.exact_image else None
        key = caption_key(record["text"])
        if hit is None and config.exact_caption:
            hit, reason = captions.get(key), "exact_caption"
        else:
            reason = "exact_image"
        if hit is not None:
            drops.append(((record_id, summary), reason, hit, "duplicate of {kept}"))
            continue
        index = len(kept.ids)
        kept.ids.append(record_id)
        kept.meta.append(summary)
        kept.shard.append(rank)
        kept.row.append(row)
        if config.semantic.enabled and config.semantic.verify:
            kept.facts.append(fact_signature(record["text"]))
        for d in digests:
            images.setdefault(d, index)
        captions.setdefault(key, index)
        if config.near_image.enabled:
            signed.extend(index, record, infos)
    del images, captions, seen_ids
    near = _near_image_pass(signed, config.near_image, stats) if config.near_image.enabled else {}
    for index, (kept_index, detail) in near.items():
        drops.append((index, "near_image", kept_index, detail))
    root = {index: kept_index for index, (kept_index, _) in near.items()}
    semantic = _semantic_pass(dirs, n_shards, config.semantic, kept, stats, set(root)) if config.semantic.enabled else []
    threshold = 1 - config.semantic.eps
    for index, kept_index, sim in semantic:
        root[index] = kept_index
        drops.append((index, "semantic_caption", kept_index, f"caption cosine {sim:.4f} >= {threshold:.4f} with {{kept}}"))

    def final(index: int | str) -> str:
        if isinstance(index, str):
            return index
        while index in root:
            index = root[index]
        return kept.ids[index]

    for dropped, reason, kept_at, detail in drops:
        if isinstance(dropped, tuple):
            record_id, provenance = dropped
        else:
            record_id, provenance = kept.ids[dropped], kept.meta[dropped]
        kept_id = final(kept_at)
        stats.dropped[reason] = stats.dropped.get(reason, 0) + 1
        rejects.reject(record_id, "dedup", reason, detail.format(kept=kept_id), kept=kept_id,
                       **dict(zip(REJECT_PROVENANCE, provenance)))
    stats.kept = len(kept.ids) - len(root)
    return stats


@dataclass
class _Signed:
    """The descriptors (float16) of the images of records kept by pass 1, with their record and file."""

    owner: list[int] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)
    descriptors: list[np.ndarray] = field(default_factory=list)

    def extend(self, index: int, record: dict[str, Any], infos: list[dict[str, Any]]) -> None:
        from medvl.benchmarks.near_images import decode_descriptor

        paths = [m.get("path") or m.get("url") for m in record.get("media", [])]
        for info, path in zip(infos, paths):
            if "signature" in info:
                self.owner.append(index)
                self.paths.append(path)
                self.descriptors.append(decode_descriptor(info["signature"]).astype(np.float16))


def _near_image_pass(signed: _Signed, config: NearImageConfig, stats: DedupStats) -> dict[int, tuple[int, str]]:
    """Kept-record index -> (the earlier kept record it repeats, detail), in input order."""
    if len(signed.owner) < 2:
        return {}
    matcher = config.matcher()
    descriptors = np.stack(signed.descriptors).astype(np.float32)
    matcher.add_many(descriptors, list(range(len(signed.owner))), signed.paths)
    neighbours = matcher.index.search_many(descriptors, config.candidates + 1)
    dropped: dict[int, tuple[int, str]] = {}
    for image, candidates in enumerate(neighbours):
        record = signed.owner[image]
        if record in dropped:
            continue

        def earlier_kept(other: int, record: int = record) -> bool:
            owner = signed.owner[other]
            return owner < record and owner not in dropped

        match = matcher.confirm(candidates, signed.paths[image], earlier_kept)
        if match is not None:
            dropped[record] = (signed.owner[match.payload], f"same picture as {{kept}} ({match.describe()})")
    stats.unreadable_images = matcher.unreadable
    return dropped


def _semantic_pass(
    dirs: RunDirs, n_shards: int, config: SemanticConfig, kept: _Kept, stats: DedupStats, already: set[int]
) -> list[tuple[int, int, float]]:
    """(record index, kept record index, cosine) of each confirmed semantic duplicate, in input order,
    among the records the earlier passes kept (`already`: those the near-image pass dropped)."""
    alive = np.asarray([i for i in range(len(kept.ids)) if i not in already], dtype=np.int64)
    if len(alive) < 2:
        return []
    emb = EmbeddingShards(dirs, n_shards)
    vectors = emb.rows(np.asarray(kept.shard, dtype=np.int32)[alive], np.asarray(kept.row, dtype=np.int64)[alive])
    candidates = semantic_candidates(vectors, config.eps, config.candidates)
    facts = [kept.facts[i] for i in alive] if config.verify else None
    return [(int(alive[i]), int(alive[j]), sim) for i, j, sim in semantic_merges(candidates, facts, stats.refused)]


class DedupStep(PipelineStep):
    """The dedup gather task (run with tasks=1): writes `rejects/dedup-00000.jsonl` and its counts."""

    name = "dedup"
    type = "🫂 - DEDUP"

    def __init__(self, dirs: RunDirs, n_shards: int, config: DedupConfig):
        super().__init__()
        self.dirs, self.n_shards, self.config = dirs, n_shards, config

    def run(self, data: DocumentsPipeline = None, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        path = self.dirs.rejects / "dedup-00000.jsonl"
        path.unlink(missing_ok=True)
        with RejectLog(path) as rejects:
            stats = dedup_corpus(self.dirs, self.n_shards, self.config, rejects)
        for reason, count in stats.dropped.items():
            self.stat_update(f"dropped_{reason}", value=count)
        self.stat_update("total", value=stats.seen)
        self.stat_update("forwarded", value=stats.kept)
        atomic_write_json(
            self.dirs.summary("dedup"),
            {
                "seen": stats.seen,
                "kept": stats.kept,
                "dropped": stats.dropped,
                "semantic_refused": dict(sorted(stats.refused.items())),
                "near_image_unreadable": stats.unreadable_images,
            },
        )
        return iter(())


def dedup_dropped(dirs: RunDirs, stages: tuple[str, ...] = ("dedup", "decontaminate")) -> set[int]:
    """Packed input positions (`pack_order`) of the records the given gather tasks (by default dedup and
    decontaminate) dropped. A task asks only for the stages before it: its own file is a previous attempt's."""
    dropped: set[int] = set()
    for stage in stages:
        path = dirs.rejects / f"{stage}-00000.jsonl"
        if path.exists():
            with path.open("r", encoding="utf-8") as handle:
                dropped |= {pack_order(json.loads(line)["order"]) for line in handle if line.strip()}
    return dropped
