"""Kills are real kills: a tiny `medvl demo` in a process of its own, SIGKILLed (its process group, or its
main process alone as the OOM killer does) during a training stage with a checkpoint and during an
evaluation, leaves no process behind, and the same command run again finishes: finished steps
skipped, the stage resumed from its checkpoint, answered questions not asked again, the same
answers and weights as an uninterrupted run, and no checkpoint or half-written file left."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import pytest

from medvl.config import load_config
from medvl.demo import run as demo_run
from medvl.demo.config import DemoConfig
from medvl.demo.run import EVAL_RUNS, run_demo
from medvl.model.spec import tiny_spec

# a checkpoint every 3 of the finetune's 9 steps; one question per batch: a kill can fall between two
TINY = ["align.epochs=1", "instruct.epochs=1", "finetune.epochs=0.05", "save_every_steps=3", "prior.enabled=false",
        "eval_limit=12", "eval_batch_size=1", "eval_max_new_tokens=4"]


class TinyDemo:
    """`medvl demo --out OUT` on the tiny settings, started in a session of its own (its log in `log`)."""

    def __init__(self, out: Path, tokenizer: Path):
        self.out, self.log = out, out.with_suffix(".log")
        spec = json.dumps(tiny_spec(str(tokenizer)).model_dump())
        self.command = [sys.executable, "-m", "medvl.cli", "demo", "--out", str(out), *TINY, f"model={spec}"]
        self.process: subprocess.Popen | None = None

    def start(self) -> subprocess.Popen:
        with self.log.open("a") as log:
            self.process = subprocess.Popen(self.command, stdout=log, stderr=log, start_new_session=True)
        return self.process

    def finish(self) -> int:
        return self.start().wait(timeout=600)

    def kill_when(self, reached: Callable[[], bool], how: str) -> list[str]:
        """Start, SIGKILL once `reached()` (the process group, or the main process alone), and return the
        processes of the run (descendants seen while it ran, its session) still running 5 s later."""
        import psutil

        from medvl.io.process import running

        process = self.start()
        seen: dict[int, psutil.Process] = {}
        while not reached():
            assert process.poll() is None, f"the demo ended before the kill point:\n{self.log.read_text()[-3000:]}"
            seen.update((p.pid, p) for p in psutil.Process(process.pid).children(recursive=True))
            time.sleep(0.01)
        seen.update((p.pid, p) for p in psutil.Process(process.pid).children(recursive=True))
        seen.update((p.pid, p) for p in psutil.process_iter() if _session(p.pid) == process.pid != p.pid)
        if how == "process group":
            os.killpg(process.pid, signal.SIGKILL)
        else:
            process.kill()
        process.wait(timeout=30)
        deadline = time.monotonic() + 5
        while any(p.is_running() and running(p.pid) for p in seen.values()) and time.monotonic() < deadline:
            time.sleep(0.05)
        left = [p for p in seen.values() if p.is_running() and running(p.pid)]
        for orphan in left:
            orphan.kill()
        return [" ".join(p.cmdline()) for p in left]


def _session(pid: int) -> int | None:
    try:
        return os.getsid(pid)
    except OSError:
        return None


def _lines(path: Path) -> int:
    return len(path.read_text().splitlines()) if path.is_file() else 0


def _answers(out: Path) -> dict[str, list[tuple[str, str]]]:
    return {f"{p}-{s}": [(r["id"], r["output"]) for r in map(json.loads, (out / "eval" / f"{p}-{s}" / "predictions.jsonl").open())]
            for p, s in EVAL_RUNS}


def _scores(out: Path) -> dict[str, dict]:
    return {marker.stem: json.loads(marker.read_text())["scores"] for marker in (out / ".steps").glob("eval-*.json")}


def _files(out: Path) -> set[str]:
    """The output files, but TensorBoard's event files (one per invocation of a stage, by design)."""
    return {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file() and "tfevents" not in p.name}


@pytest.mark.slow
def test_a_killed_demo_resumes_where_it_stopped_and_ends_as_an_uninterrupted_one(tmp_path, smol_tokenizer):
    whole = TinyDemo(tmp_path / "whole", smol_tokenizer)
    assert whole.finish() == 0, whole.log.read_text()[-3000:]

    killed = TinyDemo(tmp_path / "killed", smol_tokenizer)
    finetune = killed.out / "finetune"
    assert killed.kill_when(lambda: any(finetune.glob("checkpoint-*/trainer_state.json")), "process group") == []
    asked = killed.out / "eval" / "open_closed-model" / "predictions.part-0.jsonl"
    assert killed.kill_when(lambda: _lines(asked) >= 1, "main process") == []
    resumed = killed.log.read_text()
    assert "resuming from " + str(finetune / "checkpoint-") in resumed  # not from step 0
    for step in ("curate", "data", "prior", "build", "align", "instruct"):  # finished before the first kill
        assert f"demo: {step} already done (resuming)" in resumed
    assert killed.finish() == 0, killed.log.read_text()[-3000:]

    run = json.loads((killed.out / "eval" / "open_closed-model" / "scores.json").read_text())
    assert run["answered"] == 12 and run["throughput"]["answered"] < 12  # those answered before the kill: not again
    assert _answers(killed.out) == _answers(whole.out) and _scores(killed.out) == _scores(whole.out)
    weights = [(out / "finetune" / "model.safetensors").read_bytes() for out in (whole.out, killed.out)]
    assert weights[0] == weights[1]
    assert not list(killed.out.rglob("checkpoint-*"))
    assert _files(killed.out) == _files(whole.out)  # no stray checkpoint, lock or half-written file


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
