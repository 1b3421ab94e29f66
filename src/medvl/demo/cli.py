"""The `medvl demo` command line: a DemoConfig from flags, YAML and overrides, then the run."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer


def demo(
    overrides: Optional[List[str]] = typer.Argument(
        None, help="key=value overrides, e.g. finetune.epochs=5 precision=bf16"),
    out: Optional[Path] = typer.Option(None, "--out", help="output folder (default runs/demo)"),
    figures: Optional[Path] = typer.Option(
        None, help="PubMed figures to curate, e.g. ../shared/data/pmc-figures-sample (default: medvl's CC0 sample)"),
    vqa_rad: Optional[Path] = typer.Option(None, help="VQA-RAD release folder (default: the vendored data/vqa-rad)"),
    config: Optional[Path] = typer.Option(None, help="a demo config YAML (see medvl.demo.config.DemoConfig)"),
    fresh: bool = typer.Option(False, "--fresh/--resume", help="start over instead of resuming finished steps"),
) -> None:
    """Curate → build → train (align, instruct, finetune) → evaluate on VQA-RAD → HTML report."""
    from medvl.config import load_config
    from medvl.demo.config import DemoConfig
    from medvl.demo.run import run_demo

    flags = {"output_dir": out, "figures": figures, "vqa_rad": vqa_rad}  # paths as given, never parsed as YAML
    cfg = load_config(DemoConfig, config, overrides or [],
                      {key: str(value) for key, value in flags.items() if value is not None})
    run_demo(cfg, fresh=fresh)
