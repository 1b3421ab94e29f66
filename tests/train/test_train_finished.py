"""A finished run re-run: answered from the run folder's files before the model or the data is loaded,
from the data when the files cannot tell, and never for a run whose final save did not complete."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import yaml

from medvl.train import runner

NAMES = ("model.safetensors", "train_summary.json", "metrics.jsonl", "train_config.yaml")


def files(run: Path) -> dict[str, bytes]:
    return {name: (run / name).read_bytes() for name in NAMES}


def nothing_to_do(run: Path, step: int) -> list[str]:
    return [f"nothing to do: {run} already finished at step {step} (train_summary.json); raise optim.max_steps "
            "/ optim.epochs to train on"]


class Loads:
    """How often the runner loaded the starting model and prepared the data; `forbid()` makes either fail."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch):
        self.patch, self.model, self.data = monkeypatch, 0, 0
        model_loader, data_loader = runner.load_start_model, runner.prepare_data

        def load_model(*args, **kwargs):
            self.model += 1
            return model_loader(*args, **kwargs)

        def prepare(*args, **kwargs):
            self.data += 1
            return data_loader(*args, **kwargs)

        monkeypatch.setattr(runner, "load_start_model", load_model)
        monkeypatch.setattr(runner, "prepare_data", prepare)

    def forbid(self) -> None:
        def refuse(*args, **kwargs):
            raise AssertionError("a finished run loaded its model or its data")

        self.patch.setattr(runner, "load_start_model", refuse)
        self.patch.setattr(runner, "prepare_data", refuse)


@pytest.fixture
def loads(monkeypatch) -> Loads:
    return Loads(monkeypatch)


@pytest.mark.parametrize("length", ["max_steps", "epochs"])
def test_a_finished_run_is_answered_from_its_files_without_loading_the_model_or_the_data(
        length, train_config, uneven_color_data, tmp_path, medvl, loads):
    """Before: the whole model, the processor and the data were loaded (minutes and tens of GB for a 7B
    run) before the resumed checkpoint's state said the run was finished. The epoch run (44 records,
    global batch 8: 6 steps per epoch, 1.5 epochs) takes the Trainer's count from its summary."""
    run = tmp_path / "run"
    lengths = {"max_steps": {"optim__max_steps": 5},
               "epochs": {"optim__max_steps": -1, "optim__epochs": 1.5, "optim__batch_size": 8}}[length]
    config = train_config(run, data__sources=[{"path": str(uneven_color_data)}], **lengths)
    (tmp_path / "train.yaml").write_text(yaml.safe_dump(config.model_dump(mode="json")))
    steps = 5 if length == "max_steps" else 9
    first = medvl("train", tmp_path / "train.yaml")
    assert first.code == 0 and f"trained {steps} steps" in first.out, first.err
    before = files(run)

    loads.forbid()
    shorter = "optim.max_steps=4" if length == "max_steps" else "optim.epochs=1.2"
    for overrides in ([], ["optim.lr=0.5", "logging.every_steps=3"], [shorter]):  # nothing that adds a step
        again = medvl("train", tmp_path / "train.yaml", *overrides)
        assert (again.code, again.out.splitlines()) == (0, nothing_to_do(run, steps)), (overrides, again.err)
        assert files(run) == before  # train_config.yaml too: nothing ran


def test_a_finished_run_whose_records_may_differ_is_answered_from_the_data_before_the_trainer(
        train_config, tmp_path, medvl, loads, color_data):
    """An epoch run whose source file changed since (or any change in what its epoch is counted from)
    counts its samples again: still finished when they give the same steps, with nothing rewritten; more
    epochs train on."""
    run = tmp_path / "run"
    data = tmp_path / "data.jsonl"
    data.write_bytes(color_data.read_bytes())
    config = train_config(run, optim__max_steps=-1, optim__epochs=1, optim__batch_size=16,
                          data__sources=[{"path": str(data), "image_root": str(color_data.parent)}])
    (tmp_path / "train.yaml").write_text(yaml.safe_dump(config.model_dump(mode="json")))
    assert "trained 3 steps" in medvl("train", tmp_path / "train.yaml").out
    before = files(run)
    os.utime(data, ns=(data.stat().st_atime_ns, data.stat().st_mtime_ns + 10**9))
    for overrides in ([], ["data.max_length=120"]):
        loads.model = loads.data = 0
        again = medvl("train", tmp_path / "train.yaml", *overrides)
        assert (again.code, again.out.splitlines()) == (0, nothing_to_do(run, 3)), again.err
        assert (loads.model, loads.data) == (1, 1)
        assert files(run) == before
    more = medvl("train", tmp_path / "train.yaml", "optim.epochs=2")
    assert more.code == 0 and "trained 6 steps" in more.out, more.err


def test_a_run_killed_in_its_final_save_saves_again_even_over_an_older_summary(
        train_config, tmp_path, medvl, loads, monkeypatch):
    """A finished run trained again from step 0 (save.resume=never) and killed during its final save
    leaves the old train_summary.json at the new last checkpoint's step. Before: the re-run took it for
    finished and left the torn model; the summary is now removed before a run takes its first step."""
    from medvl.model import checkpoint

    run = tmp_path / "run"
    config = train_config(run, optim__max_steps=4)
    (tmp_path / "train.yaml").write_text(yaml.safe_dump(config.model_dump(mode="json")))
    assert "trained 4 steps" in medvl("train", tmp_path / "train.yaml").out
    before = files(run)

    def killed_mid_save(model, processor, out):
        (Path(out) / "model.safetensors").write_bytes(b"torn")
        raise RuntimeError("killed during the final save")

    with monkeypatch.context() as patch:
        patch.setattr(checkpoint, "save_model", killed_mid_save)
        with pytest.raises(RuntimeError, match="killed during the final save"):
            medvl("train", tmp_path / "train.yaml", "save.resume=never")
    loads.model = 0
    resumed = medvl("train", tmp_path / "train.yaml")
    assert resumed.code == 0 and "trained 4 steps" in resumed.out, resumed.err
    assert loads.model == 1
    assert files(run)["model.safetensors"] == before["model.safetensors"]  # the same 4 steps from the same seed


@pytest.mark.parametrize("source", ["model.path", "model.spec"])
def test_a_finished_run_whose_tokenizer_was_replaced_in_place_counts_its_epoch_again(
        source, train_config, tiny_model_dir, smol_tokenizer, tmp_path, medvl, loads):
    """Before: the summary's basis held the model settings only, so a tokenizer replaced under the same
    folder went unnoticed and the run said "nothing to do" at the old epoch's length. Here a tokenizer
    without its BPE merges (one token a character: the 12 two-turn records are too long for 90 tokens)
    gives 36 samples, 9 steps an epoch; the real one, written in its place, 48 samples: 12 steps."""
    folder = tmp_path / "model"
    shutil.copytree(tiny_model_dir if source == "model.path" else smol_tokenizer, folder)
    tokenizer = folder / "tokenizer.json"
    real = tokenizer.read_text(encoding="utf-8")
    definition = json.loads(real)
    definition["model"]["merges"] = []
    tokenizer.write_text(json.dumps(definition), encoding="utf-8")
    model = {"model": {"path": str(folder)}} if source == "model.path" else {
        "model__spec__text__tokenizer": str(folder)}
    config = train_config(tmp_path / "run", optim__max_steps=-1, optim__epochs=1, data__max_length=90,
                          data__overlong="reject", **model)
    (tmp_path / "train.yaml").write_text(yaml.safe_dump(config.model_dump(mode="json")))
    first = medvl("train", tmp_path / "train.yaml")
    assert first.code == 0 and "trained 9 steps" in first.out, first.err

    tokenizer.write_text(real, encoding="utf-8")
    again = medvl("train", tmp_path / "train.yaml")
    assert again.code == 0 and "trained 12 steps" in again.out, again.err
    loads.forbid()  # unchanged since: the files tell again
    assert medvl("train", tmp_path / "train.yaml").out.splitlines() == nothing_to_do(tmp_path / "run", 12)


def test_the_run_folder_is_read_with_each_checkpoint_state_read_once(train_config, tmp_path, monkeypatch):
    """The resume checkpoint's trainer_state.json was read twice: to find the newest whole one, then for
    its step. A torn newer one is skipped, as before."""
    from medvl.train.resume import read_run

    run = tmp_path / "run"
    for step, text in ((2, '{"global_step": 2}'), (4, '{"global_step": 4}'), (6, '{"global_st')):
        (run / f"checkpoint-{step}").mkdir(parents=True)
        (run / f"checkpoint-{step}" / "trainer_state.json").write_text(text)
    reads: list[str] = []
    read_text = Path.read_text

    def counted(path: Path, *args, **kwargs) -> str:
        reads.append(f"{path.parent.name}/{path.name}")
        return read_text(path, *args, **kwargs)

    monkeypatch.setattr(Path, "read_text", counted)
    state = read_run(train_config(run), run, processes=1)
    assert (state.checkpoint, state.step) == (str(run / "checkpoint-4"), 4)
    assert [name for name in reads if name.endswith("trainer_state.json")] == [
        "checkpoint-6/trainer_state.json", "checkpoint-4/trainer_state.json"]


class _Started(Exception):
    """Raised at the Trainer's `on_train_begin`, once its `max_steps` is set: nothing trains."""


@pytest.mark.parametrize("samples,batch,accum,processes,drop_last,epochs", [
    (44, 4, 2, 1, False, 1.5), (44, 4, 1, 2, False, 1.5), (44, 4, 1, 2, True, 1.0), (7, 2, 3, 3, True, 2.0),
    (3, 8, 1, 4, False, 1.0), (50, 3, 2, 2, True, 0.3)])
def test_target_steps_is_the_trainers_max_steps(samples, batch, accum, processes, drop_last, epochs,
                                                train_config):
    """transformers exposes its steps-per-epoch count only on a Trainer with a dataloader
    (`set_initial_training_values`), so `resume.target_steps` repeats it to answer before anything is
    loaded: this pins it against `MedvlTrainer.train()`'s `state.max_steps` (medvl's padded epochs,
    accelerate's sharding for `processes`, whatever `dataloader_drop_last` says), stopped before its first
    step. One process is told it is the first of `processes`: the process state's count, which the sampler
    and accelerate's dataloader sharding read (launching real processes takes a minute)."""
    import torch
    from accelerate import PartialState
    from accelerate.state import AcceleratorState
    from transformers import TrainerCallback

    from medvl.train.resume import target_steps
    from medvl.train.trainer import MedvlTrainer, training_arguments

    class Weight(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.weight = torch.nn.Parameter(torch.ones(1))

        def forward(self, x):
            return {"loss": (self.weight * x).sum()}

    class MaxSteps(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            self.max_steps = state.max_steps
            raise _Started

    config = train_config(optim__batch_size=batch, optim__grad_accum=accum, optim__epochs=epochs,
                          optim__max_steps=-1)
    args = training_arguments(config)
    args.dataloader_drop_last = drop_last
    assert args.world_size == 1  # the process state is set up: from now on it says `processes`
    PartialState._shared_state["num_processes"] = processes  # what accelerate shards the dataloader by
    seen = MaxSteps()
    try:
        trainer = MedvlTrainer(model=Weight(), args=args, train_dataset=[{"x": torch.ones(1)}] * samples,
                               callbacks=[seen], flops=None, peak=0.0)
        with pytest.raises(_Started):
            trainer.train()
        assert (args.world_size, trainer.accelerator.num_processes) == (processes, processes)
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)  # as the next TrainingArguments do
    assert target_steps(config.optim, samples, processes) == seen.max_steps
