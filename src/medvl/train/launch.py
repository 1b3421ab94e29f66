"""`medvl launch`'s checks before it becomes the launcher.

What would otherwise fail in every worker (each printing its error, then torch's launcher a
`ChildFailedError` traceback, exit 1) or inside `accelerate launch` (a traceback) stops here with one
line and exit 2, before any process starts:

- the training command it launches (`-m medvl.cli train CONFIG [key=value ...]`, or a program named
  `medvl` followed by `train`): the config loads as `medvl train` would load it (YAML, keys,
  values, overrides), `model.path`, when given, is a saved model folder, and no other run holds
  `output_dir` (its `RunLock`);
- `accelerate launch --config_file FILE`: FILE exists and is a mapping; a DeepSpeed layout finds
  deepspeed installed and its `deepspeed_config_file` (relative paths are taken from the working
  folder, as accelerate takes them).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import yaml

from medvl.errors import UserError

__all__ = ["LaunchConfigError", "check_launch"]


class LaunchConfigError(UserError, ValueError):
    """The launcher's own config cannot start the run (the message names the file and the fix)."""


def check_launch(argv: list[str]) -> None:
    """Raise a `UserError` for what launcher command `argv` would fail on in its workers (module docstring)."""
    if Path(argv[0]).name == "accelerate" and argv[1:2] == ["launch"]:
        config_file = _option(argv, "--config_file") or _option(argv, "--config-file")
        if config_file is not None:
            _check_accelerate_config(Path(config_file))
    train_args = _train_arguments(argv)
    if train_args and not train_args[0].startswith("-"):
        _check_train_config(Path(train_args[0]), train_args[1:])


def _option(argv: list[str], name: str) -> str | None:
    for index, arg in enumerate(argv):
        if arg == name and index + 1 < len(argv):
            return argv[index + 1]
        if arg.startswith(name + "="):
            return arg.split("=", 1)[1]
    return None


def _train_arguments(argv: list[str]) -> list[str] | None:
    """The arguments of the `medvl train` that `argv` starts in each worker, if it starts one."""
    for index in range(1, len(argv) - 1):
        module = argv[index] == "medvl.cli" and argv[index - 1] == "-m"
        if argv[index + 1] == "train" and (module or Path(argv[index]).name == "medvl"):
            return argv[index + 2:]
    return None


def _check_train_config(config: Path, overrides: list[str]) -> None:
    from medvl.config import load_config
    from medvl.io.process import RunLock
    from medvl.model.checkpoint import model_folder
    from medvl.train.config import TrainConfig

    loaded = load_config(TrainConfig, config, overrides)
    if loaded.model.path is not None:
        model_folder(loaded.model.path, "model.path")
    with RunLock(loaded.output_dir, what="training run"):  # taken by the main worker in a moment
        pass


def _check_accelerate_config(path: Path) -> None:
    if not path.is_file():
        raise LaunchConfigError(f"{path}: no such accelerate config file (--config_file); medvl's are in "
                                "configs/accelerate/")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise LaunchConfigError(f"{path}: not a YAML accelerate config ({type(exc).__name__}); fix it or give "
                                "one of configs/accelerate/") from None
    if not isinstance(data, dict):
        raise LaunchConfigError(f"{path}: an accelerate config is a mapping of settings; give one of configs/accelerate/")
    if data.get("distributed_type") != "DEEPSPEED":
        return
    if importlib.util.find_spec("deepspeed") is None:
        raise LaunchConfigError(f"{path} runs DeepSpeed, which is not installed: pip install deepspeed (on the GPU "
                                "machines), or launch with configs/accelerate/fsdp.yaml")
    ds_file = (data.get("deepspeed_config") or {}).get("deepspeed_config_file")
    if ds_file and not Path(ds_file).is_file():
        raise LaunchConfigError(f"{path}: deepspeed_config_file {ds_file} not found from {Path.cwd()} (a relative path "
                                "is taken from the working folder); launch from the repository root or make it absolute")
