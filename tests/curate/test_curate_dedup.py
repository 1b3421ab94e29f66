"""De-duplication: the Hamming index equals brute force, SemDeDup keeps the first of a group, and the
dedup task drops exact / near / semantic duplicates with the kept record named."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest

from medvl.curate.dedup import HammingIndex, caption_key, make_text_embedder, semantic_duplicates
from medvl.curate.pipeline import run_curation


def test_hamming_index_matches_brute_force():
    rng = random.Random(0)
    stored = [rng.getrandbits(64) for _ in range(3000)]
    for i in range(0, 3000, 7):  # plant near neighbours
        stored[i] = stored[i // 2] ^ (1 << rng.randrange(64)) ^ (1 << rng.randrange(64))
    index = HammingIndex(max_distance=4)
    for payload, value in enumerate(stored[:2000]):
        index.add(value, payload)
    queries = stored[2000:] + [v ^ 0b1011 for v in stored[:200]]
    for query in queries:
        brute = [p for p, v in enumerate(stored[:2000]) if (v ^ query).bit_count() <= 4]
        found = index.find(query)
        assert (found[0] if found else None) == (min(brute) if brute else None)
    assert index.find(stored[5] ^ 0b11111) is None or (index.find(stored[5] ^ 0b11111)[1] <= 4)


def test_semantic_duplicates_keep_the_earliest_and_resolve_chains():
    base = np.eye(4, dtype=np.float32)
    a, b = base[0], base[1]
    near_a = (a + 0.05 * b) / np.linalg.norm(a + 0.05 * b)
    nearer = (a + 0.02 * b) / np.linalg.norm(a + 0.02 * b)
    vectors = np.stack([a, b, near_a, base[2], nearer])
    drops = semantic_duplicates(vectors, eps=0.01, block=2)
    assert [(i, j) for i, j, _ in drops] == [(2, 0), (4, 0)]
    assert semantic_duplicates(vectors, eps=1e-6) == []


def test_caption_key_normalises_case_and_punctuation():
    assert caption_key("CT of the liver.") == caption_key("ct  of the LIVER")
    assert caption_key("CT of the liver") != caption_key("CT of the lung")


def test_hashing_embedder_is_normalised_and_deterministic():
    _, embed = make_text_embedder("hashing")
    vectors = embed(["CT of the liver showing a lesion", "CT of the liver showing lesions", "MRI knee"])
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0)
    assert vectors[0] @ vectors[1] > vectors[0] @ vectors[2]
    assert np.array_equal(
        vectors, embed(["CT of the liver showing a lesion", "CT of the liver showing lesions", "MRI knee"])
    )


def _dedup_rejects(out: Path) -> dict[str, tuple[str, str]]:
    lines = [
        json.loads(line)
        for line in (out / "_work" / "rejects" / "dedup-00000.jsonl").read_text().splitlines()
    ]
    return {item["id"]: (item["reason"], item["kept"]) for item in lines}


def test_dedup_task_drops_each_kind_with_the_kept_record(corpus: Path, curate_config, tmp_path: Path):
    config = curate_config(corpus)
    run_curation(config, tmp_path / "out", until="dedup")
    drops = _dedup_rejects(tmp_path / "out")
    assert drops["dupimg_fig.png"] == ("exact_image", "p0_fig0.png")
    assert drops["nearimg_fig.png"] == ("near_image", "p1_fig1.png")
    assert drops["dupcap_fig.png"] == ("exact_caption", "p2_fig2.png")
    assert drops["para_fig.png"] == ("semantic_caption", "p3_fig3.png")
    assert len(drops) == 4
    stats = json.loads((tmp_path / "out" / "_work" / "dedup.json").read_text())
    assert stats["seen"] == 12 and stats["kept"] == 8


def test_each_dedup_kind_can_be_switched_off(corpus: Path, curate_config, tmp_path: Path):
    config = curate_config(
        corpus, "dedup.semantic.enabled=false", "dedup.phash.enabled=false", "dedup.exact_caption=false"
    )
    run_curation(config, tmp_path / "out", until="dedup")
    assert _dedup_rejects(tmp_path / "out") == {"dupimg_fig.png": ("exact_image", "p0_fig0.png")}


def test_semdedup_with_real_minilm(tmp_path: Path):
    """all-MiniLM-L6-v2: a paraphrase is dropped as a semantic duplicate, different findings are kept."""
    from medvl.curate.config import DedupConfig
    from medvl.curate.dedup import dedup_corpus
    from medvl.curate.store import RunDirs
    from medvl.io.jsonl import RejectLog

    captions = [
        "Chest X-ray showing a large right-sided pleural effusion.",
        "Chest radiograph showing a large pleural effusion on the right side.",
        "Axial MRI of the brain showing a ring-enhancing lesion in the left frontal lobe.",
        "Histology of the liver biopsy with portal inflammation and bridging fibrosis.",
        "Ultrasound of the gallbladder demonstrating multiple gallstones with acoustic shadowing.",
    ]
    try:
        name, embed = make_text_embedder(None)
    except Exception as exc:  # the offline asset is missing
        pytest.skip(f"all-MiniLM-L6-v2 unavailable: {exc}")
    dirs = RunDirs(tmp_path)
    dirs.prepared.mkdir(parents=True)
    vectors = embed(captions)
    dirs.embedding_shard(0).write_bytes(vectors.astype(np.float16).tobytes())
    (dirs.prepared / "embedding.json").write_text(json.dumps({"dim": vectors.shape[1], "model": name}))
    lines = [
        json.dumps({"id": f"r{i}", "text": c, "metadata": {"order": [0, 0, i]}})
        for i, c in enumerate(captions)
    ]
    dirs.prepared_shard(0).write_text("\n".join(lines) + "\n")
    config = DedupConfig.model_validate({"semantic": {"eps": 0.1, "cluster_size": 2}, "exact_image": False})
    with RejectLog(tmp_path / "rejects.jsonl") as rejects:
        stats = dedup_corpus(dirs, 1, config, rejects)
    dropped = [json.loads(line) for line in (tmp_path / "rejects.jsonl").read_text().splitlines()]
    assert [(d["id"], d["kept"], d["reason"]) for d in dropped] == [("r1", "r0", "semantic_caption")]
    assert stats.kept == 4
