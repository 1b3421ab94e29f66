"""Training sections of the GPU check: `medvl train` (checkpointing off / on, LoRA, QLoRA), the bare
PyTorch loop that is its baseline, a profile of that loop, and the FSDP / DeepSpeed smoke runs.

Throughput is measured in windows of `Sizes.window` optimizer steps; the first window is the
warm-up and is dropped, and a value is the median over the measured windows. medvl's rows come
from the run's own `metrics.jsonl` (tokens/s, images/s, MFU); the bare loop computes the same
numbers with the same FLOPs model (`medvl.train.metrics.FlopsModel`) against the same peak.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from collections import Counter
from importlib.util import find_spec
from pathlib import Path
from typing import Any

from gpu_setup import ROOT, TINY_SPEC, Context, Row, Skip, peak_gib, spec_for, sync


def train_config(ctx: Context, name: str, steps: int, checkpointing: bool = False,
                 lora: dict | None = None, model_dir: Path | None = None, data: Path | None = None) -> Any:
    """The `medvl train` config of every training section: instruct stage (vision tower frozen), fp32
    weights with bf16 autocast on the GPU, one warm-up window plus `steps` measured steps."""
    from medvl.train.config import TrainConfig

    sizes = ctx.sizes
    return TrainConfig.model_validate({
        "stage": "instruct", "model": {"path": str(model_dir or ctx.model_dir), "dtype": "float32"},
        "lora": lora or {},
        "data": {"sources": [{"path": str(data or ctx.data)}], "max_length": sizes.max_length,
                 "num_workers": sizes.workers},
        "optim": {"lr": 1e-4, "batch_size": sizes.batch, "max_steps": sizes.window + steps,
                  "warmup_ratio": 0.0, "scheduler": "constant_with_warmup"},
        "precision": "bf16" if ctx.cuda else "fp32", "gradient_checkpointing": checkpointing,
        "output_dir": str(ctx.work / name), "save": {"every_steps": 1_000_000, "resume": "never"},
        "logging": {"every_steps": sizes.window, "report_to": [], "progress_bar": False},
    })


def measured_row(case: str, windows: list[dict[str, float]], ctx: Context) -> Row:
    """A training row from per-window rates (tokens_per_s, images_per_s, mfu), warm-up window dropped."""
    measured = windows[1:]
    if not measured:
        raise RuntimeError("no measured window after the warm-up")

    def median(key: str) -> float:
        return statistics.median(w[key] for w in measured)

    tokens, samples = median("tokens_per_s"), median("images_per_s")  # one image per record
    return {"case": case, "steps": ctx.sizes.window * len(measured), "tokens/s": tokens,
            "samples/s": samples, "tokens/sample": tokens / samples if samples else None,
            "peak GPU GiB": peak_gib(ctx), "MFU": median("mfu")}


def reuse_data_check(ctx: Context, config: Any) -> None:
    """Give the run build's data check, which `medvl train` reuses when its fingerprint matches."""
    target = Path(config.output_dir) / "data_check"
    if not target.exists():
        shutil.copytree(ctx.work / "data_check", target)


def _run_medvl(ctx: Context, case: str, config: Any) -> list[Row]:
    from medvl.train.metrics import read_metrics
    from medvl.train.runner import run_training

    reuse_data_check(ctx, config)
    run_training(config)
    out = Path(config.output_dir)
    row = measured_row(case, read_metrics(out / "metrics.jsonl"), ctx)
    shutil.rmtree(out, ignore_errors=True)  # its saved model: gigabytes no later section reads
    return [row]


def train(ctx: Context) -> list[Row]:
    return _run_medvl(ctx, "medvl train, checkpointing off", train_config(ctx, "train", ctx.sizes.steps))


def train_checkpointing(ctx: Context) -> list[Row]:
    config = train_config(ctx, "train-gc", ctx.sizes.steps, checkpointing=True)
    return _run_medvl(ctx, "medvl train, checkpointing on", config)


def lora(ctx: Context) -> list[Row]:
    config = train_config(ctx, "lora", ctx.sizes.lora_steps, lora={"enabled": True})
    return _run_medvl(ctx, f"medvl train, LoRA r{config.lora.r} on the LLM", config)


def qlora(ctx: Context) -> list[Row]:
    from medvl.train.modeling import LoraUnavailable

    config = train_config(ctx, "qlora", ctx.sizes.lora_steps, lora={"enabled": True, "quantize": "4bit"})
    try:
        return _run_medvl(ctx, f"medvl train, QLoRA 4-bit r{config.lora.r} on the LLM", config)
    except LoraUnavailable as exc:
        raise Skip(str(exc)) from exc


class BareLoop:
    """The loop a user writes by hand over the same model, batches (dataset, collator, seeded shuffle)
    and loss (`next_token_loss`: logits on supervised positions only): bf16 autocast, AdamW (fused on
    the GPU, as the Trainer's default), gradient clipping."""

    def __init__(self, ctx: Context):
        import torch
        from torch.utils.data import DataLoader

        from medvl.train.dataset import Collator, TrainDataset
        from medvl.train.metrics import FlopsModel, peak_flops
        from medvl.train.modeling import apply_policy, component_params, load_start_model
        from medvl.train.runner import prepare_data
        from medvl.train.trainer import compute_dtype

        self.ctx = ctx
        config = train_config(ctx, "loop", ctx.sizes.steps)
        model, processor = load_start_model(config)
        apply_policy(model, config.policy())
        reuse_data_check(ctx, config)
        _, sources, encoder, entries = prepare_data(config, processor, Path(config.output_dir),
                                                    progress=False)
        collate = Collator(processor.tokenizer.pad_token_id, pad_to_multiple_of=8 if ctx.cuda else None)
        self.loader = DataLoader(
            TrainDataset(sources, entries, encoder, processor.image_processor), collate_fn=collate,
            batch_size=config.optim.batch_size, shuffle=True, num_workers=config.data.num_workers,
            pin_memory=ctx.cuda, generator=torch.Generator().manual_seed(config.data.seed))
        self.device, self.autocast = ctx.sizes.device, config.precision == "bf16"
        self.model = model.to(self.device).train()
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(self.params, lr=config.optim.lr, fused=ctx.cuda)
        self.max_grad_norm = config.optim.max_grad_norm
        vision = model.config.vision_config
        patches = (vision.image_size // vision.patch_size) ** 2 + (vision.model_type == "clip_vision_model")
        self.flops = FlopsModel(component_params(model), patches, encoder.tokens_per_image)
        self.peak = peak_flops(config.logging.peak_tflops, compute_dtype(config))
        self.batches = self._forever()

    def _forever(self) -> Any:
        while True:
            yield from self.loader

    def run(self, steps: int) -> dict[str, float]:
        """`steps` optimizer steps: tokens/s, images/s, MFU, the share of the time spent waiting for data
        (the measured steps stay inside one epoch: `Sizes.records` covers them) and of padded positions."""
        import torch

        from medvl.train.dataset import STAT_KEYS
        from medvl.train.trainer import next_token_loss

        counts, waited, start = Counter(), 0.0, time.perf_counter()
        for _ in range(steps):
            before = time.perf_counter()
            batch = next(self.batches)
            waited += time.perf_counter() - before
            counts.update({key: batch.pop(key) for key in STAT_KEYS})
            counts["positions"] += batch["input_ids"].numel()
            batch = {key: value.to(self.device, non_blocking=True) for key, value in batch.items()}
            with torch.autocast(self.device, dtype=torch.bfloat16, enabled=self.autocast):
                loss, supervised, _ = next_token_loss(self.model, batch)
            (loss / max(supervised, 1)).backward()
            torch.nn.utils.clip_grad_norm_(self.params, self.max_grad_norm)
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
        sync(self.ctx)
        seconds = time.perf_counter() - start
        flops = self.flops.step_flops(counts["num_tokens"], counts["num_images"], counts["num_supervised"])
        return {"tokens_per_s": counts["num_tokens"] / seconds, "mfu": flops / seconds / self.peak,
                "images_per_s": counts["num_images"] / seconds, "data_wait": waited / seconds,
                "padding": 1 - counts["num_tokens"] / counts["positions"], "seconds": seconds}


def bare_loop(ctx: Context) -> list[Row]:
    """The baseline (checkpointing off), then a profile of a few more of its steps."""
    loop = BareLoop(ctx)
    windows = [loop.run(ctx.sizes.window) for _ in range(1 + ctx.sizes.steps // ctx.sizes.window)]
    row = measured_row("bare PyTorch loop, checkpointing off", windows, ctx)
    return [row, *_profile(ctx, loop)]


def _profile(ctx: Context, loop: BareLoop) -> list[Row]:
    """Where a step's time goes: device busy share, data waits, kernel kinds; the full table to --out."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if ctx.cuda else [])
    with profile(activities=activities) as profiler:
        stats = loop.run(ctx.sizes.profile_steps)
    events = profiler.key_averages()
    key, kind = ("self_device_time_total", DeviceType.CUDA) if ctx.cuda else \
        ("self_cpu_time_total", DeviceType.CPU)
    (ctx.out / "profile-train.txt").write_text(events.table(sort_by=key, row_limit=40), encoding="utf-8")
    timed = sorted((e for e in events if e.device_type == kind), key=lambda e: getattr(e, key), reverse=True)
    total = sum(getattr(e, key) for e in timed) or 1.0
    shares = Counter()
    for event in timed:
        shares[_kernel_kind(event.key)] += getattr(event, key) / total
    where = "GPU kernels" if ctx.cuda else "CPU operators (self time)"
    rows = [{"item": "profiled", "value": f"{ctx.sizes.profile_steps} bare-loop steps after the measured "
                                          f"ones, {stats['seconds']:.2f} s; full table: profile-train.txt"},
            {"item": "waiting for the next batch",
             "value": f"{100 * stats['data_wait']:.0f}% of the wall time"},
            {"item": "padding", "value": f"{100 * stats['padding']:.0f}% of the positions (batches padded to "
                                         "their longest record; FLOPs and tokens/s count real tokens only)"},
            {"item": f"{where} by kind",
             "value": ", ".join(f"{k} {100 * v:.0f}%" for k, v in shares.most_common())}]
    if ctx.cuda:
        rows.insert(1, {"item": "GPU busy (kernel time / wall time)",
                        "value": f"{100 * total / 1e6 / stats['seconds']:.0f}%"})
    rows += [{"item": f"top {index}", "value": f"{100 * getattr(e, key) / total:.0f}% {e.key[:100]}"}
             for index, e in enumerate(timed[:5], 1)]
    return [{"table": "profile", **row} for row in rows]


def _kernel_kind(name: str) -> str:
    lowered = name.lower()
    if any(k in lowered for k in ("log_softmax", "cross_entropy", "nll_loss")):
        return "loss"
    if any(k in lowered for k in ("flash", "fmha", "attention", "sdpa", "softmax")):
        return "attention"
    if any(k in lowered for k in ("gemm", "matmul", "nvjet", "cutlass", "xmma", "aten::mm", "aten::addmm",
                                  "aten::bmm")):
        return "matmul"
    if any(k in lowered for k in ("adam", "foreach", "multi_tensor")):
        return "optimizer"
    return "other"


# the smoke runs' small model reads the same records, up to 2k tokens long
SMOKE_SPEC = {**TINY_SPEC, "text": {**TINY_SPEC["text"], "max_position_embeddings": 4096}}


def distributed_smoke(ctx: Context) -> list[Row]:
    """`accelerate launch` of `medvl train` under FSDP and DeepSpeed ZeRO-2, one GPU, a small model."""
    rows = []
    for name, short, config_file in (("FSDP full shard", "fsdp", "fsdp.yaml"),
                                     ("DeepSpeed ZeRO-2", "deepspeed", "zero2.yaml")):
        if not ctx.cuda:
            rows.append({"run": name, "status": "skipped: accelerate runs it on GPUs only"})
        elif short == "deepspeed" and find_spec("deepspeed") is None:
            rows.append({"run": name, "status": "skipped: deepspeed is not installed (PyPI ships it as "
                                                "source that compiles against torch: no wheel can travel)"})
        else:
            rows.append({"run": name, **launch(ctx, short, ROOT / "configs" / "accelerate" / config_file)})
    return rows


def launch(ctx: Context, name: str, accelerate_config: Path) -> Row:
    """`accelerate launch --config_file ... -m medvl.cli train` of the small model on a few records,
    with the projector at 10x the rest's learning rate (`optim.projector_lr`: its own optimizer groups)."""
    from medvl.config import dump_config
    from medvl.model.build import build_model
    from medvl.model.checkpoint import save_model
    from medvl.train.metrics import read_metrics

    small, data = ctx.work / "smoke-model", ctx.work / "smoke.jsonl"
    if not small.is_dir():
        save_model(*build_model(spec_for(ctx, SMOKE_SPEC)), small)
        records = ctx.data.read_text(encoding="utf-8").splitlines(keepends=True)
        data.write_text("".join(records[: 2 * ctx.sizes.batch]), encoding="utf-8")
    config = train_config(ctx, f"smoke-{name}", 2, model_dir=small, data=data)
    config.optim.projector_lr = 10 * config.optim.lr
    dump_config(config, ctx.work / f"smoke-{name}.yaml")
    command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(accelerate_config),
               "--num_processes", "1", "-m", "medvl.cli", "train", str(ctx.work / f"smoke-{name}.yaml")]
    path = os.pathsep.join(p for p in (str(ROOT / "src"), os.environ.get("PYTHONPATH")) if p)
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": path})
    (ctx.out / f"smoke-{name}.log").write_text(done.stdout + done.stderr, encoding="utf-8")
    out = Path(config.output_dir)
    if done.returncode or not (out / "config.json").is_file():
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        return {"status": f"failed (exit code {done.returncode}): {last[:200]}"}
    summary = json.loads((out / "train_summary.json").read_text(encoding="utf-8"))
    last = read_metrics(out / "metrics.jsonl")[-1]
    return {"status": "ok", "detail": f"{summary['global_step']} steps in {summary['processes']} process, "
                                      f"last logged loss {summary['final_loss']}, projector lr "
                                      f"{last['projector_learning_rate'] / last['learning_rate']:.3g}x the rest's; "
                                      "the model saved natively"}
