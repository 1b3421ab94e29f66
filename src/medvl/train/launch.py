"""`medvl launch ... -m medvl.cli train CONFIG [key=value ...]`: what every worker would fail on,
checked once before any process starts (`medvl.cli.LAUNCH_CHECKS`).

The config loads as `medvl train` would load it (YAML, keys, values, overrides), `model.path`, when
given, is a saved model folder, and no other run holds `output_dir` (its `RunLock`).
The check makes no folder: a run folder that is not there yet is held by no one (and one made here
would be left empty by workers that fail before writing anything); that it can be made (no file in
the way, a parent folder it may write in) is checked without making it (`check_folder_target`).
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["check_launch"]


def check_launch(args: list[str]) -> None:
    """Raise a `UserError` for what `medvl train ARGS` (CONFIG, then overrides) would fail on in each worker."""
    from medvl.config import load_config
    from medvl.io.files import check_folder_target
    from medvl.io.process import RunLock
    from medvl.model.checkpoint import model_folder
    from medvl.train.config import TrainConfig

    loaded = load_config(TrainConfig, Path(args[0]), args[1:])
    if loaded.model.path is not None:
        model_folder(loaded.model.path, "model.path")
    out = Path(loaded.output_dir)
    if out.exists():  # a file in the way is refused by the lock too, as the run would refuse it
        with RunLock(out, what="training run"):  # taken by the main worker in a moment
            pass
    else:
        check_folder_target(out)
