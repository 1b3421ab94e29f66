"""The import rules of docs/architecture.md hold, and `lint-imports` (the contracts in pyproject.toml)
catches each kind of break, shown by adding one import to the real graph: a stage importing another,
an import up a floor, a loop in a package."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"
# lint-imports on medvl's real import graph plus the imports given as arguments ("importer>imported").
LINT = """
import sys
from importlinter import cli
from importlinter.adapters.building import GraphBuilder
from importlinter.application.app_config import settings

class WithExtraImports(GraphBuilder):
    def build(self, *args, **kwargs):
        graph = super().build(*args, **kwargs)
        for pair in sys.argv[2:]:
            importer, imported = pair.split(">")
            graph.add_import(importer=importer, imported=imported)
        return graph

settings.configure(GRAPH_BUILDER=WithExtraImports())
sys.exit(cli.lint_imports(config_filename=sys.argv[1], no_cache=True, no_logo=True))
"""


def lint(*extra_imports: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", LINT, str(PYPROJECT), *extra_imports], capture_output=True,
                          text=True, timeout=300, env={**os.environ, "COLUMNS": "400"})  # one line per contract


def test_the_import_rules_hold():
    result = lint()
    assert result.returncode == 0, result.stdout + result.stderr
    assert "4 kept, 0 broken" in result.stdout


@pytest.mark.parametrize("extra,broken", [
    (["medvl.train.convert>medvl.eval.runner"], ["Floors", "No stage imports another", "Train and eval are"]),
    (["medvl.model.spec>medvl.benchmarks.base"], ["Floors"]),
    (["medvl.eval.scorers>medvl.eval.runner"], ["No import loops"]),
])
def test_each_kind_of_break_is_caught(extra, broken):
    result = lint(*extra)
    assert result.returncode == 1
    verdicts = [line for line in result.stdout.splitlines() if line.endswith((" KEPT", " BROKEN"))]
    assert sorted(line for line in verdicts if line.endswith("BROKEN")) == sorted(
        line for line in verdicts if line.startswith(tuple(broken))), result.stdout
