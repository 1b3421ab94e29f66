"""Fixtures for the training tests: a synthetic colour-VQA dataset on disk and tiny training configs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import pytest

COLORS = {"red": (220, 30, 30), "green": (30, 180, 30), "blue": (30, 30, 220), "yellow": (230, 220, 30)}


def tiny_model_spec(tokenizer: str | Path) -> dict[str, Any]:
    """A ~3M-parameter LLaVA (mostly the 49k-token embedding) as a `model.spec` mapping."""
    return {
        "vision": {"image_size": 32, "patch_size": 8, "hidden_size": 32, "num_layers": 2, "num_heads": 2,
                   "intermediate_size": 64},
        "text": {"tokenizer": str(tokenizer), "hidden_size": 64, "num_layers": 2, "num_heads": 4, "num_kv_heads": 2,
                 "intermediate_size": 128, "tie_word_embeddings": True},
        "chat_template": "chatml",
    }


def write_color_vqa(folder: Path, n: int, multi_turn_every: int = 0) -> Path:
    """`n` records "what color is the square?" over small PNGs, in `folder/data.jsonl`."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    names = list(COLORS)
    rows = []
    for index in range(n):
        color = names[index % len(names)]
        image = Image.new("RGB", (40, 40), (255, 255, 255))
        image.paste(COLORS[color], (8 + index % 5, 8, 30, 30))
        image.save(folder / f"img{index}.png")
        turns = [{"from": "human", "value": "<image>\nWhat color is the square?"}, {"from": "gpt", "value": color}]
        if multi_turn_every and index % multi_turn_every == 0:
            turns += [{"from": "human", "value": "Is it round?"}, {"from": "gpt", "value": "no"}]
        rows.append({"id": f"s{index}", "image": f"img{index}.png", "conversations": turns})
    path = folder / "data.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def tiny_spec_dict(smol_tokenizer) -> dict[str, Any]:
    return tiny_model_spec(smol_tokenizer)


@pytest.fixture(scope="session")
def color_data(tmp_path_factory) -> Path:
    return write_color_vqa(tmp_path_factory.mktemp("color-vqa"), 48, multi_turn_every=4)


@pytest.fixture
def uneven_color_data(tmp_path) -> Path:
    """44 records: not a whole number of global batches of 8."""
    return write_color_vqa(tmp_path / "uneven-color-vqa", 44, multi_turn_every=4)


@pytest.fixture
def train_config(tiny_spec_dict, color_data, tmp_path) -> Callable[..., Any]:
    """Build a TrainConfig for a few steps on the colour data; keyword overrides are dotted keys."""
    from medvl.config import apply_overrides
    from medvl.train.config import TrainConfig

    def make(out: Path | None = None, **overrides: Any) -> TrainConfig:
        data = {
            "stage": "instruct",
            "model": {"spec": tiny_spec_dict},
            "data": {"sources": [{"path": str(color_data)}], "max_length": 128},
            "optim": {"lr": 1e-3, "batch_size": 4, "max_steps": 6, "warmup_ratio": 0.0},
            "output_dir": str(out or tmp_path / "run"),
            "save": {"every_steps": 2, "keep": 2},
            "logging": {"every_steps": 1, "report_to": [], "progress_bar": False},
        }
        data = apply_overrides(data, [f"{k.replace('__', '.')}={json.dumps(v)}" for k, v in overrides.items()])
        return TrainConfig.model_validate(data)

    return make
