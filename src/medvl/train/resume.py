"""Where a training run resumes from, and whether it has finished: read from its run folder's files.

A run is finished when the checkpoint it would resume from is the one its final save was made from
(`train_summary.json`, written last, holds that checkpoint's step) and that step reaches the run's
length for the config given: `optim.max_steps`, else `optim.epochs` times the steps per epoch.
`RunState.finished` is the one place that decides it.

The steps per epoch depend on the epoch's samples, which only the data tells. The summary records
what they were counted from (`epoch_basis`: the model and data settings, the source files' size and
time, those of the files the processor is read from (tokenizer, chat template, image processor: what
measures the records, so a tokenizer replaced in place under the same `model.path` counts as a
change), the batch and the process count); a config with the same basis reuses its count, so a
re-run of a finished run is answered before any model or data is loaded. Any other config (or a
source that is a Hugging Face dataset) is answered once the runner has counted the samples.
"""

from __future__ import annotations

import json
import logging
import math
import re
from dataclasses import dataclass
from glob import escape
from pathlib import Path
from typing import Any, NamedTuple

from medvl.config import ConfigError
from medvl.io.offline import OfflineAssetMissing, resolve_asset
from medvl.train.config import ModelSource, OptimConfig, TrainConfig
from medvl.train.sources import file_fingerprint, stat_fingerprint
from medvl.train.validate import REPORT_NAME, CheckReport

__all__ = ["SUMMARY_NAME", "PROCESSOR_FILES", "RunState", "Checkpoint", "read_run", "epoch_basis",
           "processor_fingerprint", "target_steps", "resume_checkpoint", "last_complete_checkpoint"]

log = logging.getLogger(__name__)
SUMMARY_NAME = "train_summary.json"  # written last: its step says the final save is complete
# The files of a model (or tokenizer, or vision tower) folder that a processor is read from: tokenizer,
# chat template, image processor, config. Not the weights, nor the files of a run folder (its lock).
PROCESSOR_FILES = ("config.json", "tokenizer*", "special_tokens_map.json", "added_tokens.json", "vocab*",
                   "merges*", "*.model", "*chat_template*", "additional_chat_templates/*",
                   "*processor_config.json")


class Checkpoint(NamedTuple):
    """A checkpoint folder and the global step in its `trainer_state.json` (None where it holds none)."""

    path: str
    step: int | None


@dataclass
class RunState:
    """What the run folder says for one config: the checkpoint to resume from and the last final save."""

    checkpoint: str | None  # the checkpoint the run resumes from (None: it starts from step 0)
    step: int | None  # that checkpoint's global step
    summary: dict[str, Any] | None  # train_summary.json of the last final save
    samples: int | None = None  # the summary's samples per epoch, where they hold for this config (same basis)
    report: CheckReport | None = None  # the run's data check, read when the files alone tell it finished
    processor_files: list[str] | None = None  # `processor_fingerprint`, taken before the processor is loaded

    def finished(self, optim: OptimConfig, processes: int, samples: int | None = None) -> bool:
        """Is there nothing to do: the final save was made from the resume checkpoint, and that
        checkpoint's step reaches `optim`'s length (with `samples` per epoch, by default the summary's
        where it holds; a length that needs a count not known here is not reached)."""
        if self.step is None or self.summary is None or self.summary.get("global_step") != self.step:
            return False
        target = target_steps(optim, self.samples if samples is None else samples, processes)
        return target is not None and self.step >= target


def read_run(config: TrainConfig, out: Path, processes: int) -> RunState:
    """The run folder's state for `config`, as the main process reads it (every process gets the same:
    node-local copies of the data may differ in time)."""
    from accelerate import PartialState
    from accelerate.utils import broadcast_object_list

    checkpoint = resume_checkpoint(config, out)  # every process: a missing folder fails everywhere alike
    state = _read(config, out, processes, checkpoint) if PartialState().is_main_process else None
    return broadcast_object_list([state])[0]


def _read(config: TrainConfig, out: Path, processes: int, checkpoint: Checkpoint | None) -> RunState:
    path, step = checkpoint if checkpoint else (None, None)
    state = RunState(path, step, _json(out / SUMMARY_NAME), processor_files=processor_fingerprint(config.model))
    if state.summary is not None:
        basis = epoch_basis(config, processes, [file_fingerprint(s) for s in config.data.sources],
                            state.processor_files)
        known = None not in basis["sources"] and basis["processor"] is not None
        if known and state.summary.get("epoch_basis") == basis:
            state.samples = state.summary.get("samples_per_epoch")
    if state.finished(config.optim, processes):
        state.report = _report(out / "data_check" / REPORT_NAME)
    return state


def _report(path: Path) -> CheckReport | None:
    """The data check in `path`; None when it is missing or not one (the runner checks the data again)."""
    try:
        return CheckReport.from_json(_json(path), path)
    except (KeyError, TypeError):
        return None


def epoch_basis(config: TrainConfig, processes: int, sources: list[str | None],
                processor: list[str] | None) -> dict[str, Any]:
    """What a run's samples and steps per epoch are counted from: the model settings and the files its
    processor is read from (`processor_fingerprint`: the tokenizer measures the records), the data
    settings, the sources' fingerprints (`LoadedSource.fingerprint`), the global batch."""
    optim = config.optim
    return {"model": config.model.model_dump(mode="json"), "processor": processor,
            "data": config.data.model_dump(mode="json"), "sources": sources, "batch_size": optim.batch_size,
            "grad_accum": optim.grad_accum, "processes": processes}


def processor_fingerprint(model: ModelSource) -> list[str] | None:
    """The path, size and modification time of each file the processor of `model` is read from: the
    `PROCESSOR_FILES` of `model.path`, or of a spec's tokenizer folder (and its GGUF file, when the
    tokenizer comes from it) and vision folder. None when one is not there (loading it says why)."""
    if model.path is not None:
        folders = [(model.path, PROCESSOR_FILES)]
    else:
        text, vision = model.spec.text, model.spec.vision
        gguf = (escape(text.gguf_file),) if text.gguf_file and not text.tokenizer else ()
        folders = [(text.tokenizer or text.path, PROCESSOR_FILES + gguf),
                   *([(vision.path, PROCESSOR_FILES)] if vision.path else [])]
    found: list[str | None] = []
    for name, patterns in folders:
        try:
            folder = Path(resolve_asset(name)).expanduser()
        except OfflineAssetMissing:
            return None
        if not folder.is_dir():
            return None
        files = sorted({path for pattern in patterns for path in folder.glob(pattern) if path.is_file()})
        found += [stat_fingerprint(path) for path in files]
    return None if None in found else found


def target_steps(optim: OptimConfig, samples: int | None, processes: int) -> int | None:
    """The Trainer's `max_steps` of a run: `optim.max_steps`, else `optim.epochs` of whole global batches
    (`dataset.epoch_sampler` pads each epoch to them); None when that needs `samples` and they are unknown.
    transformers counts it only on a Trainer holding a dataloader (`set_initial_training_values`), so it is
    repeated here, pinned to a real `MedvlTrainer.train()`'s by tests/train/test_train_finished.py."""
    if optim.max_steps > 0:
        return optim.max_steps
    if samples is None:
        return None
    per_epoch = max(math.ceil(samples / (optim.batch_size * optim.grad_accum * processes)), 1)
    return math.ceil(optim.epochs * per_epoch)


def _json(path: Path, key: str | None = None) -> Any:
    """A JSON object file's content (its `key`), None when it is missing, torn or not an object."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict):
        return None
    return data if key is None else data.get(key)


def resume_checkpoint(config: TrainConfig, out: Path) -> Checkpoint | None:
    """The checkpoint `save.resume` says to resume from (None: start from step 0)."""
    if config.save.resume == "never":
        return None
    if config.save.resume == "auto":
        last = last_complete_checkpoint(out)
        if last:
            log.info("resuming from %s", last.path)
        return last
    if not Path(config.save.resume).is_dir():
        raise ConfigError(f"save.resume: checkpoint folder {config.save.resume} not found")
    folder = config.save.resume
    return Checkpoint(folder, _json(Path(folder) / "trainer_state.json", "global_step"))


def last_complete_checkpoint(out: Path) -> Checkpoint | None:
    """The newest `checkpoint-N` whose `trainer_state.json` (the Trainer writes it last) is whole.

    A kill during a save leaves a partial folder; it is skipped (and overwritten when training
    reaches that step again), so resuming never reads a half-written checkpoint.
    """
    if not out.is_dir():
        return None
    found = sorted(
        (int(m.group(1)), path) for path in out.iterdir()
        if path.is_dir() and (m := re.fullmatch(r"checkpoint-(\d+)", path.name))
    )
    for step, path in reversed(found):
        try:
            state = json.loads((path / "trainer_state.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            log.warning("skipping %s: incomplete checkpoint (killed while saving?)", path)
            continue
        return Checkpoint(str(path), state.get("global_step") if isinstance(state, dict) else None)
    return None
