"""`medvl launch`'s checks of the launcher command, before it becomes the launcher.

What would otherwise fail inside `accelerate launch` (a traceback) or in every worker stops with
one line and exit 2, before any process starts:

- `accelerate launch --config_file FILE`: FILE exists and is a mapping; a DeepSpeed layout finds
  deepspeed installed and its `deepspeed_config_file` (relative paths are taken from the working
  folder, as accelerate takes them);
- `launched_command` finds the medvl command each worker runs (`-m medvl.cli WORDS ARGS`, or a
  program named `medvl` followed by `WORDS ARGS`), so that the entry point can hand its arguments to
  that command's own check (`medvl.cli.LAUNCH_CHECKS`: each stage checks its own config).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterable
from pathlib import Path

import yaml

from medvl.errors import UserError

__all__ = ["LaunchConfigError", "check_launcher_config", "launched_command"]


class LaunchConfigError(UserError, ValueError):
    """The launcher's own config cannot start the run (the message names the file and the fix)."""


def check_launcher_config(argv: list[str]) -> None:
    """Raise a `LaunchConfigError` for an `accelerate launch --config_file` that cannot start (module docstring)."""
    if Path(argv[0]).name == "accelerate" and argv[1:2] == ["launch"]:
        config_file = _option(argv, "--config_file") or _option(argv, "--config-file")
        if config_file is not None:
            _check_accelerate_config(Path(config_file))


def launched_command(argv: list[str],
                     commands: Iterable[tuple[str, ...]]) -> tuple[tuple[str, ...], list[str]] | None:
    """The command of `commands` (its words, e.g. `("eval", "run")`) that launcher command `argv` starts
    in each worker, and the arguments after its words; None when it starts none of them, or when its
    first argument is an option (`train --help`: nothing to check)."""
    for index in range(1, len(argv) - 1):
        if not (argv[index] == "medvl.cli" and argv[index - 1] == "-m" or Path(argv[index]).name == "medvl"):
            continue
        for words in commands:
            after = index + 1 + len(words)
            if tuple(argv[index + 1:after]) == words:
                args = argv[after:]
                return (words, args) if args and not args[0].startswith("-") else None
    return None


def _option(argv: list[str], name: str) -> str | None:
    for index, arg in enumerate(argv):
        if arg == name and index + 1 < len(argv):
            return argv[index + 1]
        if arg.startswith(name + "="):
            return arg.split("=", 1)[1]
    return None


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
