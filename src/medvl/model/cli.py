"""`medvl build` (a model from a spec YAML) and `medvl convert` (legacy LLaVA → native)."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from medvl.model.templates import TEMPLATE_NAMES


def build(
    config: Path = typer.Argument(..., help="model spec YAML (see configs/model/)"),
    out: Path = typer.Argument(..., help="output folder (native LlavaForConditionalGeneration)"),
    overrides: Optional[List[str]] = typer.Argument(None, help="key=value overrides, e.g. text.path=/models/qwen2"),
) -> None:
    """Assemble vision tower → projector → LLM and save it with its processor."""
    from medvl.config import load_config
    from medvl.model.build import build_model
    from medvl.model.checkpoint import save_model
    from medvl.model.spec import ModelSpec

    spec = load_config(ModelSpec, config, overrides or [])
    model, processor = build_model(spec)
    save_model(model, processor, out)
    params = sum(p.numel() for p in model.parameters())
    typer.echo(f"saved {params / 1e6:.1f}M-parameter model to {out}")


def convert(
    source: Path = typer.Argument(..., help="checkpoint folder in the original LLaVA layout"),
    out: Path = typer.Argument(..., help="output folder (native format)"),
    vision_tower: Optional[Path] = typer.Option(None, help="local folder of the CLIP tower named in mm_vision_tower"),
    chat_template: Optional[str] = typer.Option(
        None, help=f"conversation format ({', '.join(TEMPLATE_NAMES)}); default: the source model's"),
    dtype: Optional[str] = typer.Option(None, help="float32 | bfloat16 | float16 (default: the checkpoint's)"),
) -> None:
    """Convert llava_llama / llava_mistral / llava_qwen2 checkpoints so transformers and vLLM load them."""
    from medvl.model.convert import convert_legacy

    path = convert_legacy(source, out, vision_tower=str(vision_tower) if vision_tower else None,
                          chat_template=chat_template, dtype=dtype)
    typer.echo(f"converted {source} -> {path} (load with AutoModelForImageTextToText, serve with vllm)")


def register(app: typer.Typer) -> None:
    app.command("build")(build)
    app.command("convert")(convert)
