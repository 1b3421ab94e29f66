"""Process-level training checks: 2 CPU processes == 1 process, resume after a real SIGKILL, and
`accelerate launch` workers that die with their launcher in a run folder that takes one writer."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from train_helpers import curve

from medvl.config import dump_config
from medvl.io.process import RunLock
from medvl.train.runner import run_training

pytestmark = pytest.mark.slow


def env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def weights(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(folder / "model.safetensors")


def test_two_cpu_processes_match_one_process_with_the_same_global_batch(train_config, uneven_color_data,
                                                                        two_cpu_processes, tmp_path):
    # Global batch 8 either way: 2 processes x 4, or 1 process x 4 x 2 accumulation steps. Samples
    # differ in supervised tokens (every 4th is two-turn), so the loss must be averaged per token
    # over the whole global batch, not per process or per micro-batch, for the curves to agree.
    # 44 records do not divide into global batches of 8: step 6 ends the first epoch with the 4
    # left over plus 4 padding samples on both paths, and steps 7-8 start the second epoch.
    data = [{"path": str(uneven_color_data)}]
    one = train_config(tmp_path / "one", optim__grad_accum=2, optim__max_steps=8, data__sources=data)
    two = train_config(tmp_path / "two", optim__grad_accum=1, optim__max_steps=8, data__sources=data)
    dump_config(two, tmp_path / "two.yaml")
    done = subprocess.run(two_cpu_processes.command("train", tmp_path / "two.yaml"), env=env(), capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads((tmp_path / "two" / "train_summary.json").read_text())
    assert summary["processes"] == 2
    run_training(one)
    assert curve(tmp_path / "two") == pytest.approx(curve(tmp_path / "one"), rel=1e-5)
    epochs = [json.loads(line)["epoch"] for line in (tmp_path / "one" / "metrics.jsonl").read_text().splitlines()]
    assert epochs[5] == 1.0 and epochs[-1] > 1.0
    # Summation order differs (all-reduce vs accumulation), and Adam turns the float noise of
    # near-zero gradients into visible updates for a few elements: allow a tenth of one lr step.
    for name, tensor in weights(tmp_path / "one").items():
        assert torch.allclose(tensor, weights(tmp_path / "two")[name], atol=1e-4), name
    # re-run: both processes get the main one's reading of the run folder and stop at once
    before = (tmp_path / "two" / "model.safetensors").read_bytes()
    again = subprocess.run(two_cpu_processes.command("train", tmp_path / "two.yaml"), env=env(), capture_output=True,
                           text=True, timeout=300)
    assert again.returncode == 0 and again.stdout.splitlines() == [
        f"nothing to do: {tmp_path / 'two'} already finished at step 8 (train_summary.json); raise "
        "optim.max_steps / optim.epochs to train on"], again.stderr[-3000:]
    assert (tmp_path / "two" / "model.safetensors").read_bytes() == before


def test_resume_after_sigkill_matches_an_uninterrupted_run(train_config, tmp_path):
    steps = 24
    uninterrupted = train_config(tmp_path / "a", optim__max_steps=steps, save__every_steps=3)
    killed = train_config(tmp_path / "b", optim__max_steps=steps, save__every_steps=3)
    dump_config(killed, tmp_path / "b.yaml")
    command = [sys.executable, "-m", "medvl.cli", "train", str(tmp_path / "b.yaml")]
    process = subprocess.Popen(command, env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    target = tmp_path / "b" / "checkpoint-9" / "trainer_state.json"
    deadline = time.monotonic() + 240
    while not target.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    assert process.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    assert not (tmp_path / "b" / "model.safetensors").exists()
    done = subprocess.run(command, env=env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "resuming from" in done.stderr
    run_training(uninterrupted)
    expected, got = curve(tmp_path / "a"), curve(tmp_path / "b")
    assert got[::4] == list(range(1, steps + 1))
    assert got == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("kill,through", [("process group", "accelerate"), ("launcher alone", "accelerate"),
                                          ("launcher alone", "medvl launch")])
def test_killing_an_accelerate_launch_run_leaves_no_worker_and_a_run_folder_takes_one_writer(
        kill, through, train_config, two_cpu_processes, tmp_path):
    # through `medvl launch` the workers know their launcher's pid (MEDVL_LAUNCHER_PID) and train as usual
    out = tmp_path / "run"
    dump_config(train_config(out, optim__max_steps=100_000, save__every_steps=2), tmp_path / "run.yaml")
    launcher = two_cpu_processes.start("train", tmp_path / "run.yaml", env=env(),
                                       through_medvl_launch=through == "medvl launch")
    deadline = time.monotonic() + 240
    while not (out / "checkpoint-2" / "trainer_state.json").exists() and launcher.poll() is None:
        assert time.monotonic() < deadline, two_cpu_processes.log.read_text()[-3000:]
        time.sleep(0.1)
    workers = two_cpu_processes.workers()
    assert len(workers) == 2 and all(os.getpgid(p.pid) != launcher.pid for p in workers)  # own sessions
    recorded = {p.environ().get("MEDVL_LAUNCHER_PID") for p in workers}
    assert recorded == ({str(launcher.pid)} if through == "medvl launch" else {None})

    # A second run on the folder in use is refused in one line naming the owner (the main worker).
    owner = json.loads((out / ".medvl.lock").read_text())["pid"]
    assert owner in {p.pid for p in workers}
    second = subprocess.run([sys.executable, "-m", "medvl.cli", "train", str(tmp_path / "run.yaml")], env=env(),
                            capture_output=True, text=True, timeout=120)
    assert second.returncode == 2
    assert second.stderr.strip().splitlines()[-1].startswith(
        f"error: {out} is in use by another training run (pid {owner} on ")

    assert not two_cpu_processes.kill(kill, seconds=10), "a worker outlived its launcher"
    assert not (out / "model.safetensors").exists()
    with RunLock(out):  # the lock the killed main worker left behind is taken over
        pass
