"""`medvl launch ... -m medvl.cli eval run CONFIG [key=value ...]`: what every launched process would
fail on, checked once before any starts (`medvl.cli.LAUNCH_CHECKS`).

The config loads as `medvl eval run` would load it (YAML, keys, values, overrides), its scorers are
known, no other evaluation run holds `output_dir` (the runner's own lock, `run_folder_lock`), the
benchmark's root and question files are there in its layout, its split and option values are known,
and its question files are of their format with some question the loader can ask
(`BenchmarkConfig.check`: the loader's own `locate`, then its `check`, which reads the question files
but no image: loading a benchmark checks every image, and the parquet releases write their images
out), an `exclude_seen` file is there and of its shape (`read_seen_items`), and a run folder made with
another config is refused (the runner's `check_same_run`).
The check makes no folder: a run folder that is not there yet is held by no one; that it can be
made (no file in the way, a parent folder it may write in) is checked without making it.
"""

from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path

__all__ = ["check_launch"]


def check_launch(args: list[str]) -> None:
    """Raise a `UserError` for what `medvl eval run ARGS` (CONFIG, then overrides) would fail on in each process."""
    from medvl.config import load_config
    from medvl.eval.config import EvalConfig
    from medvl.eval.runner import check_same_run, check_scorers, read_seen_items, run_folder_lock
    from medvl.io.files import check_folder_target

    config = load_config(EvalConfig, Path(args[0]), args[1:])
    check_scorers(config)
    out = Path(config.output_dir)
    if not out.exists():
        check_folder_target(out)
    # in the run's order: its lock (taken by the main process in a moment; a file in the way is refused by it
    # too, as the run would refuse it), the benchmark, then the folder's config
    with run_folder_lock(out) if out.exists() else nullcontext():
        config.benchmark.check()
        if config.exclude_seen:
            read_seen_items(Path(config.exclude_seen))
        check_same_run(out, config)
