"""Benchmark loaders by name: `load_benchmark("vqa_rad", root, split="test")` → `BenchmarkData`.

Each release has its own small module with a `load(root, split, **options)` function that reads the
release's files as published (no conversion step). Names:

| name          | release and layout                                                              |
|---------------|---------------------------------------------------------------------------------|
| `vqa_rad`     | `VQA_RAD Dataset Public.json` + image folder; test = phrase_type test_freeform/test_para |
| `slake`       | SLAKE 1.0 `train/validate/test.json` + `imgs/xmlabN/source.jpg`; `lang` en/zh/all |
| `pathvqa`     | original `qas/<split>/<split>_qa.pkl` + `images/<split>/`, or the HF parquet (`data/<split>-*.parquet`) |
| `pmc_vqa`     | PMC-VQA CSV (`Figure_path, Question, Answer, Choice A..D, Answer_label`) + `images/` |
| `omnimedvqa`  | OmniMedVQA `QA_information/Open-access/*.json` + `Images/`                     |
| `mmmu_med`    | MMMU parquet per subject, the five Health & Medicine subjects                   |
| `huatuo_eval` | HuatuoGPT-Vision's `medical_multimodel_evaluation_data.json` + `images/`       |
| `llava_jsonl` | any LLaVA-format JSONL/JSON (answer = the gpt turn)                              |
"""

from __future__ import annotations

import importlib
import inspect
from pathlib import Path
from typing import Any

from medvl.eval.benchmarks.base import BenchmarkData, BenchmarkError, VQAItem

__all__ = ["BENCHMARKS", "BenchmarkData", "BenchmarkError", "VQAItem", "load_benchmark"]

BENCHMARKS: dict[str, str] = {
    "vqa_rad": "medvl.eval.benchmarks.vqa_rad",
    "slake": "medvl.eval.benchmarks.slake",
    "pathvqa": "medvl.eval.benchmarks.pathvqa",
    "pmc_vqa": "medvl.eval.benchmarks.pmc_vqa",
    "omnimedvqa": "medvl.eval.benchmarks.omnimedvqa",
    "mmmu_med": "medvl.eval.benchmarks.mmmu",
    "huatuo_eval": "medvl.eval.benchmarks.huatuo",
    "llava_jsonl": "medvl.eval.benchmarks.llava_jsonl",
}


def load_benchmark(name: str, root: str | Path, split: str = "test", **options: Any) -> BenchmarkData:
    """Load one split of a benchmark from local files; unknown names or options, and a split with no
    question at all, are errors (`BenchmarkError`, a `UserError`)."""
    if name not in BENCHMARKS:
        raise BenchmarkError(f"unknown benchmark {name!r}; known: {', '.join(BENCHMARKS)}")
    loader = importlib.import_module(BENCHMARKS[name]).load
    accepted = [p for p in inspect.signature(loader).parameters if p not in ("root", "split")]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise BenchmarkError(f"{name}: unknown option(s) {unknown}; accepted: {accepted or 'none'}")
    root = Path(root).expanduser()
    if not root.exists():
        raise BenchmarkError(f"{name}: {root} does not exist")
    data = loader(root, split, **options)
    if not data.items and not data.rejects:
        chosen = f" with options {options}" if options else ""
        raise BenchmarkError(f"{name} [{split}]: no questions found in {root}{chosen}; check the split and options")
    return data
