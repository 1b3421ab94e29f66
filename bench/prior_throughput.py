"""Throughput of the visual-prior step (`medvl prior`, the demo's `prior` step) in images/s.

Same run, same images (VQA-RAD train-split images from the vendored release), same tower:
- `medvl prior` = `medvl.model.prior.distil_tower` end to end: decode + augmented views, the
  EfficientNet-Lite0 teacher at 224 px on every view, then the student's epochs; reported as unique
  images/s and views·epochs/s, with the teacher and student phases apart;
- baseline: a bare loop training the same ViT for the same number of steps and batch size on a
  fixed target (forward → MSE → backward → AdamW), i.e. the least any distillation of that tower
  could cost. `vs_hand_loop` = baseline seconds / student-phase seconds (1 = no overhead).

    python bench/prior_throughput.py [--quick]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def _images(count: int) -> list[str]:
    from medvl.benchmarks import load_benchmark

    items = load_benchmark("vqa_rad", ROOT / "data" / "vqa-rad", split="train").items
    return sorted({path for item in items for path in item.images})[:count]


def _bare_loop(config: Any, steps: int) -> float:
    import torch

    from medvl.model.prior import student_tower

    torch.manual_seed(0)
    student = student_tower(config).train()
    grid = (config.tower.image_size // config.tower.patch_size) ** 2
    head = torch.nn.Linear(config.tower.hidden_size, 1280)
    optimizer = torch.optim.AdamW([*student.parameters(), *head.parameters()], lr=config.lr)
    pixels = torch.randn(config.batch_size, 3, config.tower.image_size, config.tower.image_size)
    target = torch.randn(config.batch_size, grid, 1280)
    start = time.perf_counter()
    for _ in range(steps):
        hidden = student(pixel_values=pixels, output_hidden_states=True).hidden_states[config.feature_layer][:, 1:]
        loss = torch.nn.functional.mse_loss(head(hidden), target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return time.perf_counter() - start


def run(quick: bool = False) -> list[dict[str, Any]]:
    from medvl.demo.config import DEMO_MODEL
    from medvl.model.prior import PriorConfig, distil_tower

    count, epochs = (48, 2) if quick else (313, 8)
    config = PriorConfig(tower=DEMO_MODEL.vision, images=_images(count), epochs=epochs)
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        result = distil_tower(config, Path(tmp) / "tower")
        total = time.perf_counter() - start
    baseline = _bare_loop(config, result.steps)
    setting = f"EfficientNet-Lite0 → ViT {DEMO_MODEL.vision.num_layers}x{DEMO_MODEL.vision.hidden_size}"
    common = {"images": result.images, "views": result.views, "epochs": epochs, "steps": result.steps}
    return [
        {"case": f"{setting}, whole step", "images_per_s": round(result.images / total, 2),
         "view_epochs_per_s": round(result.views * epochs / total, 1), "seconds": round(total, 1), **common},
        {"case": "teacher features (224 px)", "views_per_s": round(result.views / result.teacher_seconds, 1),
         "seconds": result.teacher_seconds},
        {"case": "student epochs vs bare loop", "vs_hand_loop": round(baseline / result.student_seconds, 3),
         "view_epochs_per_s": round(result.views * epochs / result.student_seconds, 1),
         "bare_loop_seconds": round(baseline, 1), "seconds": result.student_seconds},
    ]


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    print(json.dumps(run(parser.parse_args().quick), indent=1))
