"""The `medvl` command: one entry point whose sub-commands live with the code they drive.

Each sub-package exposes `register(app)` in a light `cli.py` (typer only at import; torch and
friends load inside the command functions), so `medvl --help` starts fast. Every module listed here
must import: a typo or a broken import fails the command loudly rather than hiding its commands.
`medvl launch` lives here, above the stages: it checks, before any process starts, the command it
launches with that command's own check (`LAUNCH_CHECKS`: one line per command that can be launched).
Every mistake ends in one `error:` line and exit 2: a `UserError` raised by a command, and click's
usage errors too (a missing argument, an unknown option, a path that does not exist), which typer
would otherwise print as a usage line, a hint and the error in a frame.
"""

from __future__ import annotations

import importlib
from typing import Any, NoReturn

import typer

from medvl.errors import UserError
from medvl.io.console import setup_console

COMMAND_MODULES = (
    "medvl.model.cli",  # build, convert, prior
    "medvl.curate.cli",  # curate ...
    "medvl.train.cli",  # train, data ...
    "medvl.eval.cli",  # eval ...
    "medvl.serve.cli",  # chat, serve, webui
    "medvl.demo",  # demo
)
# `medvl launch`: the medvl commands whose workers it checks first (by the words that name the command), each
# with the module whose `check_launch(args)` raises a `UserError` for what those arguments would fail on
LAUNCH_CHECKS = {
    ("train",): "medvl.train.launch",
    ("eval", "run"): "medvl.eval.launch",
}


def build_app() -> typer.Typer:
    app = typer.Typer(
        name="medvl",
        help="Build, train, evaluate and serve medical vision-language assistants.",
        no_args_is_help=True,
        pretty_exceptions_show_locals=False,
        add_completion=False,
    )
    for name in COMMAND_MODULES:  # a module that does not import is an error, never a missing command
        importlib.import_module(name).register(app)
    app.command("launch", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})(launch)
    return app


def launch(
    launcher: list[str] = typer.Argument(..., help="the launcher and its arguments, e.g. accelerate launch "
                                                   "--config_file CONFIG -m medvl.cli train TRAIN.yaml"),
) -> None:
    """Run a launcher (accelerate launch, torchrun) whose workers die with it; configs checked first."""
    # The launcher runs as this process and its workers are told its pid, so a worker whose launcher
    # dies before the worker's parent-death guard is armed stops at once (medvl.io.process).
    from medvl.io.launch import check_launcher_config, launched_command
    from medvl.io.process import exec_launcher, find_launcher

    argv = list(launcher)
    program = find_launcher(argv)  # first: a launcher that is not there is named before the configs
    check_launcher_config(argv)
    command = launched_command(argv, LAUNCH_CHECKS)
    if command is not None:
        words, args = command
        importlib.import_module(LAUNCH_CHECKS[words]).check_launch(args)
    exec_launcher(program, argv)


def main() -> None:
    setup_console()  # log format, libraries' internals off the console (medvl.io.console)
    errors = _click_exceptions()
    try:
        code = build_app()(prog_name="medvl", standalone_mode=False)  # click's errors come here, not to a boxed panel
    except UserError as exc:
        _fail(str(exc), exc.exit_code)
    except errors.NoArgsIsHelpError as exc:  # `medvl curate`: the help is the answer (exit 2, as click's)
        exc.show()
        raise SystemExit(exc.exit_code) from None
    except errors.UsageError as exc:  # a missing argument, an unknown option, a bad value
        where = exc.ctx.command_path if exc.ctx else "medvl"
        _fail(f"{exc.format_message()} (see {where} --help)", exc.exit_code)
    except errors.ClickException as exc:
        _fail(exc.format_message(), exc.exit_code)
    except typer.Abort:  # end of input or Ctrl-C at a prompt (typer's own class: its click copy has none)
        _fail("aborted", 1)
    raise SystemExit(code if isinstance(code, int) else 0)  # typer.Exit(n) comes back as n; a command returns None


def _click_exceptions() -> Any:
    """The exception classes of the click that typer runs on: its own copy (typer >= 0.2x), else click."""
    try:
        from typer._click import exceptions
    except ImportError:
        from click import exceptions
    return exceptions


def _fail(message: str, exit_code: int) -> NoReturn:
    typer.secho(f"error: {message}", err=True, fg=typer.colors.RED)
    raise SystemExit(exit_code)


if __name__ == "__main__":
    main()
