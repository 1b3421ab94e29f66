"""`medvl launch`: what would fail in every worker or inside accelerate with a traceback is one line
and exit 2 before any process starts; a check that passes makes no run folder; the launcher is found
beside medvl's Python too.

`os.execv` is replaced here: a check that lets a bad launch through fails the test instead of
turning the test process into the launcher."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import pytest

from medvl.config import dump_config
from medvl.io.process import RunLock

ROOT = Path(__file__).resolve().parents[2]
ACCELERATE = ROOT / "configs" / "accelerate"


class Launched(Exception):
    """os.execv was reached: the launcher would have started."""


@pytest.fixture
def no_exec(monkeypatch) -> list[tuple[str, list[str]]]:
    calls: list[tuple[str, list[str]]] = []
    # exec_launcher sets it: setenv first so that undo restores it (delenv of an absent name records nothing,
    # and a leaked pid would tell every later worker that this test process is its launcher)
    monkeypatch.setenv("MEDVL_LAUNCHER_PID", "")
    monkeypatch.delenv("MEDVL_LAUNCHER_PID")

    def execv(program: str, argv: list[str]) -> None:
        calls.append((program, list(argv)))
        raise Launched(program)

    monkeypatch.setattr(os, "execv", execv)
    return calls


def _launch_train(accelerate_config: Path, train_yaml: Path, *overrides: str) -> list[str]:
    return ["launch", "accelerate", "launch", "--config_file", str(accelerate_config), "-m", "medvl.cli", "train",
            str(train_yaml), *overrides]


def test_a_bad_launch_is_one_line_before_any_process(train_config, tmp_path, no_exec, medvl):
    good = tmp_path / "train.yaml"
    dump_config(train_config(tmp_path / "run"), good)
    not_a_model = tmp_path / "from-folder.yaml"
    dump_config(train_config(tmp_path / "run", model__path=str(tmp_path), model__spec=None), not_a_model)
    ds_config = tmp_path / "ds.yaml"
    ds_config.write_text("distributed_type: DEEPSPEED\ndeepspeed_config:\n  deepspeed_config_file: no/such.json\n")
    deepspeed_missing = importlib.util.find_spec("deepspeed") is None
    cases = [
        (["launch", "--nproc", "2", "medvl", "train", str(good)], "error: --nproc: medvl launch takes no options"),
        (_launch_train(tmp_path / "missing.yaml", good), "missing.yaml: no such accelerate config file"),
        (_launch_train(ds_config, good), "runs DeepSpeed, which is not installed" if deepspeed_missing
         else "deepspeed_config_file no/such.json not found"),
        (_launch_train(ACCELERATE / "cpu_2proc.yaml", good, "optim.lrr=3"), "optim.lrr: unknown key"),
        (_launch_train(ACCELERATE / "cpu_2proc.yaml", not_a_model), f"model.path: {tmp_path} is not a saved model"),
    ]
    for args, expected in cases:
        result = medvl(*args)
        assert result.code == 2 and result.err.count("error:") == 1 and expected in result.err, (args, result.err)
    with RunLock(tmp_path / "run", what="training run"):  # another run is training there
        result = medvl(*_launch_train(ACCELERATE / "cpu_2proc.yaml", good))
    assert result.code == 2 and f"error: {tmp_path / 'run'} is in use by another training run (pid {os.getpid()}" \
        in result.err
    assert no_exec == []


def test_the_launcher_is_found_beside_medvls_python(train_config, tmp_path, no_exec, medvl, monkeypatch):
    beside = Path(sys.executable).parent / "accelerate"
    if not beside.is_file():
        pytest.skip(f"accelerate is not installed beside {sys.executable}")
    monkeypatch.setenv("PATH", str(tmp_path))  # /venv/bin/medvl run without the venv on PATH
    good = tmp_path / "train.yaml"
    dump_config(train_config(tmp_path / "run"), good)
    with pytest.raises(Launched):
        medvl(*_launch_train(ACCELERATE / "cpu_2proc.yaml", good))
    assert [program for program, _ in no_exec] == [str(beside)]
    assert os.environ["MEDVL_LAUNCHER_PID"] == str(os.getpid())


def test_the_launcher_is_looked_up_once_and_that_program_is_the_one_run(train_config, tmp_path, no_exec, medvl,
                                                                         monkeypatch):
    import shutil

    launcher = tmp_path / "bin" / "accelerate"
    launcher.parent.mkdir()
    launcher.write_text("#!/bin/sh\n")
    launcher.chmod(0o755)
    monkeypatch.setenv("PATH", str(launcher.parent))
    lookups: list[str] = []
    which = shutil.which
    monkeypatch.setattr(shutil, "which", lambda name, *args, **kwargs: lookups.append(name) or which(name, *args,
                                                                                                        **kwargs))
    good = tmp_path / "train.yaml"
    dump_config(train_config(tmp_path / "run"), good)
    argv = _launch_train(ACCELERATE / "cpu_2proc.yaml", good)
    with pytest.raises(Launched):
        medvl(*argv)
    assert lookups == ["accelerate"]  # found once, before the config checks; not again to exec it
    assert no_exec == [(str(launcher), argv[1:])]


def test_the_check_makes_no_run_folder(train_config, tmp_path, no_exec, medvl):
    """A folder made by the check would be left empty by workers that fail before writing anything."""
    good = tmp_path / "train.yaml"
    out = tmp_path / "runs" / "run"
    dump_config(train_config(out), good)
    argv = _launch_train(ACCELERATE / "cpu_2proc.yaml", good)
    with pytest.raises(Launched):
        medvl(*argv)
    assert no_exec == [(no_exec[0][0], argv[1:])]  # the check passed: the launcher was started
    assert not (tmp_path / "runs").exists()  # and it made no folder, nor a parent of one
    out.mkdir(parents=True)  # a folder already there is checked with its lock, and left as it was
    with pytest.raises(Launched):
        medvl(*argv)
    assert len(no_exec) == 2 and list(out.iterdir()) == []


def test_a_run_folder_that_cannot_be_made_is_refused_without_making_one(train_config, tmp_path, no_exec, medvl):
    """Not making the folder must not lose the check that it can be made: a file in the way is one line."""
    (tmp_path / "runs").write_text("a file")
    good = tmp_path / "train.yaml"
    dump_config(train_config(tmp_path / "runs" / "run"), good)
    result = medvl(*_launch_train(ACCELERATE / "cpu_2proc.yaml", good))
    assert result.code == 2 and no_exec == [], result.err
    assert result.err == (f"error: {tmp_path / 'runs' / 'run'}: {tmp_path / 'runs'} is a file, not a folder; "
                          "choose another output path or move that file\n")
