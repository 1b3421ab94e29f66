"""Training metrics: the FLOPs/MFU estimate, per-device peak FLOPs, `metrics.jsonl` and the loss plot.

FLOPs of one step (matmul FLOPs; attention score FLOPs and embedding lookups are left out):

    FLOPs = Σ_component  k · P_c · T_c
    k = 6 for a trained component (forward 2 + input gradients 2 + weight gradients 2),
        4 for a frozen one that gradients flow through (forward + input gradients: the LLM
          when only the projector trains), 2 for a frozen one they do not reach (forward only:
          the vision tower when it is frozen)
    P_c = the component's matmul parameters (LoRA: the frozen LLM counts 4, its adapters 6)
    T_c = tokens the component processes: vision = images x (patches + class token),
          projector = images x image tokens, LLM decoder = non-padding tokens (image tokens
          included), LM head = supervised positions (the trainer computes logits only there).

    MFU = FLOPs per second / (peak FLOPs per device x devices), over each logging window (data
    loading, optimizer and logging included), so it is a lower bound of the matmul utilisation.

Peak FLOPs per device, for the dtype the matmuls run in (`trainer.compute_dtype`):
- `logging.peak_tflops` when set;
- a known GPU: its dense tensor-core peak from the datasheet (`GPU_PEAK_TFLOPS`: bf16/fp16, and
  TF32 for fp32 runs, an upper bound whether or not TF32 is enabled);
- otherwise (CPUs, unknown GPUs) measured in that dtype (`measure_matmul_peak`: on a CPU, one
  thread's best 512 x 512 matmul rate on its CPU-time clock times the thread count; on a GPU, the
  best 4096 x 4096 rate), cached per machine, device, dtype, thread count and torch version in
  `$MEDVL_CACHE/matmul_peak.json`. One process probes at a time (`matmul_peak.json.lock`): runs
  started together each wrote back the file as they had read it plus their own entry, so only the
  last writer's survived; and a GPU probe's wall clock would count another probe's matmuls. A
  fixed per-core guess cannot be right: the same AMD EPYC core does ~90 GFLOPS in fp32 and ~210 in
  bf16 (avx512_bf16); a 0.1 TFLOPS/thread guess gave MFU 1.4.
A window whose MFU would exceed 1 logs none and warns once (a wrong `logging.peak_tflops`, or a
FLOPs model that over-counts): MFU is never above 1.
"""

from __future__ import annotations

import json
import logging
import platform
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import TrainerCallback

from medvl.io.files import atomic_write_json, file_lock
from medvl.io.jsonl import JsonlAppender, iter_jsonl, write_jsonl

__all__ = ["FlopsModel", "peak_flops", "utilisation", "measure_matmul_peak", "MetricsFile", "GPU_PEAK_TFLOPS",
           "PEAK_CACHE_NAME", "plot_metrics", "read_metrics"]

log = logging.getLogger(__name__)

# Dense tensor-core TFLOPS per GPU from the datasheets: (bf16 / fp16, fp32 runs). The fp32 column is
# TF32 (plain fp32 for the V100, which has neither bf16 nor TF32). First match of the device name wins.
GPU_PEAK_TFLOPS = {
    "H200": (989.0, 494.5), "H100 PCIe": (756.0, 378.0), "H100": (989.0, 494.5), "A100": (312.0, 156.0),
    "L40S": (362.0, 181.0), "L4": (121.0, 60.0), "A10": (125.0, 62.5), "4090": (165.0, 82.6), "V100": (125.0, 15.7),
}
PEAK_CACHE_NAME = "matmul_peak.json"
ORDER = ("vision", "projector", "llm", "head")  # forward order: gradients flow back along it


@dataclass
class FlopsModel:
    """Per-step FLOPs from token and image counts (see the module docstring)."""

    params: dict[str, dict[str, int]]  # modeling.component_params
    vision_tokens_per_image: int
    image_tokens_per_image: int

    def factors(self) -> dict[str, tuple[float, float]]:
        """(FLOPs per token of the frozen part, of the trained part) for each component."""
        result = {}
        for index, name in enumerate(ORDER):
            upstream_trains = any(self.params[n]["trainable"] > 0 for n in ORDER[: index + 1])
            p = self.params[name]
            result[name] = ((4.0 if upstream_trains else 2.0) * (p["total"] - p["trainable"]), 6.0 * p["trainable"])
        return result

    def step_flops(self, tokens: int, images: int, supervised: int) -> float:
        counts = {"vision": images * self.vision_tokens_per_image,
                  "projector": images * self.image_tokens_per_image, "llm": tokens, "head": supervised}
        return sum((frozen + trained) * counts[name] for name, (frozen, trained) in self.factors().items())


def peak_flops(configured_tflops: float | None, dtype: torch.dtype) -> float:
    """Peak FLOPs per second of one device for matmuls in `dtype` (see the module docstring)."""
    if configured_tflops is not None:
        return configured_tflops * 1e12
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        name = torch.cuda.get_device_name()
        for key, (half, single) in GPU_PEAK_TFLOPS.items():
            if key in name:
                return (single if dtype == torch.float32 else half) * 1e12
    return _cached_peak(device, dtype)


def utilisation(flops_per_s: float, peak: float, devices: int) -> float | None:
    """MFU in [0, 1]; None without a peak, or when the rate beats it (the peak is then wrong)."""
    if peak <= 0:
        return None
    value = flops_per_s / (peak * devices)
    return value if value <= 1.0 else None


def measure_matmul_peak(dtype: torch.dtype, device: str = "cpu", seconds: float = 0.5) -> float:
    """The peak matmul FLOPs/s of `device` in `dtype`: the best rate of a square matmul over ~`seconds`.

    On a CPU one thread is timed on its own CPU-time clock, which other processes' load does not
    stretch (a wall-clock probe on a busy machine reads far below the peak), and the rate is
    multiplied by torch's thread count: an upper bound, as threads never scale better than that.
    """
    if device == "cpu":
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            return threads * _best_matmul_rate(dtype, device, 512, time.thread_time, seconds)
        finally:
            torch.set_num_threads(threads)
    return _best_matmul_rate(dtype, device, 4096, time.perf_counter, seconds)


def _best_matmul_rate(dtype: torch.dtype, device: str, size: int, clock: Any, seconds: float) -> float:
    generator = torch.Generator().manual_seed(0)
    a, b = (torch.randn(size, size, generator=generator).to(device=device, dtype=dtype) for _ in range(2))
    torch.matmul(a, b)  # warm-up: kernel selection, page faults
    best, repeats = 0.0, 0
    end = time.perf_counter() + seconds
    while repeats < 3 or time.perf_counter() < end:
        start = clock()
        torch.matmul(a, b)
        if device != "cpu":
            torch.cuda.synchronize()
        best = max(best, 2 * size**3 / max(clock() - start, 1e-9))
        repeats += 1
    return best


def _cached_peak(device: str, dtype: torch.dtype) -> float:
    from medvl.io.offline import cache_dir

    path = cache_dir() / PEAK_CACHE_NAME
    key = "|".join([socket.gethostname(), _device_name(device), str(dtype), f"{torch.get_num_threads()} threads",
                    f"torch {torch.__version__}"])
    cache = _read_peaks(path)
    if key not in cache:
        with file_lock(path.with_name(f"{path.name}.lock"), f"measuring the matmul peak ({path})"):
            cache = _read_peaks(path)  # as the process we may have waited for left it
            if key not in cache:
                cache[key] = measure_matmul_peak(dtype, device)
                atomic_write_json(path, cache)
                log.info("measured the %s matmul peak: %.1f GFLOPS (%s)", dtype, cache[key] / 1e9, key)
    return float(cache[key])


def _read_peaks(path: Path) -> dict[str, float]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def _device_name(device: str) -> str:
    if device == "cuda":
        return torch.cuda.get_device_name()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


class MetricsFile(TrainerCallback):
    """Appends one JSON line per logging step to `metrics.jsonl` (main process only).

    On resume, lines after the checkpoint's step are dropped first, so the file is the loss curve
    of the steps that count, as if the run had never stopped.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._out: JsonlAppender | None = None

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if not state.is_world_process_zero:
            return
        if self.path.exists():
            kept = [r for _, r in iter_jsonl(self.path) if isinstance(r, dict) and r.get("step", 0) <= state.global_step]
            write_jsonl(self.path, kept)
        self._out = JsonlAppender(self.path)

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kwargs: Any) -> None:
        if self._out is None or not logs or "loss" not in logs:
            return
        self._out.write({"step": state.global_step, "epoch": round(state.epoch or 0.0, 4), **logs})

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self._out is not None:
            self._out.close()
            self._out = None


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    return [r for _, r in iter_jsonl(path) if isinstance(r, dict)]


def plot_metrics(metrics_path: str | Path, out_png: str | Path) -> Path | None:
    """Loss and learning-rate curves of a run (Agg backend); None when there is nothing to plot."""
    rows = read_metrics(metrics_path) if Path(metrics_path).exists() else []
    if not rows:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [r["step"] for r in rows]
    figure, (loss_axis, lr_axis) = plt.subplots(1, 2, figsize=(10, 3.5))
    loss_axis.plot(steps, [r["loss"] for r in rows])
    loss_axis.set(xlabel="step", ylabel="loss", title="training loss")
    lr_axis.plot(steps, [r.get("learning_rate", 0.0) for r in rows], color="tab:orange")
    lr_axis.set(xlabel="step", ylabel="learning rate", title="schedule")
    figure.tight_layout()
    figure.savefig(out_png, dpi=100)
    plt.close(figure)
    return Path(out_png)
