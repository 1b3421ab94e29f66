"""Throughput of `medvl curate`: records/s of each CPU stage at two input sizes, and generation
throughput against the mock OpenAI server as a fraction of the bound C/L.

CPU stages (each size in a fresh subprocess, so `peak MB` is that run's own RSS growth over its
state after imports and set-up; two passes per size in mirrored order, small, large, large, small,
so load drift hits both sizes alike):

- `ingest`, `text filter`, `caption embed` (the weight-free hashing embedder), `write`: the real
  prepare pipeline (datatrove, 1 task) on synthetic MedICaT-style JSONL; per-step seconds come from
  datatrove's own step timers. Records stream: the peak must not grow with the input.
- `image filter`: decode (shared loader) + sha256 + the near-duplicate descriptor of small PNGs.
  It costs a few ms per image on 2 shared cores, so it runs at a tenth of the other sizes
  (linearity is what is checked).
- `dedup`: exact image/caption + near-image descriptor search (faiss) + semantic captions (faiss
  nearest neighbours, clinical check) over prepared shards with planted duplicates. It holds
  signatures (~1.5 KB per image descriptor, a few hundred bytes otherwise), never record pairs:
  time must grow ~linearly, memory per record stay constant.
- `sample`: domain round-robin with caps (heaps of the cap size).
- `concept gen + finalize`: concept-alignment records for every selected record, then the merge
  into the release files.

`scaling` = (t_large / t_small) / (n_large / n_small): 1.0 is linear, 10 would be quadratic.

Generation: `GenerateStep` (self-instruct, few-shot prompts) against the mock server in another
process with latency L and `max_concurrency` C; the bound is C/L requests per second. Bare
`LLMClient.complete_many` on the same requests is the baseline (step, baseline, baseline, step).

    python bench/curate_throughput.py [--quick]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from interleave import mirrored  # bench/interleave.py

SIZES = {"full": (10_000, 100_000), "quick": (2_000, 20_000)}
IMAGE_SHARE = 10  # the image filter runs on n / IMAGE_SHARE records
GENERATION = {"full": ((16, 0.2), (32, 0.5)), "quick": ((16, 0.2),)}
WORDS = [
    "CT",
    "MRI",
    "lesion",
    "liver",
    "kidney",
    "tumor",
    "edema",
    "biopsy",
    "histology",
    "ultrasound",
    "artery",
    "effusion",
    "nodule",
    "fracture",
    "hemorrhage",
    "metastasis",
    "lymph node",
    "stenosis",
]
DOMAINS = ["chest_xray", "ct_scan", "gross", "histology", "mri"]


# ---------------------------------------------------------------------------- synthetic inputs


def write_inputs(folder: Path, n: int, pool: int = 64) -> Path:
    """`n` PMC-style JSONL lines whose images cycle through `pool` small PNGs."""
    from PIL import Image

    figures = folder / "figures"
    figures.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(pool):
        coarse = (rng.random((10, 10)) * 255).astype(np.uint8)
        Image.fromarray(coarse).resize((128, 112), Image.Resampling.BICUBIC).save(figures / f"img{i}_f.png")
    with (folder / "figures.jsonl").open("w") as handle:
        for i in range(n):
            words = " ".join(WORDS[(i * k) % len(WORDS)] for k in (1, 3, 7, 11))
            caption = f"Figure {i % 9 + 1}. Axial image of case {i} showing {words} with surrounding changes."
            handle.write(
                json.dumps(
                    {
                        "pdf_hash": f"img{i % pool}",
                        "fig_uri": "f.png",
                        "s2_caption": caption,
                        "s2orc_references": [f"Case {i} is shown in Figure 1."],
                    }
                )
                + "\n"
            )
    return folder / "figures.jsonl"


def write_prepared(dirs: Any, n: int, shards: int = 4, dim: int = 384) -> None:
    """Prepared shards + caption embeddings with ~5% planted duplicates of each kind."""
    rng = np.random.default_rng(1)
    dirs.prepared.mkdir(parents=True, exist_ok=True)
    from medvl.benchmarks.near_images import DIM, ROWS, encode_descriptor

    descriptors = rng.standard_normal((n, ROWS, DIM)).astype(np.float32)
    vectors = rng.standard_normal((n, dim)).astype(np.float32)
    captions = [f"Synthetic caption {i} of the {WORDS[i % len(WORDS)]} in case {i}" for i in range(n)]
    shas = [hashlib.sha256(str(i).encode()).hexdigest() for i in range(n)]  # distinct in the first 16 bytes too
    for i in range(20, n, 20):
        j = int(rng.integers(0, i))
        kind = (i // 20) % 4
        if kind == 0:
            shas[i] = shas[j]
        elif kind == 1:  # a re-encoded copy: nearly the same descriptor, accepted without keypoints
            descriptors[i] = descriptors[j] + 1e-3 * rng.standard_normal((ROWS, DIM))
        elif kind == 2:
            captions[i] = captions[j].upper()
        else:  # a paraphrase: the same clinical facts, another caption, a close embedding
            vectors[i] = vectors[j] + 0.01 * rng.standard_normal(dim)
            captions[i] = captions[j].replace(" of the ", " for the ")
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    descriptors /= np.linalg.norm(descriptors, axis=2, keepdims=True)
    handles = [dirs.prepared_shard(r).open("w") for r in range(shards)]
    blobs = [dirs.embedding_shard(r).open("wb") for r in range(shards)]
    for i in range(n):
        record = {
            "id": f"r{i}",
            "text": captions[i],
            "metadata": {
                "order": [0, 0, i],
                "domain": DOMAINS[i % 5],
                "modality": "ct",
                "source": "bench",
                "images_info": [{"sha256": shas[i], "signature": encode_descriptor(descriptors[i])}],
            },
            "media": [{"id": f"r{i}#0", "type": 0, "url": "/x.png", "path": "/x.png"}],
        }
        handles[i % shards].write(json.dumps(record) + "\n")
        blobs[i % shards].write(vectors[i].astype(np.float16).tobytes())
    for handle in handles + blobs:
        handle.close()
    (dirs.prepared / "embedding.json").write_text(json.dumps({"dim": dim, "model": "synthetic"}))


# ---------------------------------------------------------------------------- one measurement


def _status_mb(field: str) -> float:
    """VmRSS / VmHWM (peak) of this process, from /proc/self/status."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise KeyError(field)


def _reset_peak() -> float:
    """Reset the kernel's peak-RSS mark to the current RSS (Linux clear_refs 5); return that RSS."""
    Path("/proc/self/clear_refs").write_text("5")
    return _status_mb("VmRSS")


def _step_seconds(logs: Path) -> dict[str, float]:
    steps = json.loads(next((logs / "stats").glob("*.json")).read_text())
    return {
        s["name"].split(": ", 1)[-1]: (s["time_stats"] or {}).get("total", 0.0)
        if isinstance(s["time_stats"], dict)
        else 0.0
        for s in steps
    }


def measure(stage: str, n: int, work: Path, part: int = 1) -> dict[str, Any]:
    """Run one stage on `n` records in this process; seconds per step and peak RSS growth."""
    from datatrove.executor import LocalPipelineExecutor

    from medvl.curate.config import CurateConfig
    from medvl.curate.pipeline import build_stages
    from medvl.curate.store import RunDirs

    dirs = RunDirs(work / f"{stage}-{n}-{part}")
    source = work / f"inputs-{n}" / "figures.jsonl"
    config = CurateConfig.model_validate(
        {
            "sources": [{"format": "pmc_jsonl", "path": str(source)}],
            "filter": {"text": {"min_medical_terms": 1}, "image": {"enabled": stage == "image", "min_side": 64}},
            "dedup": {"semantic": {"model": "hashing"}},
            "sample": {"by": "domain", "cap_per_class": n // 10, "max_total": n // 4},
        }
    )
    if stage in ("dedup", "sample", "concept"):
        shutil.copytree(work / f"prepared-{n}" / "_work" / "prepared", dirs.prepared)
    from medvl.benchmarks.near_images import describe  # imports and first-call set-up are not timed
    from medvl.io.images import load_image

    describe(load_image(next((work / "inputs-10" / "figures").glob("*.png"))))
    baseline = _reset_peak()
    started = time.perf_counter()
    if stage in ("prepare", "image"):
        steps = build_stages(config, dirs)[0].steps
        if stage == "image":  # reader -> ingest check -> image filter -> writer
            steps = [s for s in steps if s.name not in ("text filter", "caption embedder")]
        LocalPipelineExecutor(steps, tasks=1, logging_dir=str(dirs.logs("prepare"))).run()
        seconds = _step_seconds(dirs.logs("prepare"))
    elif stage == "dedup":
        from medvl.curate.dedup import dedup_corpus
        from medvl.io.jsonl import RejectLog

        with RejectLog(dirs.rejects / "dedup-00000.jsonl") as rejects:
            stats = dedup_corpus(dirs, 4, config.dedup, rejects)
        seconds = {"dedup": time.perf_counter() - started, "dropped": sum(stats.dropped.values())}
    elif stage == "sample":
        from medvl.curate.sampling import select
        from medvl.curate.store import iter_prepared

        select(iter_prepared(dirs, 4), config.sample)
        seconds = {"sample": time.perf_counter() - started}
    else:
        from medvl.curate.finalize import write_outputs
        from medvl.curate.generate_step import GenerateStep

        dirs.selected.mkdir(parents=True, exist_ok=True)
        for rank in range(4):
            rows = sum(1 for _ in dirs.prepared_shard(rank).open())
            dirs.selected_shard(rank).write_text(json.dumps(list(range(rows))))
        for rank in range(4):
            GenerateStep(dirs, config.generate, "symlink").run(None, rank, 4)
        write_outputs(dirs, 4)
        seconds = {"concept gen + finalize": time.perf_counter() - started}
    return {"seconds": seconds, "peak_mb": max(0.0, _status_mb("VmHWM") - baseline)}


def _in_subprocess(stage: str, work: Path, n: int, part: int) -> dict[str, Any]:
    command = [sys.executable, __file__, "--worker", stage, str(n), str(work), str(part)]
    done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "MEDVL_LOG": "WARNING"})
    if done.returncode != 0:
        raise RuntimeError(f"{stage} n={n} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def both_sizes(stage: str, sizes: tuple[int, int], work: Path) -> list[dict[str, Any]]:
    """The stage at both sizes, two passes each in mirrored order (small, large, large, small):
    mean seconds per step, largest peak."""
    passes = mirrored(sizes, (1, 2), partial(_in_subprocess, stage, work))
    return [{"seconds": {step: statistics.mean(p["seconds"][step] for p in passes[n])
                         for step in passes[n][0]["seconds"]},
             "peak_mb": max(p["peak_mb"] for p in passes[n])} for n in sizes]


# ---------------------------------------------------------------------------- generation


def _generation_seconds(config: Any, n: int, folder: Path, name: str, part: int) -> float:
    """One timed pass: `GenerateStep` over `n` fresh records, or bare `complete_many` on their requests."""
    from medvl.curate.generate import FigureInput, self_instruct_request
    from medvl.curate.generate_step import GenerateStep, image_refs
    from medvl.curate.store import RunDirs
    from medvl.io.jsonl import iter_appended
    from medvl.llm.client import LLMClient

    dirs = RunDirs(folder / f"{name}-{part}")  # its own LLM cache: nothing is answered from an earlier pass
    write_prepared(dirs, n, shards=1)
    if name == "step":
        dirs.selected.mkdir(parents=True, exist_ok=True)
        dirs.selected_shard(0).write_text(json.dumps(list(range(n))))
        started = time.perf_counter()
        GenerateStep(dirs, config, "symlink").run(None, 0, 1)
        return time.perf_counter() - started
    requests = [
        self_instruct_request(FigureInput.from_prepared(r, image_refs(r)), config.self_instruct)
        for r in iter_appended(dirs.prepared_shard(0))
    ]
    llm = config.self_instruct.llm.model_copy(update={"cache_dir": str(dirs.llm_cache)})
    started = time.perf_counter()
    LLMClient(llm).run_many(requests, progress=False)
    return time.perf_counter() - started


def generation_rate(concurrency: int, latency: float, work: Path) -> dict[str, Any]:
    """GenerateStep's req/s against C/L, and against bare `complete_many` on the same requests,
    in two passes each, mirrored (step, complete_many, complete_many, step)."""
    from medvl.curate.config import GenerateConfig
    from medvl.llm.mock_server import start_mock_server_process

    n = concurrency * 10
    with start_mock_server_process(responder="medvl.curate.mock:responder", latency_s=latency) as server:
        llm = {"base_url": server.base_url, "model": "mock", "max_concurrency": concurrency, "max_retries": 0}
        config = GenerateConfig.model_validate(
            {"concept": {"enabled": False}, "self_instruct": {"enabled": True, "llm": llm, "few_shot": 4}}
        )
        timer = partial(_generation_seconds, config, n, work / f"gen-{concurrency}-{latency}")
        passes = {name: sum(times) for name, times in mirrored(("step", "complete_many"), (1, 2), timer).items()}
    bound, requests = concurrency / latency, 2 * n
    return {
        "bench": "curate_throughput",
        "stage": "generation (self-instruct)",
        "setting": f"C={concurrency} L={latency}",
        "requests": requests,
        "req_per_s": requests / passes["step"],
        "bound_req_per_s": bound,
        "fraction_of_bound": requests / passes["step"] / bound,
        "complete_many_req_per_s": requests / passes["complete_many"],
        "vs_complete_many": passes["complete_many"] / passes["step"],
    }


# ---------------------------------------------------------------------------- run


def run(quick: bool = False) -> list[dict]:
    logging.getLogger("medvl").setLevel(logging.WARNING)
    small, large = SIZES["quick" if quick else "full"]
    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="medvl-curate-bench-") as tmp:
        work = Path(tmp)
        from medvl.curate.store import RunDirs

        write_inputs(work / "inputs-10", 10)  # warm-up images
        for n in (small, large):
            write_inputs(work / f"inputs-{n}", n)
            write_inputs(work / f"inputs-{n // IMAGE_SHARE}", n // IMAGE_SHARE)
            write_prepared(RunDirs(work / f"prepared-{n}"), n)
        for stage in ("prepare", "image", "dedup", "sample", "concept"):
            sizes = (small // IMAGE_SHARE, large // IMAGE_SHARE) if stage == "image" else (small, large)
            first, second = both_sizes(stage, sizes, work)
            for step, t_small in first["seconds"].items():
                if (
                    step in ("dropped", "ingest check")
                    or step.startswith("🐿")
                    or (stage, step) == ("image", "ingest")
                ):
                    continue
                t_large = second["seconds"][step]
                rows.append(
                    {
                        "bench": "curate_throughput",
                        "stage": step,
                        "records": sizes,
                        "seconds": (round(t_small, 3), round(t_large, 3)),
                        "records_per_s": (sizes[0] / max(t_small, 1e-9), sizes[1] / max(t_large, 1e-9)),
                        "scaling": (t_large / max(t_small, 1e-9)) / (sizes[1] / sizes[0]),
                        "peak_mb": (round(first["peak_mb"], 1), round(second["peak_mb"], 1)),
                        "peak_bytes_per_record": round(second["peak_mb"] * 2**20 / sizes[1]),
                    }
                )
        for concurrency, latency in GENERATION["quick" if quick else "full"]:
            rows.append(generation_rate(concurrency, latency, work))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller inputs (about 40 s)")
    parser.add_argument("--worker", nargs=4, metavar=("STAGE", "N", "WORK", "PART"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        stage, n, work, part = args.worker
        print(json.dumps(measure(stage, int(n), Path(work), int(part))))
        return
    started = time.perf_counter()
    rows = run(quick=args.quick)
    print(f"{'stage':<28}{'records':>16}{'records/s':>22}{'scaling':>9}{'peak MB':>16}")
    for row in rows:
        if "scaling" in row:
            rate = "{:,.0f} / {:,.0f}".format(*row["records_per_s"])
            print(
                f"{row['stage']:<28}{'{} / {}'.format(*row['records']):>16}{rate:>22}"
                f"{row['scaling']:>9.2f}{'{} / {}'.format(*row['peak_mb']):>16}"
            )
    for row in rows:
        if "bound_req_per_s" in row:
            print(
                f"{row['stage']} {row['setting']}: {row['req_per_s']:.1f} req/s of C/L = "
                f"{row['bound_req_per_s']:.0f} -> {row['fraction_of_bound']:.2f}; bare complete_many "
                f"{row['complete_many_req_per_s']:.1f} req/s (ratio {row['vs_complete_many']:.2f})"
            )
    print(f"({time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
