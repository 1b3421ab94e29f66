"""Training throughput of `medvl train` against a hand-written PyTorch loop, and checkpointing memory.

Same run, same tiny model (seeded build), same data, same batches:
- `medvl train` = `medvl.train.runner.run_training` (Trainer, data pipeline, metrics): tokens/s
  from its own `metrics.jsonl` (non-padding tokens / wall time per logging window, first window
  dropped as warm-up);
- a minimal loop: DataLoader → forward → backward → clip → AdamW step, timed the same way, in two
  flavours: the plain one (`model(**batch).loss`, logits over the whole vocabulary at every
  position) and one computing the same math as medvl (logits on supervised positions only), which
  isolates the engine's overhead from that algorithmic saving;
- the three run twice, in mirrored order (medvl, plain, same, same, plain, medvl), and each
  tokens/s is the mean of its two runs;
- peak memory with and without gradient checkpointing: the RSS high-water mark of a fresh
  subprocess (`ru_maxrss`; tracemalloc cannot see torch's allocations), plus its growth over the
  RSS at the start of training.

    python bench/train_throughput.py [--quick]
    python bench/train_throughput.py --gpu-model runs/llava_med_stage2 [--batch-size 4]   # on a GPU

`--gpu-model` (or MEDVL_BENCH_GPU_MODEL for `run()`) measures a real 0.5B-7B native model in bf16
on CUDA: tokens/s, MFU (peak from `medvl.train.metrics`) and `torch.cuda.max_memory_allocated`,
with and without gradient checkpointing.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from interleave import mirrored  # bench/interleave.py

WORDS = ("lesion opacity left right upper lower lobe nodule margin contrast enhancement signal axial coronal "
         "normal abnormal mass fluid effusion cardiac border density calcified smooth irregular small large").split()


def write_data(folder: Path, samples: int, answer_words: int, context_words: int = 0) -> Path:
    """Records with an image, a question (optionally after `context_words` of report text) and an answer."""
    from PIL import Image

    rng = random.Random(0)
    rows = []
    for index in range(samples):
        color = tuple(rng.randrange(256) for _ in range(3))
        image = Image.new("RGB", (64, 64), (255, 255, 255))
        image.paste(color, (rng.randrange(30), rng.randrange(30), 40, 40))
        image.save(folder / f"{index}.png")
        answer = " ".join(rng.choice(WORDS) for _ in range(answer_words))
        context = " ".join(rng.choice(WORDS) for _ in range(context_words))
        rows.append({"id": str(index), "image": f"{index}.png", "conversations": [
            {"from": "human", "value": f"<image>\n{context}\nDescribe the findings in this image."},
            {"from": "gpt", "value": answer}]})
    path = folder / "data.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def bench_config(data: Path, out: Path, steps: int, window: int, hidden: int, layers: int, batch: int,
                 checkpointing: bool = False) -> Any:
    from medvl.io.offline import smollm2_tokenizer
    from medvl.train.config import TrainConfig

    return TrainConfig.model_validate({
        "stage": "instruct", "trainable": {"vision": True},
        "model": {"spec": {
            "vision": {"image_size": 64, "patch_size": 16, "hidden_size": 64, "num_layers": 1, "num_heads": 2,
                       "intermediate_size": 128},
            "text": {"tokenizer": str(smollm2_tokenizer()), "hidden_size": hidden, "num_layers": layers,
                     "num_heads": 4, "num_kv_heads": 2, "intermediate_size": 2 * hidden, "tie_word_embeddings": True},
            "chat_template": "chatml"}},
        "data": {"sources": [{"path": str(data)}], "max_length": 1024},
        "optim": {"lr": 1e-4, "batch_size": batch, "max_steps": steps, "warmup_ratio": 0.0, "scheduler": "constant_with_warmup"},
        "gradient_checkpointing": checkpointing,
        "output_dir": str(out), "save": {"every_steps": 1_000_000, "resume": "never"},
        "logging": {"every_steps": window, "report_to": [], "progress_bar": False},
    })


def medvl_tokens_per_s(config: Any) -> float:
    from medvl.train.metrics import read_metrics
    from medvl.train.runner import run_training

    run_training(config)
    rows = read_metrics(Path(config.output_dir) / "metrics.jsonl")
    return statistics.median(r["tokens_per_s"] for r in rows[1:])


def hand_loop_tokens_per_s(config: Any, same_math: bool) -> float:
    """The loop a user would write by hand, over the same dataset, batches and model init."""
    import torch
    from torch.utils.data import DataLoader

    from medvl.model.build import build_model
    from medvl.train.dataset import Collator, TrainDataset
    from medvl.train.runner import prepare_data
    from medvl.train.trainer import next_token_loss

    torch.manual_seed(config.seed)
    model, processor = build_model(config.model.spec)
    model.train()
    _, sources, encoder, entries = prepare_data(config, processor, Path(config.output_dir), progress=False)
    dataset = TrainDataset(sources, entries, encoder, processor.image_processor)
    loader = DataLoader(dataset, batch_size=config.optim.batch_size, shuffle=True, collate_fn=Collator(
        processor.tokenizer.pad_token_id), generator=torch.Generator().manual_seed(config.seed))
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.optim.lr)
    window, times, tokens = config.logging.every_steps, [], []
    step, start, counted = 0, time.perf_counter(), 0
    while step < config.optim.max_steps:
        for batch in loader:
            counted += batch.pop("num_tokens")
            batch = {k: v for k, v in batch.items() if isinstance(v, torch.Tensor)}
            if same_math:
                loss, count, _ = next_token_loss(model, batch)
                loss = loss / count
            else:
                loss = model(**batch).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            if step % window == 0:
                times.append(time.perf_counter() - start)
                tokens.append(counted)
                start, counted = time.perf_counter(), 0
            if step == config.optim.max_steps:
                break
    return statistics.median(t / s for t, s in zip(tokens[1:], times[1:]))


def peak_memory(data: Path, work: Path, checkpointing: bool, sizes: dict[str, int]) -> dict[str, float]:
    """Run a short training in a fresh process; its RSS high-water mark and growth during training."""
    out = work / f"mem-{int(checkpointing)}"
    command = [sys.executable, __file__, "--memory-child", str(data), str(out), json.dumps(sizes)]
    if checkpointing:
        command.append("--checkpointing")
    done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    if done.returncode:
        raise RuntimeError(done.stderr[-2000:])
    return json.loads(done.stdout.strip().splitlines()[-1])


def memory_child(data: Path, out: Path, sizes: dict[str, int], checkpointing: bool) -> None:
    import resource

    import psutil
    from transformers import TrainerCallback

    from medvl.train.runner import run_training

    start: dict[str, float] = {}

    class AtStart(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            start["rss"] = psutil.Process().memory_info().rss / 2**20

    run_training(bench_config(data, out, checkpointing=checkpointing, **sizes), callbacks=[AtStart()])
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    print(json.dumps({"peak_rss_mb": round(peak, 1), "growth_mb": round(peak - start["rss"], 1)}))


def run(quick: bool = False) -> list[dict]:
    steps, window = (12, 3) if quick else (30, 5)
    sizes = {"steps": steps, "window": window, "hidden": 256, "layers": 4, "batch": 8}
    mem_sizes = {"steps": 3, "window": 1, "hidden": 256, "layers": 8, "batch": 8}
    rows: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        (work / "short").mkdir()
        (work / "long").mkdir()
        data = write_data(work / "short", samples=256, answer_words=40)
        long_data = write_data(work / "long", samples=64, answer_words=8, context_words=400)
        def tokens_per_s(name: str, part: int) -> float:
            config = bench_config(data, work / f"{name}-{part}", **sizes)
            return medvl_tokens_per_s(config) if name == "medvl" else hand_loop_tokens_per_s(config, name == "same")

        # medvl, plain, same, then same, plain, medvl: steady drift hits all three alike
        rate = {k: statistics.mean(v) for k, v in mirrored(("medvl", "plain", "same"), (1, 2), tokens_per_s).items()}
        common = {"model": f"tiny LLaVA, LLM {sizes['hidden']}x{sizes['layers']}, 49k vocab", "batch": sizes["batch"],
                  "steps": steps}
        rows.append({"case": "vs plain loop (full-vocab logits)", "vs_hand_loop": rate["medvl"] / rate["plain"],
                     "medvl_tokens_per_s": rate["medvl"], "loop_tokens_per_s": rate["plain"], **common})
        rows.append({"case": "vs loop with the same math", "vs_hand_loop": rate["medvl"] / rate["same"],
                     "medvl_tokens_per_s": rate["medvl"], "loop_tokens_per_s": rate["same"], **common})
        without = peak_memory(long_data, work, False, mem_sizes)
        with_gc = peak_memory(long_data, work, True, mem_sizes)
        rows.append({"case": "gradient checkpointing", "memory_ratio": with_gc["peak_rss_mb"] / without["peak_rss_mb"],
                     "growth_ratio": with_gc["growth_mb"] / max(without["growth_mb"], 1e-9),
                     "peak_rss_mb_off": without["peak_rss_mb"], "peak_rss_mb_on": with_gc["peak_rss_mb"],
                     "growth_mb_off": without["growth_mb"], "growth_mb_on": with_gc["growth_mb"],
                     "model": f"LLM {mem_sizes['hidden']}x{mem_sizes['layers']}", "batch": mem_sizes["batch"],
                     "tokens_per_sample": "~830, 10 supervised"})
        gpu_model = os.environ.get("MEDVL_BENCH_GPU_MODEL")
        if gpu_model:
            rows.extend(gpu_rows(Path(gpu_model), work, data, batch=4, steps=steps))
    return rows


def gpu_rows(model_dir: Path, work: Path, data: Path, batch: int, steps: int) -> list[dict]:
    """bf16 tokens/s, MFU and peak GPU memory of a real model, checkpointing off and on."""
    import torch

    from medvl.train.config import TrainConfig
    from medvl.train.metrics import read_metrics
    from medvl.train.runner import run_training

    if not torch.cuda.is_available():
        raise RuntimeError("--gpu-model needs a CUDA GPU")
    rows = []
    for checkpointing in (False, True):
        out = work / f"gpu-{int(checkpointing)}"
        config = TrainConfig.model_validate({
            "stage": "instruct", "model": {"path": str(model_dir), "dtype": "float32"}, "precision": "bf16",
            "data": {"sources": [{"path": str(data)}], "max_length": 2048},
            "optim": {"lr": 1e-5, "batch_size": batch, "max_steps": steps, "warmup_ratio": 0.0},
            "gradient_checkpointing": checkpointing, "output_dir": str(out),
            "save": {"every_steps": 1_000_000, "resume": "never"},
            "logging": {"every_steps": max(1, steps // 5), "report_to": [], "progress_bar": False},
        })
        torch.cuda.reset_peak_memory_stats()
        run_training(config)
        metrics = read_metrics(out / "metrics.jsonl")[1:]
        rows.append({"case": f"GPU {model_dir.name} bf16, checkpointing {'on' if checkpointing else 'off'}",
                     "tokens_per_s": statistics.median(r["tokens_per_s"] for r in metrics),
                     "mfu": statistics.median(r.get("mfu", 0.0) for r in metrics),
                     "peak_gpu_gb": round(torch.cuda.max_memory_allocated() / 2**30, 2),
                     "device": torch.cuda.get_device_name(), "batch": batch})
    return rows


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--memory-child":
        memory_child(Path(sys.argv[2]), Path(sys.argv[3]), json.loads(sys.argv[4]), "--checkpointing" in sys.argv)
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--gpu-model", type=Path, help="native model folder to measure on CUDA in bf16")
    args = parser.parse_args()
    if args.gpu_model:
        os.environ["MEDVL_BENCH_GPU_MODEL"] = str(args.gpu_model)
    for row in run(args.quick):
        print(json.dumps(row))


if __name__ == "__main__":
    main()
