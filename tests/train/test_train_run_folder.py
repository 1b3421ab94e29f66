"""What a training run writes in its run folder and does with it: metrics (MFU against a measured or
datasheet peak), the plot, summary and checkpoint rotation, resume after a failure, a finished run re-run,
no folder left by a run that fails before writing, and file modes that follow the umask."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from train_helpers import curve
from transformers import TrainerCallback

from medvl.train.metrics import read_metrics
from medvl.train.runner import run_training


def test_metrics_file_plot_summary_and_checkpoint_rotation(train_config, tmp_path):
    config = train_config(tmp_path / "run", logging__report_to=["tensorboard"])
    run_training(config)
    out = Path(config.output_dir)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6]
    for key in ("loss", "learning_rate", "grad_norm", "tokens_per_s", "images_per_s", "mfu", "epoch"):
        assert all(isinstance(r[key], float) for r in rows), key
    assert all(r["images_per_s"] > 0 and 0 < r["mfu"] <= 1 for r in rows)
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-4", "checkpoint-6"]
    assert (out / "loss.png").stat().st_size > 1000
    assert list(out.glob("runs/*/events.out.tfevents.*"))
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["global_step"] == 6 and summary["trainable"]["vision"]["trainable"] == 0


_PEAK_PROBES = """
import json, multiprocessing, os, sys, time
from pathlib import Path
import torch
import yaml
from medvl.train import metrics

def measure(dtype, device="cpu", seconds=0.5):
    time.sleep(0.05)  # a probe takes ~0.5 s
    return 1e9

def probe(dtype, barrier):
    barrier.wait()
    metrics._cached_peak("cpu", dtype)

if __name__ == "__main__":
    metrics.measure_matmul_peak = measure
    fork, lost = multiprocessing.get_context("fork"), 0
    dtypes = [torch.float32, torch.bfloat16, torch.float16]
    for trial in range(int(sys.argv[2])):
        os.environ["MEDVL_CACHE"] = f"{sys.argv[1]}/{trial}"  # a fresh cache each time
        barrier = fork.Barrier(len(dtypes))
        probes = [fork.Process(target=probe, args=(dtype, barrier)) for dtype in dtypes]
        for process in probes:
            process.start()
        for process in probes:
            process.join()
            assert process.exitcode == 0
        lost += len(dtypes) - len(json.loads((Path(os.environ["MEDVL_CACHE"]) / metrics.PEAK_CACHE_NAME).read_text()))
    print(lost)
"""


def test_runs_probing_the_matmul_peak_together_keep_every_entry(tmp_path):
    # 3 processes (one per dtype) probe at once on a fresh cache, 10 times: each wrote back the file
    # as it had read it plus its own entry, losing the others' (5 of 9 entries lost in 3 such starts)
    result = subprocess.run([sys.executable, "-c", _PEAK_PROBES, str(tmp_path), "10"], capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split()[-1] == "0", result.stdout


def test_mfu_is_never_above_one_on_any_path(train_config, tmp_path, monkeypatch):
    import time

    from medvl.train import metrics
    from medvl.train.metrics import peak_flops, utilisation

    # CPU: the peak is a measured matmul rate for the run's dtype, which a matmul on all threads
    # cannot beat (10% margin for noise; the old 0.1 TFLOPS/thread guess was 2x below bf16 matmuls
    # on avx512_bf16 CPUs such as this project's AMD EPYC).
    monkeypatch.setenv("MEDVL_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for dtype in (torch.float32, torch.bfloat16):
        peak = peak_flops(None, dtype)
        all_threads_wall_clock = metrics._best_matmul_rate(dtype, "cpu", 512, time.perf_counter, 0.3)
        assert all_threads_wall_clock <= 1.1 * peak
    cached = json.loads((tmp_path / "cache" / metrics.PEAK_CACHE_NAME).read_text())
    assert sorted(key.split("|")[2] for key in cached) == ["torch.bfloat16", "torch.float32"]
    monkeypatch.setattr(metrics, "measure_matmul_peak", lambda *a, **k: pytest.fail("the cached peak was re-measured"))
    assert peak_flops(None, torch.float32) == next(v for k, v in cached.items() if "float32" in k)

    # GPUs: the datasheet's dense tensor-core peak for the dtype.
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    for name, dtype, tflops in [("NVIDIA H200", torch.bfloat16, 989), ("NVIDIA H100 PCIe", torch.bfloat16, 756),
                                ("NVIDIA A100-SXM4-80GB", torch.float32, 156), ("NVIDIA A10", torch.float16, 125)]:
        monkeypatch.setattr(torch.cuda, "get_device_name", lambda name=name: name)
        assert peak_flops(None, dtype) == tflops * 1e12, name
    monkeypatch.undo()

    # A rate above the peak means the peak is wrong: no MFU rather than one above 1.
    assert utilisation(5e11, 1e12, devices=1) == 0.5 and utilisation(3e12, 1e12, devices=2) is None
    assert utilisation(1.0, 0.0, devices=1) is None
    run_training(train_config(tmp_path / "run", optim__max_steps=2, logging__peak_tflops=1e-9))
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and not any("mfu" in r for r in rows)


def test_flops_model_counts_frozen_and_trained_parts():
    from medvl.train.metrics import FlopsModel

    params = {"vision": {"total": 100, "trainable": 0}, "projector": {"total": 10, "trainable": 10},
              "llm": {"total": 1000, "trainable": 0}, "head": {"total": 50, "trainable": 0}}
    flops = FlopsModel(params, vision_tokens_per_image=5, image_tokens_per_image=4)
    # vision frozen upstream: forward only; projector trained; llm and head frozen but backpropagated.
    expected = 2 * 100 * (2 * 5) + 6 * 10 * (2 * 4) + 4 * 1000 * 30 + 4 * 50 * 3
    assert flops.step_flops(tokens=30, images=2, supervised=3) == expected


class FailAt(TrainerCallback):
    """Raise at the end of optimizer step `step` (before that step's checkpoint is written)."""

    def __init__(self, step: int):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            raise RuntimeError(f"injected failure at step {self.step}")


def test_resume_after_a_failure_continues_the_same_loss_curve(train_config, tmp_path):
    uninterrupted = train_config(tmp_path / "a", optim__max_steps=8, data__num_workers=0)
    run_training(uninterrupted)
    interrupted = train_config(tmp_path / "b", optim__max_steps=8)
    with pytest.raises(RuntimeError, match="injected failure at step 7"):
        run_training(interrupted, callbacks=[FailAt(7)])
    assert curve(tmp_path / "b")[-4] == 6
    assert sorted(p.name for p in (tmp_path / "b").glob("checkpoint-*")) == ["checkpoint-4", "checkpoint-6"]
    (tmp_path / "b" / "checkpoint-6" / "trainer_state.json").write_text('{"trunc')  # as if killed mid-save
    resumed = run_training(interrupted)
    assert resumed.global_step == 8
    expected, got = curve(tmp_path / "a"), curve(tmp_path / "b")
    assert got[::4] == list(range(1, 9))
    assert got == pytest.approx(expected, rel=1e-5)


def test_a_finished_run_that_ends_an_epoch_stays_finished(train_config, tmp_path, medvl, caplog):
    """`medvl train` run again after `optim.epochs` (the common case: the last checkpoint ends an epoch) takes
    no step and rewrites nothing (before: the Trainer ran no epoch, so the run counted as unfinished and was
    saved again, printing 'trained N steps'), and says so once: no empty progress bar or metrics line of the
    Trainer's (before: '0/3 [00:00<?, ?it/s]' twice and "{'train_runtime': ...}")."""
    config = train_config(tmp_path / "run", optim__max_steps=-1, optim__epochs=1, optim__batch_size=16,
                          logging__progress_bar=True)
    (tmp_path / "train.yaml").write_text(yaml.safe_dump(config.model_dump(mode="json")))
    first = medvl("train", tmp_path / "train.yaml")
    assert first.code == 0 and "trained 3 steps" in first.out, first.err
    names = ("model.safetensors", "train_summary.json", "metrics.jsonl")
    before = {name: (tmp_path / "run" / name).read_bytes() for name in names}
    caplog.set_level(logging.INFO)
    again = medvl("train", tmp_path / "train.yaml")
    assert again.code == 0 and again.out.splitlines() == [
        f"nothing to do: {tmp_path / 'run'} already finished at step 3 (train_summary.json); raise optim.max_steps "
        "/ optim.epochs to train on"]
    # no bar of the 3 steps ('Loading weights' of the checkpoint may show: this module imports transformers
    # before `medvl` sets HF_HUB_DISABLE_PROGRESS_BARS, which a shell's `medvl train` has from the start)
    assert "/3 [" not in again.err, again.err
    assert not [r for r in caplog.records if "nothing to do" in r.getMessage() and r.levelno >= logging.INFO]  # once
    assert {name: (tmp_path / "run" / name).read_bytes() for name in names} == before


def test_a_finished_run_stays_finished_and_a_kill_in_the_final_save_resumes_to_the_same_result(
        train_config, tmp_path, monkeypatch, capsys):
    from safetensors.torch import load_file

    from medvl.model import checkpoint

    # 48 records / batch 4 = 12 steps per epoch: step 14 ends inside the second epoch.
    settings = {"optim__max_steps": 14, "optim__scheduler": "constant_with_warmup", "save__every_steps": 5}
    finished = run_training(train_config(tmp_path / "a", **settings))
    names = ("model.safetensors", "train_summary.json", "metrics.jsonl")
    before = {name: (tmp_path / "a" / name).read_bytes() for name in names}
    capsys.readouterr()
    again = run_training(train_config(tmp_path / "a", **settings))
    assert (again.global_step, again.already_finished, finished.already_finished) == (14, True, False)
    assert "train_runtime" not in capsys.readouterr().out  # the Trainer's metrics line of a call that took no step
    assert {name: (tmp_path / "a" / name).read_bytes() for name in names} == before
    assert sorted(p.name for p in (tmp_path / "a").glob("checkpoint-*")) == ["checkpoint-10", "checkpoint-14"]

    def killed_mid_save(model, processor, out):
        (Path(out) / "model.safetensors").write_bytes(b"torn")
        raise RuntimeError("killed during the final save")

    monkeypatch.setattr(checkpoint, "save_model", killed_mid_save)
    with pytest.raises(RuntimeError, match="killed during the final save"):
        run_training(train_config(tmp_path / "b", **settings))
    monkeypatch.undo()
    resumed = run_training(train_config(tmp_path / "b", **settings))
    assert (resumed.global_step, resumed.already_finished) == (14, False)
    assert curve(tmp_path / "b") == curve(tmp_path / "a")
    assert (tmp_path / "b" / "train_summary.json").read_bytes() == before["train_summary.json"]
    expected, got = load_file(tmp_path / "a" / "model.safetensors"), load_file(tmp_path / "b" / "model.safetensors")
    assert expected.keys() == got.keys() and all(torch.equal(expected[k], got[k]) for k in expected)


def test_a_run_with_projector_lr_resumes_to_the_same_curve_and_a_changed_setting_is_a_clear_error(
        train_config, tmp_path):
    from medvl.config import ConfigError

    settings = {"optim__projector_lr": 3e-3, "optim__max_steps": 6}
    run_training(train_config(tmp_path / "a", **settings))
    with pytest.raises(RuntimeError, match="injected failure at step 5"):
        run_training(train_config(tmp_path / "b", **settings), callbacks=[FailAt(5)])
    assert run_training(train_config(tmp_path / "b", **settings)).global_step == 6  # from checkpoint-4
    assert curve(tmp_path / "b") == pytest.approx(curve(tmp_path / "a"), rel=1e-5)
    rates = [[r["projector_learning_rate"] for r in read_metrics(tmp_path / run / "metrics.jsonl")] for run in "ab"]
    assert len(rates[1]) == 6 and rates[1] == pytest.approx(rates[0], rel=1e-6)
    # a checkpoint of the same run without projector_lr has one pair of optimizer groups, not two
    with pytest.raises(RuntimeError, match="injected failure at step 3"):
        run_training(train_config(tmp_path / "c", optim__max_steps=6), callbacks=[FailAt(3)])
    with pytest.raises(ConfigError, match="checkpoint-2: its optimizer state does not fit this run"):
        run_training(train_config(tmp_path / "c", **settings))


def test_a_run_that_fails_before_writing_anything_leaves_no_run_folder(train_config, tmp_path, medvl):
    """The run lock made output_dir before the model was loaded and the data read: a missing model.path or
    no data source left it behind, empty."""
    for name, overrides in (("missing-model", {"model": {"path": str(tmp_path / "none")}}),
                            ("no-data", {"data__sources": []})):
        config = train_config(tmp_path / "runs" / name, **overrides)
        (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump(config.model_dump(mode="json")))
        outcome = medvl("train", tmp_path / f"{name}.yaml")
        assert outcome.code == 2 and outcome.err.strip().splitlines()[-1].startswith("error: "), outcome.err
    assert not (tmp_path / "runs").exists()


def test_a_spec_error_names_the_key_the_train_config_holds_it_at(train_config, smol_tokenizer, tmp_path, medvl):
    """`model.spec.text.keep_layers` beyond the LLM's layers was reported as `text.keep_layers` (the key of a spec
    file of its own, which a train config does not have)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig

    AutoModelForCausalLM.from_config(LlamaConfig(vocab_size=49152, hidden_size=64, num_hidden_layers=2,
                                                 num_attention_heads=4, intermediate_size=128)).save_pretrained(
        tmp_path / "llm")
    AutoTokenizer.from_pretrained(smol_tokenizer).save_pretrained(tmp_path / "llm")
    config = train_config(tmp_path / "runs" / "cut", model__spec__text={"path": str(tmp_path / "llm")})
    (tmp_path / "train.yaml").write_text(yaml.safe_dump(config.model_dump(mode="json")))
    outcome = medvl("train", tmp_path / "train.yaml", "model.spec.text.keep_layers=3")
    assert outcome.code == 2 and outcome.err.strip().splitlines()[-1] == (
        "error: model.spec.text.keep_layers=3 does not fit the LLM of model.spec.text.path, which has only 2 "
        "layers: keep at most 2, or indices up to 1"), outcome.err
    assert not (tmp_path / "runs").exists()


def test_every_file_of_a_run_follows_the_umask(train_config, tmp_path):
    """Checkpoints included: safetensors writes its files 0600, so a run in a shared folder could not be resumed
    or evaluated by the team (everything else medvl writes is 0666 less the umask)."""
    import os
    import stat

    previous = os.umask(0o002)
    try:
        config = train_config(tmp_path / "run", optim__max_steps=2)
        run_training(config)
    finally:
        os.umask(previous)
    modes = {str(p.relative_to(tmp_path)): oct(stat.S_IMODE(p.stat().st_mode))
             for p in (tmp_path / "run").rglob("*") if p.is_file()}
    assert any("checkpoint-2/" in name and name.endswith(".safetensors") for name in modes), modes
    assert {name: mode for name, mode in modes.items() if mode != oct(0o664)} == {}
