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
import logging
import os
import sys
from typing import Any, NoReturn

import typer

from medvl.errors import UserError

# Libraries' internals are kept off the console (medvl's own progress bars and log lines, and the
# libraries' warnings, stay): at INFO the HTTP clients under openai (httpx; httpx2 for openai 3) log
# every request, sentence-transformers each model it loads, and faiss (curation's dedup) each build it
# fails to load, with a ModuleNotFoundError, before the one it loads ...
QUIET_LOGGERS = ("httpx", "httpx2", "httpcore", "httpcore2", "sentence_transformers", "faiss")
# ... and transformers draws a bar for loading and for saving weights (off through huggingface_hub's
# switch, which both read when they load; `HF_HUB_DISABLE_PROGRESS_BARS=0` brings the bars back).
QUIET_ENVIRONMENT = {"HF_HUB_DISABLE_PROGRESS_BARS": "1", "TOKENIZERS_PARALLELISM": "false"}
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
    logging.basicConfig(level=os.environ.get("MEDVL_LOG", "INFO"), format="%(levelname)s %(name)s: %(message)s",
                        handlers=[_StderrNow()])
    quiet_library_internals()
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


class _StderrNow(logging.StreamHandler):
    """A handler writing to `sys.stderr` as it is when a record is emitted, not as it was when the
    handler was made: `main` may run again in one process (tests, notebooks) under a replaced
    stderr, and a handler bound to the first one would write to a closed stream."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property  # type: ignore[override]
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, _: Any) -> None:
        pass


def quiet_library_internals() -> None:
    """Keep libraries' progress bars and INFO lines off the console: before any of them loads (the
    commands import them), so nothing is imported here. A variable the user has set is kept."""
    for chatty in QUIET_LOGGERS:
        logging.getLogger(chatty).setLevel(logging.WARNING)
    for name, value in QUIET_ENVIRONMENT.items():
        os.environ.setdefault(name, value)


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
