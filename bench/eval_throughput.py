"""`medvl eval run` with the local backend: batched vs one question at a time, in one run.

A tiny LLaVA model (random weights, SmolLM2 tokenizer) answers VQA-RAD test questions (a fixed
subset: the first 128 in file order; `--quick`: 32; `--all`: all 451) through the full eval pipeline — image loading, prompt
building, generation, appending predictions — with batch size 1 (what LLaVA-Med's and
HuatuoGPT-Vision's eval scripts do) and batched, four passes in mirrored order (one at a time,
batched, batched, one at a time). Every answer is forced to the same length (`min_new_tokens`), so
every pass does the same work. Prints samples/s, the ratio, and how many questions got the same
answer in all four passes (greedy decoding should make them equal).

    python bench/eval_throughput.py [--quick | --all] [--batch-size 16]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

from interleave import mirrored  # bench/interleave.py

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
    from medvl.io.offline import smollm2_tokenizer
    from medvl.model.spec import tiny_spec

    torch.manual_seed(0)
    spec = tiny_spec(str(smollm2_tokenizer()), text__hidden_size=256, text__num_layers=4, text__intermediate_size=512)
    model, processor = build_model(spec)
    model.generation_config.min_new_tokens = MAX_NEW_TOKENS  # equal work per answer in both runs
    return save_model(model, processor, folder, card=False)


def _run(model: Path, root: Path, out: Path, batch_size: int, limit: int | None) -> tuple[dict, dict[str, str]]:
    from medvl.eval.config import EvalConfig
    from medvl.eval.runner import run_eval
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

        def one_pass(size: int, part: int) -> tuple[dict, dict[str, str]]:
            return _run(model, root, Path(tmp) / f"batch{size}-pass{part}", size, limit)

        passes = mirrored((1, batch_size), (1, 2), one_pass)  # one at a time, batched, batched, one at a time
    rates = {size: sum(t["answered"] for t, _ in runs) / sum(t["seconds"] for t, _ in runs)
             for size, runs in passes.items()}
    answers = [outputs for runs in passes.values() for _, outputs in runs]
    same = sum(len({outputs.get(k) for outputs in answers}) == 1 for k in answers[0])
    return [
        {"bench": "eval_throughput", "setting": "local, one at a time", "samples": len(answers[0]),
         "samples_per_s": rates[1], "ratio": 1.0},
        {"bench": "eval_throughput", "setting": f"local, batch {batch_size}", "samples": len(answers[0]),
         "samples_per_s": rates[batch_size], "ratio": rates[batch_size] / rates[1],
         "identical_answers": f"{same}/{len(answers[0])}"},
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="the first 32 questions")
    size.add_argument("--all", action="store_true", help="all 451 test questions (about 20 minutes on 2 cores)")
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args()
    rows = run(quick=args.quick, batch_size=args.batch_size, limit=None if args.all else 128)
    print(f"{'setting':<26}{'samples':>8}{'samples/s':>12}{'ratio':>8}")
    for row in rows:
        print(f"{row['setting']:<26}{row['samples']:>8}{row['samples_per_s']:>12.2f}{row['ratio']:>7.2f}x")
    print(f"identical answers batched vs one at a time: {rows[1]['identical_answers']}")


if __name__ == "__main__":
    main()
