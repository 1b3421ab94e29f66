"""Eval test helpers: run the `medvl` entry point as a user does (exit status, stdout, stderr)."""

from __future__ import annotations

import sys
from dataclasses import dataclass

import pytest


@dataclass
class Outcome:
    code: int
    out: str
    err: str


@pytest.fixture
def medvl(monkeypatch, capsys):
    """Call `medvl ARGS...` through `medvl.cli.main` (which turns a UserError into one line and exit 2)."""
    from medvl.cli import main

    def run(*args: str) -> Outcome:
        monkeypatch.setattr(sys, "argv", ["medvl", *map(str, args)])
        with pytest.raises(SystemExit) as exit_info:
            main()
        captured = capsys.readouterr()
        code = exit_info.value.code
        return Outcome(code if isinstance(code, int) else 1, captured.out, captured.err)

    return run
