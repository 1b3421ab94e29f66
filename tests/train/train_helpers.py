"""Helpers for the training tests that compare runs."""

from __future__ import annotations

import json
from pathlib import Path


def curve(out: Path) -> list[float]:
    """step, loss, grad norm and learning rate of every logged step, flat."""
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [value for r in rows for value in (r["step"], r["loss"], r["grad_norm"], r["learning_rate"])]
