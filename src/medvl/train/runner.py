"""`medvl train`: one stage of training with the transformers `Trainer`.

Why the `Trainer` and not a hand-written accelerate loop: it already does, and is tested upstream
for, what a resumable multi-GPU run needs — checkpoint rotation; resume with optimizer, scheduler,
RNG and data position (it skips the batches already seen); DDP / DeepSpeed ZeRO / FSDP through
accelerate (`accelerate launch --config_file configs/accelerate/...`); gradient accumulation with
the loss averaged per token across micro-batches and devices (`num_items_in_batch`); cosine /
warmup schedules; gradient checkpointing; TensorBoard / wandb. medvl adds the data pipeline, the
freeze policy, throughput / MFU metrics and the native save.

The run folder (`output_dir`) ends up holding the trained model in the native format (the next
stage's `model.path`), `checkpoint-*` folders, `metrics.jsonl`, `loss.png`, `train_config.yaml`,
`train_summary.json`, `data_check/` (report + rejects) and TensorBoard logs under `runs/`.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
from transformers import Trainer, TrainerCallback, TrainingArguments

from medvl.config import ConfigError, dump_config
from medvl.io.files import atomic_write_json
from medvl.io.process import RunLock, die_with_launcher
from medvl.model.dtypes import torch_dtype
from medvl.train.config import TrainConfig
from medvl.train.dataset import STAT_KEYS, Collator, TrainDataset, epoch_sampler
from medvl.train.encode import IGNORE_INDEX, ChatEncoder
from medvl.train.metrics import (PEAK_CACHE_NAME, FlopsModel, MetricsFile, peak_flops, plot_metrics, read_metrics,
                                 utilisation)
from medvl.train.modeling import add_lora, apply_policy, component_params, load_start_model, merge_lora
from medvl.train.sources import load_source, mix_entries
from medvl.train.validate import CheckReport, check_sources, count_text

__all__ = ["run_training", "TrainResult", "MedvlTrainer", "training_arguments", "prepare_data",
           "last_complete_checkpoint", "next_token_loss", "resolved_precision", "compute_dtype"]

log = logging.getLogger(__name__)
SUMMARY_NAME = "train_summary.json"  # written last: its step says the final save is complete


@dataclass
class TrainResult:
    output_dir: Path
    global_step: int
    final_loss: float | None
    data: CheckReport
    samples_per_epoch: int
    model: Any = None  # the trained model as saved (LoRA merged), on the main process; None if already finished
    already_finished: bool = False  # the run had reached its last step and saved: nothing was done


class MedvlTrainer(Trainer):
    """`Trainer` plus throughput metrics (tokens/s, images/s, MFU at every logging step), epochs
    padded to whole global batches, no step past `max_steps`, and a resume that maps key names."""

    def __init__(self, *args: Any, flops: FlopsModel, peak: float, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.flops, self.peak = flops, peak
        self._warned_mfu = False
        self.resumed_at_end = False  # resumed from a checkpoint at (or past) max_steps: no step was taken
        self._window = [0] * len(STAT_KEYS)  # tokens, images, supervised since the last log (this process)
        self._window_start: float | None = None

    def training_step(self, model: Any, inputs: dict[str, Any], num_items_in_batch: Any = None) -> torch.Tensor:
        if self._window_start is None:
            self._window_start = time.perf_counter()
        for index, key in enumerate(STAT_KEYS):
            self._window[index] += inputs.pop(key, 0)
        return super().training_step(model, inputs, num_items_in_batch)

    def _get_train_sampler(self, train_dataset: Any = None) -> Any:
        """Epochs padded to whole global batches (`dataset.epoch_sampler`): N processes == 1 x N accumulation."""
        args = self.args
        return epoch_sampler(train_dataset if train_dataset is not None else self.train_dataset,
                             args.train_batch_size * args.gradient_accumulation_steps * args.world_size)

    def _run_epoch(self, *args: Any, **kwargs: Any) -> None:
        """Take no step when resumed at or past `max_steps`.

        The Trainer's loop steps before it checks `max_steps`: resumed from the final checkpoint of
        a run whose `max_steps` is not a multiple of the steps per epoch, it would take one more step
        (and write `checkpoint-<max_steps + 1>`) on every re-run.
        """
        if self.state.global_step >= self.state.max_steps:
            self.resumed_at_end = True
            self.control.should_training_stop = True
            return
        super()._run_epoch(*args, **kwargs)

    def compute_loss(self, model: Any, inputs: dict[str, Any], return_outputs: bool = False,
                     num_items_in_batch: Any = None) -> Any:
        """Next-token cross-entropy computed on the supervised positions only.

        The LM head runs only where the next token has a label (`logits_to_keep` mask), which
        saves most of its FLOPs and the memory of full-vocabulary logits when answers are short
        next to image tokens and prompts. The value equals the model's own loss: summed over
        tokens and divided by the supervised tokens of the whole optimizer step (all micro-batches
        and devices, `num_items_in_batch`), times the process count that DDP's mean undoes.
        """
        loss, count, outputs = next_token_loss(model, inputs)
        if num_items_in_batch is None:
            scaled = loss / max(count, 1)
        else:
            scaled = loss / num_items_in_batch
            if self.args.average_tokens_across_devices:
                scaled = scaled * self.accelerator.num_processes
        return (scaled, outputs) if return_outputs else scaled

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: Any = None) -> None:
        """Load checkpoint weights through `from_pretrained`, which maps the saved key names.

        transformers 5 saves LLaVA under its legacy key names (`language_model.model.*`) and maps
        them back in `from_pretrained`, but the Trainer's own resume path loads the raw file with
        `load_state_dict(strict=False)`: every key misses and training silently restarts from the
        current weights. Sharded (DeepSpeed / FSDP) and adapter checkpoints keep the Trainer's path.
        """
        target = model if model is not None else self.model
        plain = (Path(resume_from_checkpoint) / "config.json").is_file() and not hasattr(target, "peft_config")
        if not plain or self.is_fsdp_enabled or self.is_deepspeed_enabled:
            super()._load_from_checkpoint(resume_from_checkpoint, model)
            return
        saved = type(target).from_pretrained(resume_from_checkpoint, dtype=next(target.parameters()).dtype)
        target.load_state_dict(saved.state_dict())  # strict: a key mismatch is an error, not a restart

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs and self._window_start is not None:
            counts = torch.tensor(self._window, dtype=torch.float64, device=self.args.device)
            tokens, images, supervised = (int(v) for v in self.accelerator.reduce(counts, reduction="sum").tolist())
            elapsed = max(time.perf_counter() - self._window_start, 1e-9)
            logs["tokens_per_s"] = round(tokens / elapsed, 2)
            logs["images_per_s"] = round(images / elapsed, 2)
            rate = self.flops.step_flops(tokens, images, supervised) / elapsed
            mfu = utilisation(rate, self.peak, self.accelerator.num_processes)
            if mfu is not None:
                logs["mfu"] = round(mfu, 6)
            elif self.peak > 0 and not self._warned_mfu:
                self._warned_mfu = True
                log.warning("MFU left out: %.3g TFLOPS per device beats the assumed peak of %.3g (check "
                            "logging.peak_tflops, or the measured peak in $MEDVL_CACHE/%s)",
                            rate / self.accelerator.num_processes / 1e12, self.peak / 1e12, PEAK_CACHE_NAME)
            self._window, self._window_start = [0] * len(STAT_KEYS), time.perf_counter()
        super().log(logs, start_time)


def next_token_loss(model: Any, inputs: dict[str, Any]) -> tuple[torch.Tensor, int, Any]:
    """(summed cross-entropy, supervised token count, outputs) with logits only where labels are."""
    inputs = dict(inputs)
    labels = inputs.pop("labels")
    keep = torch.zeros_like(labels, dtype=torch.bool)
    keep[:, :-1] = labels[:, 1:] != IGNORE_INDEX
    outputs = model(**inputs, logits_to_keep=keep)
    targets = labels[:, 1:][keep[:, :-1]]
    loss = torch.nn.functional.cross_entropy(outputs.logits.float(), targets, reduction="sum")
    return loss, targets.numel(), outputs


def resolved_precision(config: TrainConfig) -> str:
    """`bf16` | `fp16` | `fp32`: `auto` is bf16 on a GPU that supports it, else fp32."""
    if config.precision != "auto":
        return config.precision
    return "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "fp32"


def compute_dtype(config: TrainConfig) -> torch.dtype:
    """The dtype the matmuls run in: the autocast dtype, else the weights' dtype."""
    precision = resolved_precision(config)
    return torch_dtype(precision if precision in ("bf16", "fp16") else config.model.dtype)


def training_arguments(config: TrainConfig) -> TrainingArguments:
    optim, cuda = config.optim, torch.cuda.is_available()
    precision = resolved_precision(config)
    report_to = [name for name in config.logging.report_to if _installed(name)]
    if "wandb" in report_to:
        os.environ.setdefault("WANDB_MODE", "offline")
    scheduler_kwargs = {"min_lr_rate": optim.min_lr_ratio} if optim.scheduler == "cosine_with_min_lr" else {}
    return TrainingArguments(
        output_dir=config.output_dir,
        per_device_train_batch_size=optim.batch_size,
        gradient_accumulation_steps=optim.grad_accum,
        learning_rate=optim.lr,
        num_train_epochs=optim.epochs,
        max_steps=optim.max_steps,
        weight_decay=optim.weight_decay,
        warmup_steps=optim.warmup_ratio,  # a float < 1 is a fraction of the total steps
        lr_scheduler_type=optim.scheduler,
        lr_scheduler_kwargs=scheduler_kwargs,
        max_grad_norm=optim.max_grad_norm,
        adam_beta1=optim.adam_beta1,
        adam_beta2=optim.adam_beta2,
        logging_steps=config.logging.every_steps,
        save_strategy="steps",
        save_steps=config.save.every_steps,
        save_total_limit=config.save.keep,
        seed=config.seed,
        data_seed=config.data.seed,
        bf16=precision == "bf16",
        fp16=precision == "fp16",
        activation_checkpointing=config.gradient_checkpointing,
        activation_checkpointing_kwargs={"use_reentrant": False},
        report_to=report_to or "none",
        remove_unused_columns=False,
        dataloader_num_workers=config.data.num_workers,
        disable_tqdm=not config.logging.progress_bar,
        use_cpu=not cuda,
    )


def prepare_data(config: TrainConfig, processor: Any, out_dir: Path, progress: bool = True
                 ) -> tuple[CheckReport, list, ChatEncoder, list[tuple[int, int]]]:
    """Load and validate the sources (reusing a matching data check) and build the epoch's mix."""
    if not config.data.sources:
        raise ConfigError("data.sources is empty: add at least one LLaVA JSON/JSONL file or HF dataset")
    data = config.data
    encoder = ChatEncoder(processor, data.max_length, last_turn_only=data.last_turn_only, overlong=data.overlong)
    sources = [load_source(s) for s in data.sources]
    report = check_sources(sources, encoder, data, out_dir / "data_check", progress=progress)
    entries = mix_entries([s.valid for s in report.sources], [s.ratio for s in data.sources], data.seed)
    return report, sources, encoder, entries


def run_training(config: TrainConfig, callbacks: Sequence[TrainerCallback] = ()) -> TrainResult:
    """Train one stage and save the result in the native format under `config.output_dir`.

    Started by a launcher, each process dies with it (`die_with_launcher`: the launcher puts its
    workers in their own sessions, out of reach of a kill of its process group). The main process
    holds the run folder's `RunLock` throughout: a second run on the same folder is refused.
    """
    die_with_launcher()
    args = training_arguments(config)  # sets up the (distributed) process state
    with RunLock(config.output_dir, what="training run") if args.process_index == 0 else nullcontext():
        return _train(config, args, callbacks)


def _train(config: TrainConfig, args: TrainingArguments, callbacks: Sequence[TrainerCallback]) -> TrainResult:
    out = Path(config.output_dir)
    model, processor = load_start_model(config)
    with args.main_process_first(desc="data check"):
        report, sources, encoder, entries = prepare_data(config, processor, out, progress=args.process_index == 0)
    if args.process_index == 0:
        dump_config(config, out / "train_config.yaml")
        _log_data(report, len(entries))
    dataset = TrainDataset(sources, entries, encoder, processor.image_processor,
                           runtime_rejects=out / "data_check" / f"rejects.runtime.rank{args.process_index}.jsonl")

    policy = config.policy()
    apply_policy(model, policy)
    if config.lora.enabled:
        model = add_lora(model, config.lora, policy)
    params = component_params(model)
    if not any(p["trainable"] for p in params.values()):
        raise ConfigError(f"nothing to train: the policy {policy} freezes every component")
    log.info("stage %s, trainable: %s", config.stage,
             {name: f"{p['trainable']:,}/{p['total']:,}" for name, p in params.items()})
    vision = model.config.vision_config
    flops = FlopsModel(
        params=params,
        vision_tokens_per_image=(vision.image_size // vision.patch_size) ** 2 + (vision.model_type == "clip_vision_model"),
        image_tokens_per_image=encoder.tokens_per_image,
    )
    with args.main_process_first(desc="matmul peak"):  # one probe per machine at a time, the others read its cache
        peak = peak_flops(config.logging.peak_tflops, compute_dtype(config))
    trainer = MedvlTrainer(
        model=model, args=args, train_dataset=dataset,
        data_collator=Collator(processor.tokenizer.pad_token_id, pad_to_multiple_of=8 if torch.cuda.is_available() else None),
        processing_class=processor, callbacks=[MetricsFile(out / "metrics.jsonl"), *callbacks],
        flops=flops, peak=peak,
    )
    _check_lora_sharding(trainer, config)
    trainer.train(resume_from_checkpoint=_resume_from(config, out))
    # Resumed from the final checkpoint: a run killed before its summary (written last) still
    # needs the final save; one whose summary is there is finished and stays untouched.
    finished = trainer.resumed_at_end and _summary_step(trainer, out) == trainer.state.global_step
    if finished:
        log.info("%s already finished at step %d: nothing to do", out, trainer.state.global_step)
    saved = None if finished else _save_final(trainer, processor, config, out)
    rows = read_metrics(out / "metrics.jsonl") if args.process_index == 0 and (out / "metrics.jsonl").exists() else []
    result = TrainResult(out, trainer.state.global_step, rows[-1]["loss"] if rows else None, report, len(entries),
                         saved, already_finished=finished)
    if args.process_index == 0 and not finished:
        plot_metrics(out / "metrics.jsonl", out / "loss.png")
        atomic_write_json(out / SUMMARY_NAME, {
            "stage": config.stage, "global_step": result.global_step, "final_loss": result.final_loss,
            "samples_per_epoch": result.samples_per_epoch, "data": report.to_json()["totals"],
            "trainable": params, "processes": args.world_size,
        })
    return result


def _summary_step(trainer: Trainer, out: Path) -> int | None:
    """The step in the run's `train_summary.json` as the main process reads it (None: no summary)."""
    from accelerate.utils import broadcast_object_list

    step = None
    if trainer.accelerator.is_main_process:
        try:
            step = json.loads((out / SUMMARY_NAME).read_text(encoding="utf-8"))["global_step"]
        except (OSError, ValueError, KeyError, TypeError):
            step = None
    return broadcast_object_list([step])[0]


def _resume_from(config: TrainConfig, out: Path) -> str | None:
    if config.save.resume == "never":
        return None
    if config.save.resume == "auto":
        last = last_complete_checkpoint(out)
        if last:
            log.info("resuming from %s", last)
        return last
    if not Path(config.save.resume).is_dir():
        raise ConfigError(f"save.resume: checkpoint folder {config.save.resume} not found")
    return config.save.resume


def last_complete_checkpoint(out: Path) -> str | None:
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
            json.loads((path / "trainer_state.json").read_text(encoding="utf-8"))
            return str(path)
        except (OSError, ValueError):
            log.warning("skipping %s: incomplete checkpoint (killed while saving?)", path)
    return None


def _is_sharded(trainer: Trainer) -> bool:
    """Are the weights partitioned across processes (ZeRO-3 or FSDP)?"""
    if trainer.is_fsdp_enabled:
        return True
    plugin = getattr(trainer.accelerator.state, "deepspeed_plugin", None)
    return bool(trainer.is_deepspeed_enabled and plugin is not None and plugin.zero_stage == 3)


def _check_lora_sharding(trainer: Trainer, config: TrainConfig) -> None:
    if config.lora.enabled and _is_sharded(trainer):
        raise ConfigError("LoRA with ZeRO-3 / FSDP is not supported: use the ZeRO-2 or DDP accelerate config "
                         "(adapters are small; the frozen base fits per device)")


def _save_final(trainer: Trainer, processor: Any, config: TrainConfig, out: Path) -> Any:
    """Write the trained model in the native format (LoRA merged); every process must call it.

    Returns the saved model on the main process, None on the others.
    """
    from medvl.model.checkpoint import save_model

    trainer.accelerator.wait_for_everyone()
    state_dict = trainer.accelerator.get_state_dict(trainer.model_wrapped) if _is_sharded(trainer) else None
    model = None
    if trainer.accelerator.is_main_process:
        model = trainer.accelerator.unwrap_model(trainer.model)
        if config.lora.enabled:
            model = merge_lora(model, config.lora, config.model, out / "merge-tmp")
            shutil.rmtree(out / "merge-tmp", ignore_errors=True)
        if state_dict is not None:
            model = _materialise(model, state_dict)
        save_model(model, processor, out)
        log.info("saved the trained model to %s", out)
    trainer.accelerator.wait_for_everyone()
    return model


def _materialise(sharded_model: Any, state_dict: dict[str, torch.Tensor]) -> Any:
    """A plain CPU model holding a gathered state dict (from ZeRO-3 / FSDP partitions)."""
    from transformers import AutoModelForImageTextToText

    with torch.device("meta"):
        model = AutoModelForImageTextToText.from_config(sharded_model.config)
    model.load_state_dict(state_dict, assign=True)
    model.tie_weights()
    model.generation_config = sharded_model.generation_config
    return model


def _installed(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None


def _log_data(report: CheckReport, samples: int) -> None:
    for source in report.sources:
        log.info("data %s: %d rows, %d usable, rejected %s", source.name, source.rows, len(source.valid),
                 count_text(source.rejects))
        if source.warnings:
            log.warning("data %s: kept with warnings: %s", source.name, count_text(source.warnings))
    log.info("%d samples per epoch after mixing", samples)
