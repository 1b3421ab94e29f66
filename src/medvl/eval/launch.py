"""`medvl launch ... -m medvl.cli eval run CONFIG [key=value ...]`: what every launched process would
fail on, checked once before any starts (`medvl.cli.LAUNCH_CHECKS`).

The config loads as `medvl eval run` would load it (YAML, keys, values, overrides), its scorers are
known, and no other evaluation run holds `output_dir` (the runner's own lock, `run_folder_lock`).
The check makes no folder: a run folder that is not there yet is held by no one.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["check_launch"]


def check_launch(args: list[str]) -> None:
    """Raise a `UserError` for what `medvl eval run ARGS` (CONFIG, then overrides) would fail on in each process."""
    from medvl.config import load_config
    from medvl.eval.config import EvalConfig
    from medvl.eval.runner import check_scorers, run_folder_lock

    config = load_config(EvalConfig, Path(args[0]), args[1:])
    check_scorers(config)
    out = Path(config.output_dir)
    if out.exists():  # a file in the way is refused by the lock too (one line), as the run would refuse it
        with run_folder_lock(out):  # taken by the main process in a moment
            pass
