"""`medvl eval run` with the local backend: batched vs one question at a time, in one run.

A tiny LLaVA model (random weights, SmolLM2 tokenizer) answers VQA-RAD test questions (a fixed
subset: the first 128 in file order; `--quick`: 32; `--all`: all 451) twice through the full eval pipeline — image loading, prompt
building, generation, appending predictions — once with batch size 1 (what LLaVA-Med's and
HuatuoGPT-Vision's eval scripts do) and once batched. Every answer is forced to the same length
(`min_new_tokens`), so both runs do the same work. Prints samples/s, the ratio, and how many
answers are identical between the two runs (greedy decoding should make them equal).

    python bench/eval_throughput.py [--quick | --all] [--batch-size 16]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MAX_NEW_TOKENS = 16


def _vqa_rad_root() -> Path:
    for candidate in (ROOT / "data" / "vqa-rad", Path(os.environ.get("MEDVL_SHARED", ROOT.parent / "shared"))
                      / "data" / "vqa-rad"):
        if (candidate / "VQA_RAD Dataset Public.json").is_file():
            return candidate
    raise SystemExit("VQA-RAD not found in data/vqa-rad or ../shared/data/vqa-rad")


def _tiny_model(folder: Path) -> Path:
    import torch

    from medvl.model.build import build_model
    from medvl.model.checkpoint import save_model
    from medvl.model.offline import smollm2_tokenizer
    from medvl.model.spec import tiny_spec

    torch.manual_seed(0)
    spec = tiny_spec(str(smollm2_tokenizer()), text__hidden_size=256, text__num_layers=4, text__intermediate_size=512)
    model, processor = build_model(spec)
    model.generation_config.min_new_tokens = MAX_NEW_TOKENS  # equal work per answer in both runs
    return save_model(model, processor, folder, card=False)


def _run(model: Path, root: Path, out: Path, batch_size: int, limit: int | None) -> tuple[dict, dict[str, str]]:
    from medvl.eval.runner import EvalConfig, run_eval
    from medvl.io.jsonl import read_records

    config = EvalConfig.model_validate({
        "benchmark": {"name": "vqa_rad", "root": str(root), "limit": limit},
        "backend": {"kind": "local", "model": str(model)},
        "generation": {"max_new_tokens": MAX_NEW_TOKENS, "batch_size": batch_size},
        "output_dir": str(out), "report": False,
    })
    run_eval(config)
    scores = json.loads((out / "scores.json").read_text())
    outputs = {r["id"]: r["output"] for r in read_records(out / "predictions.jsonl")}
    return scores["throughput"], outputs


def run(quick: bool = False, batch_size: int = 16, limit: int | None = 128) -> list[dict]:
    """Rows for bench/run_all.py; `limit=None` answers all 451 questions (quick: 32)."""
    limit = 32 if quick else limit
    root = _vqa_rad_root()
    with tempfile.TemporaryDirectory() as tmp:
        model = _tiny_model(Path(tmp) / "model")
        single, single_outputs = _run(model, root, Path(tmp) / "batch1", 1, limit)
        batched, batched_outputs = _run(model, root, Path(tmp) / f"batch{batch_size}", batch_size, limit)
    same = sum(single_outputs[k] == batched_outputs.get(k) for k in single_outputs)
    base = single["items_per_s"]
    return [
        {"bench": "eval_throughput", "setting": "local, one at a time", "samples": single["answered"],
         "samples_per_s": base, "ratio": 1.0},
        {"bench": "eval_throughput", "setting": f"local, batch {batch_size}", "samples": batched["answered"],
         "samples_per_s": batched["items_per_s"], "ratio": batched["items_per_s"] / base,
         "identical_answers": f"{same}/{len(single_outputs)}"},
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="the first 32 questions")
    size.add_argument("--all", action="store_true", help="all 451 test questions (about 10 minutes on 2 cores)")
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args()
    rows = run(quick=args.quick, batch_size=args.batch_size, limit=None if args.all else 128)
    print(f"{'setting':<26}{'samples':>8}{'samples/s':>12}{'ratio':>8}")
    for row in rows:
        print(f"{row['setting']:<26}{row['samples']:>8}{row['samples_per_s']:>12.2f}{row['ratio']:>7.2f}x")
    print(f"identical answers batched vs one at a time: {rows[1]['identical_answers']}")


if __name__ == "__main__":
    main()
