"""De-duplication: nearest-neighbour candidates equal brute force, the clinical check refuses merges
across each kind of clinical difference, and the dedup task drops exact / near / semantic duplicates
with the kept record named."""

from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from medvl.curate.clinical import KINDS, clinical_difference, fact_signature, signature_difference
from medvl.curate.dedup import caption_key, semantic_candidates, semantic_merges
from medvl.curate.embed import make_text_embedder
from medvl.curate.pipeline import run_curation


def test_semantic_candidates_match_brute_force_and_look_only_backwards():
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(300, 16)).astype(np.float32)
    vectors[150:160] = vectors[:10] + 0.05 * rng.normal(size=(10, 16))  # near copies of earlier rows
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    found = semantic_candidates(vectors, eps=0.05, k=3)
    sims = vectors @ vectors.T
    for i in range(len(vectors)):
        brute = sorted(((j, sims[i, j]) for j in range(i) if sims[i, j] >= 0.95), key=lambda t: -t[1])[:3]
        assert [j for j, _ in found[i]] == [j for j, _ in brute]
    assert all(found[150 + k][0][0] == k for k in range(10))


# One pair per kind: the captions differ only in that kind of fact, and an embedding puts them close.
CLINICAL_PAIRS = {
    "numbers": ("Follow-up CT three months after SIRT shows a smaller liver lesion.",
                "Follow-up CT nine months after SIRT shows a smaller liver lesion."),
    "laterality": ("Chest radiograph with a large left pleural effusion.",
                   "Chest radiograph with a large right pleural effusion."),
    "phase": ("Pre-operative orthopantomograph of the mandible.", "Post-operative orthopantomograph of the mandible."),
    "negation": ("Axial MRI of the brain with a ring-enhancing lesion.",
                 "Axial MRI of the brain without a ring-enhancing lesion."),
    "index": ("Panel A: axial CT of the kidney with a cyst.", "Panel B: axial CT of the kidney with a cyst."),
    "modality": ("Axial CT of the liver showing a hypodense cyst.", "Axial MRI of the liver showing a hypodense cyst."),
    "anatomy": ("Ultrasound of the liver showing a simple cyst.", "Ultrasound of the kidney showing a simple cyst."),
}


@pytest.mark.parametrize("kind", KINDS)
def test_clinical_check_refuses_each_kind_of_difference(kind: str):
    a, b = CLINICAL_PAIRS[kind]
    assert clinical_difference(a, b) == kind
    assert signature_difference(fact_signature(a), fact_signature(b)) == kind


def test_clinical_check_lets_paraphrases_merge():
    pairs = [
        ("Chest radiograph showing cardiomegaly (arrow).", "Chest X-ray demonstrating cardiomegaly."),
        ("Axial CT of the renal cyst in case 2.", "Case 2: axial computed tomography of the kidney cyst."),
        ("T2-weighted MRI of the left knee 6 weeks after surgery.", "Six weeks after surgery, T2-weighted MRI of the left knee."),
    ]
    for a, b in pairs:
        assert clinical_difference(a, b) is None, (a, b)


def test_clinical_pairs_merge_without_the_check_and_not_with_it(tmp_path: Path):
    """all-MiniLM-L6-v2 puts (nearly) every clinical pair within eps; the check alone keeps them apart."""
    try:
        _, embed = make_text_embedder(None)
    except Exception as exc:  # the offline asset is missing
        pytest.skip(f"all-MiniLM-L6-v2 unavailable: {exc}")
    captions = [c for pair in CLINICAL_PAIRS.values() for c in pair]
    vectors = embed(captions)
    candidates = semantic_candidates(vectors, eps=0.12, k=5)
    merged_without_check = {i for i, _, _ in semantic_merges(candidates)}
    assert merged_without_check <= set(range(1, len(captions), 2)) and len(merged_without_check) >= 6
    refused: Counter[str] = Counter()
    assert semantic_merges(candidates, [fact_signature(c) for c in captions], refused) == []
    assert refused.total() == sum(map(len, candidates))


def test_semantic_merges_skip_merged_rows_and_refused_pairs():
    """Row 2's best candidate (row 1) is itself merged, so row 2 merges into row 0; with facts, row 3
    (another side) is refused against row 0 and merges into nothing."""
    captions = ["CT of the left kidney.", "CT of the left kidney!", "A CT of the left kidney.", "CT of the right kidney."]
    candidates = [[], [(0, 0.99)], [(1, 0.98), (0, 0.97)], [(0, 0.95)]]
    assert semantic_merges(candidates) == [(1, 0, 0.99), (2, 0, 0.97), (3, 0, 0.95)]
    refused: Counter[str] = Counter()
    facts = [fact_signature(c) for c in captions]
    assert semantic_merges(candidates, facts, refused) == [(1, 0, 0.99), (2, 0, 0.97)]
    assert refused == Counter({"laterality": 1})


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
        corpus, "dedup.semantic.enabled=false", "dedup.near_image.enabled=false", "dedup.exact_caption=false"
    )
    run_curation(config, tmp_path / "out", until="dedup")
    assert _dedup_rejects(tmp_path / "out") == {"dupimg_fig.png": ("exact_image", "p0_fig0.png")}


def test_each_record_of_an_id_used_three_times_is_dropped_but_the_first(tmp_path: Path, curate_config, texture):
    """The drops of pass 1 kept one provenance per id: the second of three records with one id was
    rejected twice over under the third one's input position, and released all the same."""
    from tests.curate.conftest import CAPTIONS

    lines = []
    for i, caption in enumerate(CAPTIONS[:3]):
        texture(i, (64, 48)).save(tmp_path / f"{i}.png")
        lines.append(json.dumps({"id": "same", "image": f"{i}.png", "caption": caption}) + "\n")
    (tmp_path / "pairs.jsonl").write_text("".join(lines))
    config = curate_config(tmp_path, "filter.image.min_side=8",
                           sources=[{"format": "pairs", "path": str(tmp_path / "pairs.jsonl"), "id_key": "id"}])
    run_curation(config, tmp_path / "out")
    rejects = [json.loads(line) for line in (tmp_path / "out" / "rejects.jsonl").read_text().splitlines()]
    assert [(r["reason"], r["order"]) for r in rejects] == [("duplicate_id", [0, 0, 1]), ("duplicate_id", [0, 0, 2])]
    released = (tmp_path / "out" / "concept_alignment.jsonl").read_text().splitlines()
    assert [json.loads(line)["conversations"][1]["value"] for line in released] == [CAPTIONS[0]]


def test_semantic_dedup_with_real_minilm(tmp_path: Path):
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
    config = DedupConfig.model_validate({"semantic": {"eps": 0.1}, "exact_image": False})
    with RejectLog(tmp_path / "rejects.jsonl") as rejects:
        stats = dedup_corpus(dirs, 1, config, rejects)
    dropped = [json.loads(line) for line in (tmp_path / "rejects.jsonl").read_text().splitlines()]
    assert [(d["id"], d["kept"], d["reason"]) for d in dropped] == [("r1", "r0", "semantic_caption")]
    assert stats.kept == 4
