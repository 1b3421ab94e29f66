"""De-duplication: exact (image bytes, normalised caption), perceptual (pHash) and semantic (SemDeDup).

Runs as one gather task over every prepared shard in global input order; the first record of a
duplicate group is kept and each dropped one is a reject whose detail names the kept one.
Memory holds only signatures: a dict of image/caption hashes, a pHash index, and for the semantic
step two int arrays per record (the embeddings stay in memory-mapped side files).

- Exact: sha256 of each image file's bytes; sha1 of the caption lower-cased to word tokens.
- Perceptual: 64-bit pHash within `max_distance` bits of a kept image. `HammingIndex` is a
  multi-index hash: the hash is split into max_distance+1 chunks, and by pigeonhole two hashes
  within the distance agree exactly on at least one chunk, so a query checks only the records
  sharing a chunk value — never all pairs.
- Semantic (SemDeDup, Abbas et al. 2023): L2-normalised caption embeddings → faiss k-means with
  ~`cluster_size` records per cluster (trained on a seeded sample) → inside each cluster, in input
  order, a record is dropped when its cosine similarity to an earlier one is ≥ 1 − eps. Cost is
  N x cluster_size, not N²; duplicates that k-means puts in different clusters are missed (the
  method's known trade-off).

A record with several images is a duplicate when any of its images matches a kept image.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable

import numpy as np
from datatrove.data import DocumentsPipeline
from datatrove.pipeline.base import PipelineStep

from medvl.curate.config import DedupConfig, SemanticConfig
from medvl.curate.store import EmbeddingShards, RunDirs, iter_prepared, pack_order
from medvl.curate.vocab import tokenize
from medvl.io.files import atomic_write_json
from medvl.io.jsonl import RejectLog

__all__ = [
    "caption_key",
    "HammingIndex",
    "make_text_embedder",
    "CaptionEmbedder",
    "semantic_duplicates",
    "DedupStep",
    "dedup_corpus",
    "dedup_dropped",
]

log = logging.getLogger("medvl.curate")


def caption_key(caption: str) -> int:
    """Exact-caption signature: 64 bits of sha1 over the lower-cased word tokens."""
    digest = hashlib.sha1(" ".join(tokenize(caption)).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big")


class HammingIndex:
    """Find a stored 64-bit hash within `max_distance` bits of a query without scanning all."""

    def __init__(self, max_distance: int, bits: int = 64):
        self.max_distance = max_distance
        n_chunks = max_distance + 1
        edges = [round(i * bits / n_chunks) for i in range(n_chunks + 1)]
        self.chunks = [(lo, (1 << (hi - lo)) - 1) for lo, hi in zip(edges, edges[1:])]
        self.tables: list[dict[int, list[tuple[int, int]]]] = [{} for _ in self.chunks]

    def find(self, value: int) -> tuple[int, int] | None:
        """(payload, distance) of the first stored hash within the distance, else None."""
        best = None
        for (shift, mask), table in zip(self.chunks, self.tables):
            for stored, payload in table.get((value >> shift) & mask, ()):
                distance = (stored ^ value).bit_count()
                if distance <= self.max_distance and (best is None or payload < best[0]):
                    best = (payload, distance)
        return best

    def add(self, value: int, payload: int) -> None:
        for (shift, mask), table in zip(self.chunks, self.tables):
            table.setdefault((value >> shift) & mask, []).append((value, payload))


# ------------------------------------------------------------------------ caption embeddings


def _hashing_embedder(dim: int = 384) -> Callable[[list[str]], np.ndarray]:
    """A weight-free embedder: signed hashing of word unigrams and bigrams (deterministic)."""

    def embed(texts: list[str]) -> np.ndarray:
        out = np.zeros((len(texts), dim), dtype=np.float32)
        for i, text in enumerate(texts):
            tokens = tokenize(text)
            for gram in tokens + [f"{a} {b}" for a, b in zip(tokens, tokens[1:])]:
                h = int.from_bytes(hashlib.blake2b(gram.encode(), digest_size=8).digest(), "big")
                out[i, h % dim] += 1.0 if (h >> 63) else -1.0
        return out

    return embed


def make_text_embedder(
    spec: str | None, batch_size: int = 128
) -> tuple[str, Callable[[list[str]], np.ndarray]]:
    """(name, texts → L2-normalised float32 rows). None: all-MiniLM-L6-v2; "hashing": no weights."""
    if spec == "hashing":
        raw = _hashing_embedder()
        name = "hashing"
    else:
        from medvl.model.offline import minilm_path

        folder = spec or str(minilm_path())
        model = _sentence_transformer(folder)
        name = Path(folder).name

        def raw(texts: list[str]) -> np.ndarray:
            return model.encode(texts, batch_size=batch_size, convert_to_numpy=True, show_progress_bar=False)

    def embed(texts: list[str]) -> np.ndarray:
        vectors = np.asarray(raw(texts), dtype=np.float32)
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        return vectors / np.maximum(norms, 1e-12)

    return name, embed


@lru_cache(maxsize=2)
def _sentence_transformer(folder: str) -> Any:
    """One loaded model per process (the tasks a local executor runs in turn share it)."""
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(folder, device="cpu")


class CaptionEmbedder(PipelineStep):
    """Embeds captions in batches and appends them, in document order, to the shard's side file.

    Must be the last step before the shard writer, so row i of the side file is line i of the shard.
    """

    name = "caption embedder"
    type = "🔢 - EMBED"

    def __init__(self, config: SemanticConfig, dirs: RunDirs):
        super().__init__()
        self.config, self.dirs = config, dirs

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        name, embed = make_text_embedder(self.config.model, self.config.batch_size)
        path = self.dirs.embedding_shard(rank)
        path.parent.mkdir(parents=True, exist_ok=True)
        dim = None
        with path.open("wb") as handle:
            batch = []
            for doc in data:
                batch.append(doc)
                if len(batch) >= self.config.batch_size:
                    dim = self._flush(batch, embed, handle)
                    yield from batch
                    batch = []
            if batch:
                dim = self._flush(batch, embed, handle)
                yield from batch
        if dim is not None:
            atomic_write_json(self.dirs.prepared / "embedding.json", {"dim": dim, "model": name})

    def _flush(self, batch: list, embed: Callable, handle: Any) -> int:
        with self.track_time("batch"):
            vectors = embed([d.text for d in batch])
        handle.write(vectors.astype(np.float16).tobytes())
        self.stat_update("embedded", value=len(batch))
        return vectors.shape[1]


# ------------------------------------------------------------------------ semantic dedup


def semantic_duplicates(vectors: np.ndarray, eps: float, block: int = 1024) -> list[tuple[int, int, float]]:
    """SemDeDup inside one cluster: (i, kept j, cosine) for each row i similar to an earlier row.

    Rows are in input order and L2-normalised; i is dropped when max_{j<i} cos(i, j) ≥ 1 − eps,
    and its representative is the earliest kept row its chain of matches leads to.
    """
    n = len(vectors)
    threshold = 1.0 - eps
    representative = np.arange(n)
    drops = []
    for start in range(0, n, block):
        stop = min(n, start + block)
        sims = vectors[start:stop] @ vectors[:stop].T
        for offset in range(stop - start):
            i = start + offset
            if i == 0:
                continue
            row = sims[offset, :i]
            j = int(row.argmax())
            if row[j] >= threshold:
                representative[i] = representative[j]
                drops.append((i, int(representative[j]), float(row[j])))
    return drops


def _kmeans_assign(
    emb: EmbeddingShards, shards: np.ndarray, rows: np.ndarray, config: SemanticConfig
) -> np.ndarray:
    """Cluster id of every record: faiss k-means trained on a seeded sample, then streamed assignment."""
    import faiss

    n = len(rows)
    k = max(1, math.ceil(n / config.cluster_size))
    if k == 1:
        return np.zeros(n, dtype=np.int64)
    rng = np.random.default_rng(config.seed)
    n_train = min(n, max(64 * k, 10_000), 200_000)
    sample = np.sort(rng.choice(n, size=n_train, replace=False))
    kmeans = faiss.Kmeans(
        emb.dim,
        k,
        niter=config.kmeans_iterations,
        seed=config.seed,
        spherical=True,
        verbose=False,
        min_points_per_centroid=1,
    )
    kmeans.train(emb.rows(shards[sample], rows[sample]))
    assignment = np.empty(n, dtype=np.int64)
    for start in range(0, n, 16384):
        chunk = emb.rows(shards[start : start + 16384], rows[start : start + 16384])
        assignment[start : start + len(chunk)] = kmeans.index.search(chunk, 1)[1][:, 0]
    return assignment


# ------------------------------------------------------------------------ the gather task


@dataclass
class DedupStats:
    seen: int = 0
    kept: int = 0
    dropped: dict[str, int] = field(default_factory=dict)


def dedup_corpus(dirs: RunDirs, n_shards: int, config: DedupConfig, rejects: RejectLog) -> DedupStats:
    """Write a reject line per duplicate; return the counts. Survivors are what is not rejected."""
    stats = DedupStats()
    seen_ids: dict[str, str] = {}
    images: dict[bytes, str] = {}
    captions: dict[int, str] = {}
    phash = HammingIndex(config.phash.max_distance) if config.phash.enabled else None
    kept_ids: list[str] = []
    kept_meta: list[tuple[str | None, str | None, list[int]]] = []  # (modality, source, order): rejects
    kept_shard: list[int] = []
    kept_row: list[int] = []

    def drop(record: dict, reason: str, kept: str, detail: str = "") -> None:
        stats.dropped[reason] = stats.dropped.get(reason, 0) + 1
        meta = record["metadata"]
        rejects.reject(
            record["id"],
            "dedup",
            reason,
            detail or f"duplicate of {kept}",
            kept=kept,
            modality=meta.get("modality"),
            source=meta.get("source"),
            order=meta.get("order"),
        )

    for rank, row, record in iter_prepared(dirs, n_shards):
        stats.seen += 1
        record_id = record["id"]
        meta = record["metadata"]
        infos = meta.get("images_info", [])
        if record_id in seen_ids:
            drop(record, "duplicate_id", record_id, f"id already used by a record of {seen_ids[record_id]}")
            continue
        seen_ids[record_id] = meta.get("source", "")
        if config.exact_image:
            digests = [bytes.fromhex(i["sha256"])[:16] for i in infos if "sha256" in i]
            hit = next((images[d] for d in digests if d in images), None)
            if hit is not None:
                drop(record, "exact_image", hit)
                continue
        if config.exact_caption:
            key = caption_key(record["text"])
            if key in captions:
                drop(record, "exact_caption", captions[key])
                continue
        if phash is not None:
            values = [int(i["phash"], 16) for i in infos if "phash" in i]
            match = next((m for m in (phash.find(v) for v in values) if m is not None), None)
            if match is not None:
                drop(
                    record,
                    "near_image",
                    kept_ids[match[0]],
                    f"pHash within {match[1]} bits of {kept_ids[match[0]]}",
                )
                continue
        index = len(kept_ids)
        kept_ids.append(record_id)
        kept_meta.append((meta.get("modality"), meta.get("source"), meta.get("order")))
        kept_shard.append(rank)
        kept_row.append(row)
        if config.exact_image:
            for d in digests:
                images.setdefault(d, record_id)
        if config.exact_caption:
            captions[key] = record_id
        if phash is not None:
            for v in values:
                phash.add(v, index)
    del images, captions, phash, seen_ids
    dropped: set[int] = set()
    if config.semantic.enabled and len(kept_ids) > 1:
        found = _semantic_pass(dirs, n_shards, config.semantic, kept_shard, kept_row)
        for index, kept_index, sim in sorted(found):
            modality, source, order = kept_meta[index]
            record = {
                "id": kept_ids[index],
                "metadata": {"modality": modality, "source": source, "order": order},
            }
            drop(
                record,
                "semantic_caption",
                kept_ids[kept_index],
                f"caption cosine {sim:.4f} >= {1 - config.semantic.eps:.4f} with {kept_ids[kept_index]}",
            )
            dropped.add(index)
    stats.kept = len(kept_ids) - len(dropped)
    return stats


def _semantic_pass(
    dirs: RunDirs, n_shards: int, config: SemanticConfig, shard_list: list[int], row_list: list[int]
) -> list[tuple[int, int, float]]:
    """(record index, kept record index, cosine) of each semantic duplicate among the kept records."""
    emb = EmbeddingShards(dirs, n_shards)
    shards, rows = np.asarray(shard_list, dtype=np.int32), np.asarray(row_list, dtype=np.int64)
    assignment = _kmeans_assign(emb, shards, rows, config)
    order = np.argsort(assignment, kind="stable")  # members of a cluster stay in input order
    bounds = np.flatnonzero(np.diff(assignment[order])) + 1
    found = []
    for members in np.split(order, bounds):
        if len(members) < 2:
            continue
        vectors = emb.rows(shards[members], rows[members])
        for i, j, sim in semantic_duplicates(vectors, config.eps):
            found.append((int(members[i]), int(members[j]), sim))
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
            self.dirs.work / "dedup.json", {"seen": stats.seen, "kept": stats.kept, "dropped": stats.dropped}
        )
        return iter(())


def dedup_dropped(dirs: RunDirs) -> set[int]:
    """Packed input positions (`pack_order`) of the records the dedup task dropped."""
    path = dirs.rejects / "dedup-00000.jsonl"
    if not path.exists():
        return set()
    with path.open("r", encoding="utf-8") as handle:
        return {pack_order(json.loads(line)["order"]) for line in handle if line.strip()}
