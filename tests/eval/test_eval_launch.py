"""`medvl launch ... eval run CONFIG`: a bad eval config, or a run folder another evaluation run holds,
is one line and exit 2 before any process starts (as for `train`, tests/train/test_train_launch.py).

`os.execv` is replaced here: it records the launcher command it was given instead of becoming it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

from medvl.eval.runner import run_folder_lock

ROOT = Path(__file__).resolve().parents[2]
CPU_2PROC = ROOT / "configs" / "accelerate" / "cpu_2proc.yaml"
BENCH = Path(__file__).parent / "fixtures" / "llava" / "eval.jsonl"


@pytest.fixture
def launched(monkeypatch) -> list[list[str]]:
    """The launcher commands `medvl launch` would have become, in order (none started)."""
    calls: list[list[str]] = []
    monkeypatch.setenv("MEDVL_LAUNCHER_PID", "")  # exec_launcher sets it: restored after the test
    monkeypatch.setattr(os, "execv", lambda program, argv: calls.append(list(argv)))
    return calls


def eval_yaml(tmp_path: Path) -> Path:
    path = tmp_path / "eval.yaml"
    path.write_text(yaml.safe_dump({"benchmark": {"name": "llava_jsonl", "root": str(BENCH)},
                                    "backend": {"kind": "majority"}, "output_dir": str(tmp_path / "run")}))
    return path


def launch_eval(config: Path, *overrides: str, module: bool = True) -> list[str]:
    worker = ["-m", "medvl.cli"] if module else ["/venv/bin/medvl"]
    return ["launch", "accelerate", "launch", "--config_file", str(CPU_2PROC), *worker, "eval", "run", str(config),
            *overrides]


@pytest.mark.parametrize("module", [True, False], ids=["-m medvl.cli", "medvl program"])
def test_a_bad_eval_config_is_one_line_before_any_process(tmp_path, medvl, launched, module):
    good = eval_yaml(tmp_path)
    cases = [
        ((good, "benchmark.limt=3"), "benchmark.limt: unknown key"),
        ((good, "benchmark.limit=zero"), "benchmark.limit"),
        ((good, "scorer=nope"), "unknown scorer 'nope'"),
        ((tmp_path / "missing.yaml",), "missing.yaml"),
    ]
    for args, expected in cases:
        result = medvl(*launch_eval(*args, module=module))
        assert result.code == 2 and result.err.count("error:") == 1 and expected in result.err, (args, result.err)
        assert "Traceback" not in result.err
    assert launched == []
    assert not (tmp_path / "run").exists()


def test_an_eval_run_folder_held_by_another_run_is_refused(tmp_path, medvl, launched):
    argv = launch_eval(eval_yaml(tmp_path))
    out = tmp_path / "run"
    with run_folder_lock(out):  # another evaluation run is writing there
        result = medvl(*argv)
    assert result.code == 2 and result.err.count("error:") == 1, result.err
    assert f"error: {out} is in use by another evaluation run (pid {os.getpid()}" in result.err
    assert launched == []
    assert medvl(*argv).code == 0 and launched == [argv[1:]]  # once it is free, the launcher starts
    out.rmdir()  # the check took and released the lock, and left nothing in the folder
    assert medvl(*argv).code == 0 and not out.exists()  # nor makes one: a folder not there is held by no one
