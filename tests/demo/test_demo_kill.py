"""Kills are real kills: a demo resumed after a SIGKILL leaves no half-written file behind."""

from __future__ import annotations

import signal
import subprocess
import sys

import pytest

from medvl.config import load_config
from medvl.demo import run as demo_run
from medvl.demo.config import DemoConfig
from medvl.demo.run import run_demo


class FirstStepReached(Exception):
    pass


def test_a_write_a_killed_demo_left_unfinished_is_deleted_when_it_resumes(tmp_path, monkeypatch):
    """A SIGKILL inside an atomic write (the curation report's plot, a merge of predictions) left its
    temporary file in the demo folder for good: the resumed demo finished beside it."""
    report = tmp_path / "demo" / "curate" / "report.png"
    writer = ("import os, signal, sys\nfrom medvl.io.files import atomic_output\n"
              "with atomic_output(sys.argv[1]) as tmp:\n    tmp.write_bytes(b'half a plot')\n"
              "    os.kill(os.getpid(), signal.SIGKILL)\n")
    assert subprocess.run([sys.executable, "-c", writer, str(report)]).returncode == -signal.SIGKILL
    partial = [p for p in report.parent.iterdir() if p != report]
    assert len(partial) == 1 and partial[0].name.startswith(".report.png.") and not report.exists()
    mine = [report.parent / name for name in (".notes.tmp", ".report.png.tmp.png", "report.png.abcd1234.tmp.png")]
    for path in mine:  # files a user put there, named much alike
        path.write_text("kept")

    def first_step(config, out):
        raise FirstStepReached

    monkeypatch.setattr(demo_run, "curate", first_step)
    with pytest.raises(FirstStepReached):
        run_demo(load_config(DemoConfig, None, [f"output_dir={tmp_path / 'demo'}"]))
    assert sorted(report.parent.iterdir()) == sorted(mine)
