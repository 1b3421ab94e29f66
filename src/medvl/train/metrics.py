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

    MFU = FLOPs per second / (peak FLOPs per device x devices).

Peak FLOPs per device: `logging.peak_tflops` when set; else the dense bf16 peak of known GPUs
(`GPU_PEAK_TFLOPS`) on CUDA, or 0.1 TFLOPS per CPU thread (an AVX2/FMA core at ~3 GHz does
~32 fp32 FLOPs per cycle ≈ 0.1 TFLOPS) on CPU.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import TrainerCallback

from medvl.io.jsonl import JsonlAppender, iter_jsonl, write_jsonl

__all__ = ["FlopsModel", "peak_flops", "MetricsFile", "GPU_PEAK_TFLOPS", "CPU_TFLOPS_PER_THREAD", "plot_metrics",
           "read_metrics"]

GPU_PEAK_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "L4": 121.0, "A10": 125.0,
                   "4090": 165.0, "V100": 125.0}
CPU_TFLOPS_PER_THREAD = 0.1
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


def peak_flops(configured_tflops: float | None) -> float:
    """Peak FLOPs per second of one device (see the module docstring for the defaults)."""
    if configured_tflops is not None:
        return configured_tflops * 1e12
    if torch.cuda.is_available():
        name = torch.cuda.get_device_name()
        for key, tflops in GPU_PEAK_TFLOPS.items():
            if key in name:
                return tflops * 1e12
        return 0.0
    return CPU_TFLOPS_PER_THREAD * 1e12 * torch.get_num_threads()


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
