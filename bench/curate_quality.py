"""Quality of `medvl curate`'s filters and de-duplication on real data, and near-image search at scale.

1. Medical-text filters on the test split of the shipped labelled captions (real PMC captions
   from ROCO; `medvl/curate/assets/README.md`): the vocabulary test (>= 1 and >= 2 terms), the
   learned filter (builtin probe: LM + embedding + vocabulary features, its saved operating point)
   and the learned filters without the LM (`--features embedding+vocabulary` and `embedding`,
   trained here on the train split as `train-text-filter` does: every setting from cross-validation
   on the train split). Precision/recall with Wilson 95% CIs; each filter against the builtin with
   McNemar's exact test on the captions they decide differently. The price of the LM features:
   captions/s of the cut SmolLM2 and of bare all-MiniLM-L6-v2 `encode` on the test captions, same run.
2. Semantic dedup on paraphrases of those real captions: light paraphrases (synonym swaps, a dropped
   pointer annotation such as "(arrow)", reordered sentences) must merge with their original (exact copies are the
   exact-caption step's, tested apart); clinical
   variants (another number, side, pre/post, negation, panel, modality or organ) must not. Recall on
   paraphrases, merges across clinical differences, and originals merged with each other, at a few
   eps, with and without the clinical check (all-MiniLM-L6-v2); the caption embedder's speed on
   those captions, with bare sentence-transformers `encode` as the same-run baseline.
3. Near-duplicate images on VQA-RAD's 315 images: recall per copy (resize, JPEG q40, brightness
   +30%, crop 10% of each side at a random place, rotation of 5 degrees, horizontal flip), and false
   matches when each original is looked up among the 314 others.
4. Search at scale: synthetic descriptors, a benchmark side of 100k images (600k rows) queried one
   by one by training images; milliseconds per query for the inverted-file index medvl switches to,
   with the exact flat index as the same-run baseline (`ratio` = flat / IVF time; `recall_at_1` of
   IVF against flat). 1M training images are extrapolated from the per-query time (queries are
   independent).

    python bench/curate_quality.py [--quick]
"""

from __future__ import annotations

import argparse
import io
import json
import re
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
VQA_RAD = ROOT / "data" / "vqa-rad" / "images"
SCALE = {"full": (100_000, 2_000), "quick": (20_000, 500)}  # benchmark images, timed queries


def text_filters() -> list[dict[str, Any]]:
    import tempfile

    from scipy.stats import binomtest

    from medvl.curate.text_probe import TextProbe, load_labelled, precision_recall, train_text_probe
    from medvl.curate.vocab import load_vocabulary

    examples = load_labelled()
    held_out = [e for e in examples if e.held_out]
    labels = np.asarray([e.medical for e in held_out])
    probe = TextProbe.load("builtin")
    builtin = probe.predict_proba([e.text for e in held_out]) >= probe.threshold

    def versus_builtin(predicted: np.ndarray) -> dict[str, Any]:
        """Captions decided differently: how many each gets right, McNemar's exact p."""
        other = int(((predicted == labels) & (builtin != labels)).sum())
        mine = int(((builtin == labels) & (predicted != labels)).sum())
        p = binomtest(other, other + mine).pvalue if other + mine else 1.0
        return {"right_where_builtin_wrong": other, "wrong_where_builtin_right": mine,
                "mcnemar_p": round(float(p), 4)}

    vocabulary = load_vocabulary()
    rows = []
    for terms in (1, 2):
        predicted = np.asarray([vocabulary.count(e.text) >= terms for e in held_out])
        rows.append({"case": f"text filter: vocabulary >= {terms} terms",
                     **precision_recall(predicted, labels), **versus_builtin(predicted)})
    rows.append({"case": f"text filter: learned (builtin, {probe.meta['features']})", "threshold": probe.threshold,
                 "C": probe.meta["C"], "vocabulary_weight": probe.meta.get("vocabulary_weight"),
                 **precision_recall(builtin, labels)})
    for features in ("embedding+vocabulary", "embedding"):
        with tempfile.TemporaryDirectory() as folder:
            trained = train_text_probe(examples, folder, features=features)
            predicted = TextProbe.load(folder).predict_proba([e.text for e in held_out]) >= trained["threshold"]
        rows.append({"case": f"text filter: learned ({features})", "threshold": trained["threshold"],
                     "C": trained["C"], "vocabulary_weight": trained.get("vocabulary_weight"), **trained["held_out"],
                     **versus_builtin(predicted)})
    return rows + [feature_speed([e.text for e in held_out], probe.meta["lm"])]


def feature_speed(texts: list[str], lm: dict[str, Any]) -> dict[str, Any]:
    """Captions/s of the learned filter's LM features and of bare MiniLM `encode`, on the same captions."""
    from medvl.curate.embed import make_lm_embedder, sentence_transformer
    from medvl.io.offline import minilm_path

    lm_features, minilm = make_lm_embedder(**lm), sentence_transformer(str(minilm_path()))
    lm_features(texts[:8]), minilm.encode(texts[:8])  # warm-up
    start = time.perf_counter()
    lm_features(texts)
    lm_rate = len(texts) / (time.perf_counter() - start)
    start = time.perf_counter()
    minilm.encode(texts, batch_size=128)
    minilm_rate = len(texts) / (time.perf_counter() - start)
    return {"case": "text filter: feature speed (captions/s)", "lm": round(lm_rate, 1), "minilm": round(minilm_rate, 1),
            "ratio": round(lm_rate / minilm_rate, 2), "n": len(texts)}


# ------------------------------------------------------------------ semantic dedup on paraphrases

SYNONYMS = [("showing", "demonstrating"), ("shows", "demonstrates"), ("revealed", "showed"), ("reveals", "shows"),
            ("image", "picture"), ("photograph", "photo"), ("large", "big"), ("small", "little"),
            ("radiograph", "X-ray"), ("computed tomography", "CT"), ("magnetic resonance imaging", "MRI"),
            ("demonstrates", "shows"), ("view", "image"), ("seen", "visible"), ("observed", "seen")]
CLINICAL_SWAPS = {
    "laterality": [("left", "right"), ("right", "left")],
    "phase": [("preoperative", "postoperative"), ("postoperative", "preoperative"), ("before", "after"), ("after", "before")],
    "modality": [("CT", "MRI"), ("MRI", "CT"), ("ultrasound", "CT"), ("radiograph", "MRI scan")],
    "anatomy": [("liver", "kidney"), ("kidney", "liver"), ("lung", "heart"), ("brain", "spine"), ("knee", "hip"), ("eye", "ear")],
}


def _swap(text: str, a: str, b: str) -> str | None:
    pattern = re.compile(rf"\b{re.escape(a)}\b", re.IGNORECASE)
    return pattern.sub(b, text, count=1) if pattern.search(text) else None


def paraphrase(text: str, kind: str) -> str | None:
    if kind == "synonyms":
        out, done = text, 0
        for a, b in SYNONYMS:
            swapped = _swap(out, a, b)
            if swapped is not None and done < 2:
                out, done = swapped, done + 1
        return out if done else None
    if kind == "dropped phrase":  # a pointer annotation: "(arrow)", "(white arrowheads)", "(asterisk)"
        out = re.sub(r"\s*\((?:[a-z ]*(?:arrow|arrowhead|asterisk|star|circle|outline)s?)\)", "", text, count=1)
        return out if out != text and len(out.split()) >= 4 else None
    sentences = re.split(r"(?<=\.)\s+(?=[A-Z])", text)
    return " ".join(sentences[1:] + sentences[:1]) if len(sentences) >= 2 else None


def clinical_variant(text: str, kind: str) -> str | None:
    if kind == "numbers":
        match = re.search(r"\b(\d+)\b", text)
        return text[: match.start()] + str(int(match.group(1)) + 3) + text[match.end():] if match else None
    if kind == "negation":
        return _swap(text, "showing", "showing no") or _swap(text, "with", "without")
    if kind == "index":
        return _swap(text, "(A)", "(B)") or re.sub(r"^", "Panel C: ", text, count=1)
    for a, b in CLINICAL_SWAPS[kind]:
        swapped = _swap(text, a, b)
        if swapped is not None:
            return swapped
    return None


def semantic_dedup(quick: bool) -> list[dict[str, Any]]:
    from medvl.curate.clinical import KINDS, fact_signature
    from medvl.curate.dedup import semantic_candidates, semantic_merges
    from medvl.curate.text_probe import shipped_labels_path

    rows = [json.loads(line) for line in shipped_labels_path().read_text().splitlines()]
    originals = list(dict.fromkeys(r["text"] for r in rows if len(r["text"].split()) >= 5))
    rng = np.random.default_rng(0)
    corpus = [(text, "original", i) for i, text in enumerate(originals)]
    for i in rng.permutation(len(originals))[: 150 if quick else 400]:
        for kind in ("synonyms", "dropped phrase", "reordered"):
            text = paraphrase(originals[i], kind)
            if text is not None and text != originals[i]:
                corpus.append((text, kind, int(i)))
    for kind in KINDS:
        for i in rng.permutation(len(originals)):
            text = clinical_variant(originals[i], kind)
            if text is not None and text != originals[i]:
                corpus.append((text, f"clinical: {kind}", int(i)))
            if sum(1 for c in corpus if c[1] == f"clinical: {kind}") >= (15 if quick else 40):
                break
    vectors, results = embedder_speed([c[0] for c in corpus])
    facts = [fact_signature(c[0]) for c in corpus]
    for eps in (0.05, 0.08, 0.12, 0.15):
        candidates = semantic_candidates(vectors, eps, 10)
        for verify in (False, True):
            merged = {i: j for i, j, _ in semantic_merges(candidates, facts if verify else None)}

            def root(i: int) -> int:
                while i in merged:
                    i = merged[i]
                return i

            para = [i for i, c in enumerate(corpus) if c[1] in ("synonyms", "dropped phrase", "reordered")]
            found = sum(1 for i in para if root(i) == root(corpus[i][2]))
            clinical = [i for i, c in enumerate(corpus) if c[1].startswith("clinical")]
            wrong = sum(1 for i in clinical if root(i) == root(corpus[i][2]))
            originals_merged = sum(1 for i, c in enumerate(corpus) if c[1] == "original" and i in merged)
            results.append({
                "case": f"semantic dedup eps={eps} check={'on' if verify else 'off'}",
                "paraphrase_recall": round(found / len(para), 4),
                "paraphrases": len(para),
                "clinical_merges": wrong,
                "clinical_variants": len(clinical),
                "originals_merged": originals_merged,
                "originals": len(originals),
            })
    return results


def embedder_speed(texts: list[str]) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """Embeds the texts with medvl's caption embedder (timed), and times bare sentence-transformers
    `encode` (its default batch size) on the same texts as the same-run baseline."""
    import torch

    from medvl.curate.embed import sentence_transformer, make_text_embedder
    from medvl.io.offline import minilm_path

    _, embed = make_text_embedder(None)
    started = time.perf_counter()
    vectors = embed(texts)
    medvl_s = time.perf_counter() - started
    started = time.perf_counter()
    sentence_transformer(str(minilm_path())).encode(texts, show_progress_bar=False)
    bare_s = time.perf_counter() - started
    return vectors, [{
        "case": f"caption embedder: all-MiniLM-L6-v2, {len(texts)} captions, batch 128",
        "captions_per_s": round(len(texts) / medvl_s, 1),
        "bare_encode_captions_per_s": round(len(texts) / bare_s, 1),
        "ratio": round(bare_s / medvl_s, 2),
        "mean_words": round(float(np.mean([len(t.split()) for t in texts])), 1),
        "torch_threads": torch.get_num_threads(),
    }]


# ------------------------------------------------------------------ near images on VQA-RAD


def image_copies(image: Any, rng: np.random.Generator) -> dict[str, Any]:
    from PIL import Image, ImageEnhance, ImageOps

    width, height = image.size
    left, top = (int(rng.integers(0, int(0.1 * side) + 1)) for side in (width, height))
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=40)
    return {
        "resize 50%": image.resize((width // 2, height // 2), Image.Resampling.BICUBIC),
        "jpeg q40": Image.open(io.BytesIO(buffer.getvalue())).convert("RGB"),
        "brightness +30%": ImageEnhance.Brightness(image).enhance(1.3),
        "crop 10%": image.crop((left, top, left + int(0.9 * width), top + int(0.9 * height))),
        "rotate 5 deg": image.rotate(5 * float(rng.choice([-1, 1])), resample=Image.Resampling.BICUBIC),
        "horizontal flip": ImageOps.mirror(image),
    }


def near_images() -> list[dict[str, Any]]:
    from PIL import Image

    from medvl.benchmarks.near_images import NearImageConfig, describe

    paths = sorted(VQA_RAD.glob("*.jpg"))
    matcher = NearImageConfig().matcher()  # the defaults `medvl curate` runs with
    started = time.perf_counter()
    for position, path in enumerate(paths):
        matcher.add(describe(Image.open(path)), position, str(path))
    index_s = time.perf_counter() - started
    rng = np.random.default_rng(0)
    found: dict[str, int] = {}
    timings: list[float] = []
    for position, path in enumerate(paths):
        for kind, copy in image_copies(Image.open(path).convert("RGB"), rng).items():
            started = time.perf_counter()
            match = matcher.find(describe(copy), copy)
            timings.append(time.perf_counter() - started)
            found[kind] = found.get(kind, 0) + int(match is not None and match.payload == position)
    false_matches = 0  # originals confirmed as the same picture as another original
    for position, path in enumerate(paths):
        image = Image.open(path)
        candidates = matcher.index.search(describe(image), matcher.candidates + 1)
        false_matches += matcher.confirm(candidates, image, lambda payload, own=position: payload != own) is not None
    rows = [{"case": f"near image: {kind}", "recall": round(n / len(paths), 4), "images": len(paths)} for kind, n in found.items()]
    rows.append({"case": "near image: distinct VQA-RAD images", "false_matches": false_matches, "images": len(paths),
                 "index_ms_per_image": round(1000 * index_s / len(paths), 2),
                 "query_ms_median": round(1000 * float(np.median(timings)), 2)})
    return rows


def search_at_scale(quick: bool) -> list[dict[str, Any]]:
    import faiss

    from medvl.benchmarks.near_images import DIM, ROWS, NearImageIndex

    n_bench, n_queries = SCALE["quick" if quick else "full"]
    rng = np.random.default_rng(0)
    bench = rng.standard_normal((n_bench, ROWS, DIM)).astype(np.float32)
    bench /= np.linalg.norm(bench, axis=2, keepdims=True)
    queries = bench[rng.integers(0, n_bench, n_queries), :1, :] + 0.05 * rng.standard_normal((n_queries, 1, DIM))
    queries = np.repeat(queries / np.linalg.norm(queries, axis=2, keepdims=True), ROWS, axis=1).astype(np.float32)
    timings = {}
    answers = {}
    for name, exact_rows in (("flat", 10**12), ("ivf", 60_000)):
        index = NearImageIndex(exact_rows=exact_rows)
        started = time.perf_counter()
        index.add_many(bench, list(range(n_bench)))  # the benchmark side is known at once
        build = time.perf_counter() - started
        started = time.perf_counter()
        answers[name] = [index.search(q, 5)[0][0] for q in queries]
        timings[name] = ((time.perf_counter() - started) / n_queries, build)
    ms = 1000 * timings["ivf"][0]
    return [{
        "case": f"near-image search: {n_queries} queries x {n_bench} benchmark images ({n_bench * ROWS} rows)",
        "ivf_ms_per_query": round(ms, 3),
        "flat_ms_per_query": round(1000 * timings["flat"][0], 3),
        "ratio": round(timings["flat"][0] / timings["ivf"][0], 2),
        "recall_at_1": round(float(np.mean(np.asarray(answers["ivf"]) == np.asarray(answers["flat"]))), 4),
        "ivf_build_s": round(timings["ivf"][1], 1),
        "extrapolated_1M_queries_min": round(ms * 1_000_000 / 60_000, 1),
        "faiss_threads": faiss.omp_get_max_threads(),
    }]


def run(quick: bool = False) -> list[dict[str, Any]]:
    return text_filters() + semantic_dedup(quick) + near_images() + search_at_scale(quick)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    for row in run(args.quick):
        print(json.dumps(row))


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT / "src"))
    main()
