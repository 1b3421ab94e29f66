"""`materialise`: a cached folder is built once, atomically, by one process at a time, and nothing
half-built outlives its run."""

from __future__ import annotations

import multiprocessing
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from medvl.io.offline import materialise

# A builder in its own process: its save writes one file, then waits `seconds` before the second
# (a 16 s dequantisation, a minutes-long distillation), and counts each build in `target`.builds.
_BUILDER = """
import sys, time
from pathlib import Path
from medvl.io.offline import materialise

target, seconds = Path(sys.argv[1]), float(sys.argv[2])

def save(tmp):
    with open(f"{target}.builds", "a") as builds:
        builds.write("built\\n")
    tmp.mkdir()
    (tmp / "first.bin").write_bytes(b"1")
    time.sleep(seconds)
    (tmp / "second.bin").write_bytes(b"2")

materialise(target, save)
"""


def start_builder(target: Path, seconds: float) -> subprocess.Popen:
    """A builder process, returned once its copy is under way."""
    builder = subprocess.Popen([sys.executable, "-c", _BUILDER, str(target), str(seconds)], stderr=subprocess.PIPE,
                               text=True)
    deadline = time.monotonic() + 60
    while not any(target.parent.glob(f"{target.name}.tmp-*/first.bin")):
        assert builder.poll() is None, builder.stderr.read()
        assert time.monotonic() < deadline, "the builder never started its copy"
        time.sleep(0.02)
    return builder


def save_weights(tmp: Path) -> None:
    tmp.mkdir()
    (tmp / "weights.bin").write_bytes(b"w")


def test_it_builds_once_and_removes_what_a_killed_builder_left(tmp_path: Path):
    target = tmp_path / "cache" / "asset"
    target.parent.mkdir()
    killed = start_builder(target, seconds=60)
    killed.send_signal(signal.SIGKILL)  # its lock dies with it; its half-built copy stays behind
    killed.wait()
    assert any(target.parent.glob("asset.tmp-*"))
    assert materialise(target, save_weights) == target
    assert (target / "weights.bin").read_bytes() == b"w" and (target / ".complete").exists()
    assert not any(target.parent.glob("asset.tmp-*"))
    assert materialise(target, lambda tmp: pytest.fail("a complete folder was built again")) == target


def test_a_build_under_way_elsewhere_is_waited_for_not_deleted(tmp_path: Path, monkeypatch):
    # The builder's pid means nothing here, as when it runs on another machine or in another
    # container sharing the cache: a pid check took its copy for a dead run's and deleted it
    # under it (the builder crashed; the same with a real `unshare --pid`: 5 crashes in 5 tries)
    target = tmp_path / "asset"
    builder = start_builder(target, seconds=2)
    real_kill = os.kill

    def kill(pid: int, sig: int) -> None:
        if pid == builder.pid:
            raise ProcessLookupError(pid)
        real_kill(pid, sig)

    monkeypatch.setattr(os, "kill", kill)
    assert materialise(target, lambda tmp: pytest.fail("built while another build was under way")) == target
    assert builder.wait(timeout=60) == 0, builder.stderr.read()
    assert sorted(p.name for p in target.iterdir()) == [".complete", "first.bin", "second.bin"]


def _materialise_together(target: Path, barrier) -> None:
    barrier.wait()
    subprocess.run([sys.executable, "-c", _BUILDER, str(target), "0.5"], check=True)


def test_processes_starting_together_on_a_fresh_cache_build_it_once(tmp_path: Path):
    target = tmp_path / "asset"
    fork = multiprocessing.get_context("fork")
    barrier = fork.Barrier(3)
    starters = [fork.Process(target=_materialise_together, args=(target, barrier)) for _ in range(3)]
    for starter in starters:
        starter.start()
    for starter in starters:
        starter.join(timeout=120)
    assert [starter.exitcode for starter in starters] == [0, 0, 0]
    assert Path(f"{target}.builds").read_text() == "built\n"  # the others waited and reused it
    assert sorted(p.name for p in target.iterdir()) == [".complete", "first.bin", "second.bin"]


def test_a_failed_build_leaves_nothing(tmp_path: Path):
    target = tmp_path / "asset"

    def broken(tmp: Path) -> None:
        save_weights(tmp)
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        materialise(target, broken)
    assert [p.name for p in tmp_path.iterdir() if p.name != "asset.lock"] == []  # the build lock may stay
    assert materialise(target, save_weights) == target and (target / "weights.bin").exists()
