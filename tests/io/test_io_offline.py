"""`materialise`: a cached folder is built once, atomically, and nothing half-built outlives its run."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from medvl.io.offline import materialise


def dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def save_weights(tmp: Path) -> None:
    tmp.mkdir()
    (tmp / "weights.bin").write_bytes(b"w")


def test_it_builds_once_and_removes_what_killed_runs_left(tmp_path: Path):
    target = tmp_path / "cache" / "asset"
    target.parent.mkdir()
    killed = target.with_name(f"asset.tmp-{dead_pid()}")  # a run killed while building
    killed.mkdir()
    running = target.with_name(f"asset.tmp-{os.getppid()}")  # a run still building: left alone
    running.mkdir()
    assert materialise(target, save_weights) == target
    assert (target / "weights.bin").read_bytes() == b"w" and (target / ".complete").exists()
    assert not killed.exists() and running.exists()
    assert materialise(target, lambda tmp: pytest.fail("a complete folder was built again")) == target


def test_a_failed_build_leaves_nothing(tmp_path: Path):
    target = tmp_path / "asset"

    def broken(tmp: Path) -> None:
        save_weights(tmp)
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        materialise(target, broken)
    assert list(tmp_path.iterdir()) == []
    assert materialise(target, save_weights) == target and (target / "weights.bin").exists()
