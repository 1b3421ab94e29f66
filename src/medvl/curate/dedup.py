"""De-duplication: exact (image bytes, normalised caption), near images, and semantic captions.

Runs as one gather task over every prepared shard in global input order; the first record of a
duplicate group is kept and each dropped one is a reject whose `kept` field and detail name the
kept one.

- Exact: sha256 of each image file's bytes; sha1 of the caption lower-cased to word tokens.
- Near image (`medvl.curate.near_images`): each image's descriptor (computed by the image filter)
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
from medvl.curate.config import DedupConfig, NearImageConfig, SemanticConfig
from medvl.curate.store import EmbeddingShards, RunDirs, iter_prepared, pack_order
from medvl.curate.vocab import tokenize
from medvl.io.files import atomic_write_json
from medvl.io.jsonl import RejectLog

__all__ = [
    "caption_key",
    "near_image_matcher",
    "semantic_candidates",
    "DedupStep",
    "dedup_corpus",
    "dedup_dropped",
]

log = logging.getLogger("medvl.curate")


def caption_key(caption: str) -> int:
    """Exact-caption signature: 64 bits of sha1 over the lower-cased word tokens."""
    digest = hashlib.sha1(" ".join(tokenize(caption)).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big")


def near_image_matcher(config: NearImageConfig) -> Any:
    from medvl.curate.near_images import NearImageMatcher

    return NearImageMatcher(
        candidates=config.candidates,
        min_similarity=config.min_similarity,
        exact_similarity=config.exact_similarity,
        min_inliers=config.min_inliers,
    )


def semantic_candidates(vectors: np.ndarray, eps: float, k: int) -> list[list[tuple[int, float]]]:
    """Per row i, its earlier rows j < i with cosine >= 1 - eps, best first (at most k).

    Rows are L2-normalised; exact search up to 50k rows, an inverted file (`ivf_index`) beyond.
    """
    import faiss

    from medvl.curate.near_images import ivf_index

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


@dataclass
class DedupStats:
    seen: int = 0
    kept: int = 0
    dropped: dict[str, int] = field(default_factory=dict)
    refused: Counter[str] = field(default_factory=Counter)


@dataclass
class _Kept:
    """What the semantic pass needs of each record kept by the exact and near-image passes."""

    ids: list[str] = field(default_factory=list)
    meta: list[tuple[Any, Any, Any, Any]] = field(default_factory=list)  # modality, source, licence, order
    shard: list[int] = field(default_factory=list)
    row: list[int] = field(default_factory=list)
    facts: list[np.ndarray] = field(default_factory=list)


def dedup_corpus(dirs: RunDirs, n_shards: int, config: DedupConfig, rejects: RejectLog) -> DedupStats:
    """Write a reject line per duplicate; return the counts. Survivors are what is not rejected."""
    stats = DedupStats()
    seen_ids: dict[str, str] = {}
    images: dict[bytes, str] = {}
    captions: dict[int, str] = {}
    matcher = near_image_matcher(config.near_image) if config.near_image.enabled else None
    kept = _Kept()

    def drop(record_id: str, meta: dict[str, Any], reason: str, kept_id: str, detail: str = "") -> None:
        stats.dropped[reason] = stats.dropped.get(reason, 0) + 1
        rejects.reject(
            record_id,
            "dedup",
            reason,
            detail or f"duplicate of {kept_id}",
            kept=kept_id,
            modality=meta.get("modality"),
            source=meta.get("source"),
            licence=meta.get("licence"),
            order=meta.get("order"),
        )

    for rank, row, record in iter_prepared(dirs, n_shards):
        stats.seen += 1
        record_id, meta = record["id"], record["metadata"]
        infos = meta.get("images_info", [])
        if record_id in seen_ids:
            drop(record_id, meta, "duplicate_id", record_id, f"id already used by a record of {seen_ids[record_id]}")
            continue
        seen_ids[record_id] = meta.get("source", "")
        digests = [bytes.fromhex(i["sha256"])[:16] for i in infos if "sha256" in i]
        if config.exact_image:
            hit = next((images[d] for d in digests if d in images), None)
            if hit is not None:
                drop(record_id, meta, "exact_image", hit)
                continue
        key = caption_key(record["text"])
        if config.exact_caption and key in captions:
            drop(record_id, meta, "exact_caption", captions[key])
            continue
        signed = _signed_images(record, infos) if matcher is not None else []
        match = next((m for m in (matcher.find(d, p) for d, p in signed) if m is not None), None) if signed else None
        if match is not None:
            kept_id = kept.ids[match.payload]
            drop(record_id, meta, "near_image", kept_id, f"same picture as {kept_id} ({match.describe()})")
            continue
        index = len(kept.ids)
        kept.ids.append(record_id)
        kept.meta.append((meta.get("modality"), meta.get("source"), meta.get("licence"), meta.get("order")))
        kept.shard.append(rank)
        kept.row.append(row)
        if config.semantic.enabled and config.semantic.verify:
            kept.facts.append(fact_signature(record["text"]))
        if config.exact_image:
            for d in digests:
                images.setdefault(d, record_id)
        if config.exact_caption:
            captions[key] = record_id
        for descriptor, path in signed:
            matcher.add(descriptor, index, path)
    del images, captions, matcher, seen_ids
    dropped = set()
    if config.semantic.enabled and len(kept.ids) > 1:
        for index, kept_index, sim in _semantic_pass(dirs, n_shards, config.semantic, kept, stats):
            modality, source, licence, order = kept.meta[index]
            meta = {"modality": modality, "source": source, "licence": licence, "order": order}
            threshold = 1 - config.semantic.eps
            detail = f"caption cosine {sim:.4f} >= {threshold:.4f} with {kept.ids[kept_index]}"
            drop(kept.ids[index], meta, "semantic_caption", kept.ids[kept_index], detail)
            dropped.add(index)
    stats.kept = len(kept.ids) - len(dropped)
    return stats


def _signed_images(record: dict[str, Any], infos: list[dict[str, Any]]) -> list[tuple[np.ndarray, str]]:
    from medvl.curate.near_images import decode_descriptor

    paths = [m.get("path") or m.get("url") for m in record.get("media", [])]
    return [(decode_descriptor(i["signature"]), p) for i, p in zip(infos, paths) if "signature" in i]


def _semantic_pass(
    dirs: RunDirs, n_shards: int, config: SemanticConfig, kept: _Kept, stats: DedupStats
) -> list[tuple[int, int, float]]:
    """(record index, kept record index, cosine) of each confirmed semantic duplicate, in input order."""
    emb = EmbeddingShards(dirs, n_shards)
    vectors = emb.rows(np.asarray(kept.shard, dtype=np.int32), np.asarray(kept.row, dtype=np.int64))
    candidates = semantic_candidates(vectors, config.eps, config.candidates)
    dropped: set[int] = set()
    found = []
    for i, pairs in enumerate(candidates):
        for j, sim in pairs:
            if j in dropped:
                continue
            if config.verify:
                difference = signature_difference(kept.facts[i], kept.facts[j])
                if difference is not None:
                    stats.refused[difference] += 1
                    continue
            dropped.add(i)
            found.append((i, j, sim))
            break
    return found


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
            self.dirs.work / "dedup.json",
            {
                "seen": stats.seen,
                "kept": stats.kept,
                "dropped": stats.dropped,
                "semantic_refused": dict(sorted(stats.refused.items())),
            },
        )
        return iter(())


def dedup_dropped(dirs: RunDirs) -> set[int]:
    """Packed input positions (`pack_order`) of the records the dedup and decontaminate tasks dropped."""
    dropped: set[int] = set()
    for name in ("dedup-00000.jsonl", "decontaminate-00000.jsonl"):
        path = dirs.rejects / name
        if path.exists():
            with path.open("r", encoding="utf-8") as handle:
                dropped |= {pack_order(json.loads(line)["order"]) for line in handle if line.strip()}
    return dropped
