"""Plots of an evaluation run (matplotlib, Agg backend): accuracy per category and the yes/no confusion."""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["plot_breakdown", "plot_confusion"]


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_breakdown(key: str, rows: list[dict[str, Any]], path: Path, max_rows: int = 25) -> Path:
    """Horizontal bars: accuracy per category of `key`, labelled with the item count."""
    plt = _pyplot()
    rows = [r for r in rows if r["accuracy"] is not None][:max_rows]
    labels = [f"{r['category'] or '(none)'} (n={r['n']})" for r in rows]
    values = [100 * r["accuracy"] for r in rows]
    fig, ax = plt.subplots(figsize=(7, 0.35 * len(rows) + 1.2))
    ax.barh(range(len(rows)), values, color="#4C72B0")
    ax.set_yticks(range(len(rows)), labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0, 100)
    ax.set_xlabel("accuracy (%)")
    ax.set_title(f"Accuracy by {key.replace('_', ' ')}")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_confusion(confusion: dict[str, dict[str, int]], path: Path) -> Path:
    """Reference yes/no (rows) against the prediction's leading yes/no/neither (columns)."""
    plt = _pyplot()
    rows, cols = ["yes", "no"], ["yes", "no", "neither"]
    grid = [[confusion.get(r, {}).get(c, 0) for c in cols] for r in rows]
    fig, ax = plt.subplots(figsize=(4.2, 3.2))
    ax.imshow(grid, cmap="Blues")
    ax.set_xticks(range(3), cols)
    ax.set_yticks(range(2), rows)
    ax.set_xlabel("prediction starts with")
    ax.set_ylabel("reference")
    peak = max(max(r) for r in grid) or 1
    for i, row in enumerate(grid):
        for j, value in enumerate(row):
            ax.text(j, i, str(value), ha="center", va="center", color="white" if value > peak / 2 else "black")
    ax.set_title("Yes/no confusion")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
