"""`medvl launch ... -m medvl.cli train CONFIG [key=value ...]`: what every worker would fail on,
checked once before any process starts (`medvl.cli.LAUNCH_CHECKS`).

The config loads as `medvl train` would load it (YAML, keys, values, overrides), `model.path`, when
given, is a saved model folder, and no other run holds `output_dir` (its `RunLock`).
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["check_launch"]


def check_launch(args: list[str]) -> None:
    """Raise a `UserError` for what `medvl train ARGS` (CONFIG, then overrides) would fail on in each worker."""
    from medvl.config import load_config
    from medvl.io.process import RunLock
    from medvl.model.checkpoint import model_folder
    from medvl.train.config import TrainConfig

    loaded = load_config(TrainConfig, Path(args[0]), args[1:])
    if loaded.model.path is not None:
        model_folder(loaded.model.path, "model.path")
    with RunLock(loaded.output_dir, what="training run"):  # taken by the main worker in a moment
        pass
