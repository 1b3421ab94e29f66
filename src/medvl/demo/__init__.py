"""`medvl demo`: the whole system end to end on real data, offline, on a CPU, in about 15 minutes.

curate figure–caption data → build SmolLM2-135M + a from-scratch ViT → train align → instruct →
finetune on VQA-RAD train → evaluate on the VQA-RAD test split (open/closed and multiple-choice
protocols, next to the majority and question-only baselines) → an HTML report.
"""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    from medvl.demo.cli import demo

    app.command("demo")(demo)
