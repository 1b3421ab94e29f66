"""bench/ scripts use medvl through its public names: no `from medvl... import _private` (a private
helper may change or go without notice; a script that needs one asks for a public seam)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

BENCH_DIR = Path(__file__).resolve().parents[2] / "bench"


def private_medvl_imports(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    return [f"{node.module}.{alias.name} (line {node.lineno})" for node in ast.walk(tree)
            if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "medvl"
            for alias in node.names if alias.name.startswith("_")]


def test_a_private_import_is_found(tmp_path: Path):
    script = tmp_path / "script.py"
    script.write_text("def f():\n    from medvl.demo.run import build, _hidden\n")
    assert private_medvl_imports(script) == ["medvl.demo.run._hidden (line 2)"]


@pytest.mark.parametrize("script", sorted(BENCH_DIR.glob("*.py")), ids=lambda p: p.name)
def test_bench_scripts_import_no_private_medvl_names(script: Path):
    assert private_medvl_imports(script) == []
