"""The `medvl` command: one entry point whose sub-commands live with the code they drive.

Each sub-package exposes `register(app)` in a light `cli.py` (typer only at import; torch and
friends load inside the command functions), so `medvl --help` starts fast. Every module listed here
must import: a typo or a broken import fails the command loudly rather than hiding its commands.
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
    return app


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
