"""`medvl demo`: the whole system end to end on real data, offline, on a CPU.

curate figure–caption data → distil EfficientNet-Lite0 into a native ViT tower (the visual prior,
cached) → build that tower + SmolLM2-135M → train align → instruct → finetune on VQA-RAD train
(fixed epochs) → evaluate on the VQA-RAD test split (open/closed and multiple-choice protocols, next
to the majority answer and the question-only and shuffled-image controls, paired tests) → an HTML report.
"""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    from medvl.demo.cli import demo

    app.command("demo")(demo)
