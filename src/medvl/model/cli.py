"""`medvl build` (a model from a spec YAML), `medvl convert` (legacy LLaVA → native) and `medvl prior`
(distil a pretrained image network into a native ViT tower). Build and convert end with the saved
folder's vLLM config check (`medvl.model.vllm_compat`): passed, or its problems. Each writes its
output folder whole (`medvl.io.files.atomic_folder`): new or empty, else refused before any work."""

from __future__ import annotations

import shlex
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
    from medvl.io.files import atomic_folder
    from medvl.model.build import build_model
    from medvl.model.checkpoint import save_model
    from medvl.model.spec import ModelSpec

    spec = load_config(ModelSpec, config, overrides or [])
    with atomic_folder(out, "remove it or choose a new folder for the model") as partial:  # checked before the build
        model, processor = build_model(spec)
        save_model(model, processor, partial, name=out.name)
    params = sum(p.numel() for p in model.parameters())
    typer.echo(f"saved {params / 1e6:.1f}M-parameter model to {out}")
    _vllm_check(out)


def convert(
    source: Path = typer.Argument(..., help="checkpoint folder in the original LLaVA layout"),
    out: Optional[Path] = typer.Argument(None, help="output folder (native format); not needed with --check"),
    vision_tower: Optional[Path] = typer.Option(
        None, help="local folder of the CLIP tower named in mm_vision_tower (its config, preprocessing and, "
                   "when the checkpoint does not carry the tower, its weights)"),
    chat_template: Optional[str] = typer.Option(
        None, help=f"conversation format ({', '.join(TEMPLATE_NAMES)}); default: the source model's"),
    dtype: Optional[str] = typer.Option(None, help="float32 | bfloat16 | float16 (default: the checkpoint's)"),
    check: bool = typer.Option(False, "--check", help="print what would be mapped from where, the chat template "
                                                      "and an example prompt; write nothing"),
) -> None:
    """Convert llava / llava_llama / llava_mistral / llava_qwen2 checkpoints so transformers and vLLM load them."""
    from medvl.errors import UserError
    from medvl.model.convert import convert_legacy, plan_conversion

    tower = str(vision_tower) if vision_tower else None
    if check:
        for line in plan_conversion(source, vision_tower=tower, chat_template=chat_template, dtype=dtype).describe():
            typer.echo(line)
        return
    if out is None:
        raise UserError("medvl convert: give an output folder (or --check to only inspect the source)")
    path = convert_legacy(source, out, vision_tower=tower, chat_template=chat_template, dtype=dtype)
    typer.echo(f"converted {source} -> {path} (load with AutoModelForImageTextToText, serve with vllm)")
    _vllm_check(path)


def prior(
    out: Path = typer.Argument(..., help="output folder: a CLIP vision tower, for model.vision.path=OUT"),
    overrides: Optional[List[str]] = typer.Argument(
        None, help="key=value overrides, e.g. teacher=/models/dinov2-small tower.image_size=224 epochs=20"),
    images: List[Path] = typer.Option(..., "--images", "-i", help="image files or folders (repeat the option)"),
    config: Optional[Path] = typer.Option(None, help="a prior config YAML (see medvl.model.prior.PriorConfig)"),
) -> None:
    """Distil a pretrained image network (EfficientNet-Lite0 by default) into a native CLIP ViT tower."""
    from medvl.config import load_config
    from medvl.io.files import atomic_folder
    from medvl.model.prior import PriorConfig, distil_tower

    settings = load_config(PriorConfig, config, overrides or [], {"images": [str(p) for p in images]})
    with atomic_folder(out, "remove it or choose a new folder for the tower") as partial:
        result = distil_tower(settings, partial, progress=typer.echo)
    skipped = f" ({result.skipped} unreadable skipped, listed in prior.json)" if result.skipped else ""
    typer.echo(f"saved a {settings.tower.num_layers}-layer CLIP tower to {out}: {result.images} images{skipped}, "
               f"{result.views} views, {result.steps} steps, loss {result.first_loss:.3f} → {result.final_loss:.3f}; "
               f"use it with {shlex.quote(f'model.vision.path={out}')}")


def _vllm_check(folder: Path) -> None:
    from medvl.model.vllm_compat import vllm_check_line, vllm_problems

    typer.echo(vllm_check_line(vllm_problems(folder)))


def register(app: typer.Typer) -> None:
    app.command("build")(build)
    app.command("convert")(convert)
    app.command("prior")(prior)
