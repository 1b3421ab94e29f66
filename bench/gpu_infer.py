"""Inference sections of the GPU check: batched generation with `Generator` and `medvl eval run`.

Generation answers VQA-RAD test questions about their images with the built model in bf16,
greedily, every answer forced to the same length (`min_new_tokens`) so that each batch size does
the same work: new tokens/s at batch 1, 32 and 128, the ratio to batch 1, and whether the answers
to the prompts run at batch 1 come out identical at the larger batches (left padding and batched
bf16 kernels may change a near-tie; the row says how many agree rather than assuming it).
"""

from __future__ import annotations

import json
import time

from gpu_setup import ROOT, Context, Row, sync


def generation(ctx: Context) -> list[Row]:
    from medvl.benchmarks import default_prompt, load_benchmark
    from medvl.eval.prompts import build_messages
    from medvl.io.images import load_image
    from medvl.model.generate import GenerationSettings, Generator

    sizes = ctx.sizes
    data = load_benchmark("vqa_rad", ctx.vqa_rad, "test")
    missing = set(data.missing_images)
    items = [item for item in data.items if item.id not in missing][: sizes.gen_prompts]
    conversations = [build_messages(default_prompt(item), len(item.images)) for item in items]
    images = [[load_image(path) for path in item.images] for item in items]
    generator = Generator.from_pretrained(ctx.model_dir, dtype="bfloat16" if ctx.cuda else "float32",
                                          device=sizes.device)
    generator.generate(conversations[:2], images[:2], GenerationSettings(max_new_tokens=2, batch_size=2))
    generator.model.generation_config.min_new_tokens = sizes.gen_tokens  # equal work per answer
    rows, reference, base_rate = [], None, None
    for batch in sizes.gen_batches:
        count = sizes.gen_batch1_prompts if batch == 1 else len(items)
        sync(ctx)
        started = time.perf_counter()
        results = generator.generate(conversations[:count], images[:count],
                                     GenerationSettings(max_new_tokens=sizes.gen_tokens, batch_size=batch))
        sync(ctx)
        seconds = time.perf_counter() - started
        texts = [r.text for r in results]
        reference = reference or texts
        compared = min(len(reference), len(texts))
        same = sum(a == b for a, b in zip(reference, texts))
        rate = sum(r.new_tokens for r in results) / seconds
        base_rate = base_rate or rate
        rows.append({"batch": batch, "prompts": count, "new tokens": sum(r.new_tokens for r in results),
                     "tokens/s": rate, "vs batch 1": rate / base_rate,
                     "same answers as batch 1": f"{same}/{compared}"})
    return rows


def evaluation(ctx: Context) -> list[Row]:
    """`medvl eval run configs/eval/vqa_rad.yaml` with the local backend on the device, as a user types it."""
    from medvl.cli import build_app

    sizes, out = ctx.sizes, ctx.work / "eval"
    args = ["eval", "run", str(ROOT / "configs" / "eval" / "vqa_rad.yaml"), f"benchmark.root={ctx.vqa_rad}",
            f"backend.model={ctx.model_dir}", f"backend.dtype={'bfloat16' if ctx.cuda else 'float32'}",
            f"backend.device={sizes.device}", f"generation.batch_size={sizes.eval_batch}",
            f"output_dir={out}"]
    if sizes.eval_limit:
        args.append(f"benchmark.limit={sizes.eval_limit}")
    if sizes.eval_tokens:
        args.append(f"generation.max_new_tokens={sizes.eval_tokens}")
    build_app()(args, prog_name="medvl", standalone_mode=False)
    scores = json.loads((out / "scores.json").read_text(encoding="utf-8"))
    lines = (out / "predictions.jsonl").read_text(encoding="utf-8").splitlines()
    errors = sum(1 for line in lines if json.loads(line).get("error"))
    unanswered = scores["items"] - scores["answered"]
    status = "ok" if not unanswered and not errors else f"failed: {unanswered} unanswered, {errors} errors"
    return [{"benchmark": f"{scores['benchmark']} {scores['split']}", "status": status,
             "questions": scores["items"], "answered": scores["answered"], "errors": errors,
             "questions/s": scores["throughput"]["items_per_s"], "batch": sizes.eval_batch,
             "max new tokens": scores["generation"]["max_new_tokens"]}]
