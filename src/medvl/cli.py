"""The `medvl` command: one entry point whose sub-commands live with the code they drive.

Each sub-package exposes `register(app)` in a light `cli.py` (typer only at import; torch and
friends load inside the command functions), so `medvl --help` starts fast. Every module listed here
must import: a typo or a broken import fails the command loudly rather than hiding its commands.
"""

from __future__ import annotations

import importlib
import logging
import os

import typer

from medvl.errors import UserError

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
    logging.basicConfig(level=os.environ.get("MEDVL_LOG", "INFO"), format="%(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        build_app()()
    except UserError as exc:
        typer.secho(f"error: {exc}", err=True, fg=typer.colors.RED)
        raise SystemExit(exc.exit_code) from None


if __name__ == "__main__":
    main()
