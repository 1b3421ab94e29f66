"""`medvl train`: one stage of training with the transformers `Trainer`.

Why the `Trainer` and not a hand-written accelerate loop: it already does, and is tested upstream
for, what a resumable multi-GPU run needs — checkpoint rotation; resume with optimizer, scheduler,
RNG and data position (it skips the batches already seen); DDP / DeepSpeed ZeRO / FSDP through
accelerate (`accelerate launch --config_file configs/accelerate/...`); gradient accumulation with
the loss averaged per token across micro-batches and devices (`num_items_in_batch`); cosine /
warmup schedules; gradient checkpointing; TensorBoard / wandb. medvl adds the data pipeline, the
freeze policy, throughput / MFU metrics (`medvl.train.trainer.MedvlTrainer`) and the native save.

The run folder (`output_dir`) ends up holding the trained model in the native format (the next
stage's `model.path`), `checkpoint-*` folders, `metrics.jsonl`, `loss.png`, `train_config.yaml`,
`train_summary.json`, `data_check/` (report + rejects) and TensorBoard logs under `runs/`.

A finished run (`medvl.train.resume`) is answered before anything is built: from the run folder's
files when they tell, else once the data is counted, before the trainer is made.
"""

from __future__ import annotations

import logging
import shutil
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
from transformers import Trainer, TrainerCallback, TrainingArguments

from medvl.config import ConfigError, dump_config
from medvl.io.files import atomic_write_json, no_empty_folder_on_failure
from medvl.io.process import RunLock, die_with_launcher
from medvl.train.config import SourceConfig, TrainConfig
from medvl.train.dataset import Collator, TrainDataset
from medvl.train.encode import ChatEncoder
from medvl.train.metrics import FlopsModel, MetricsFile, peak_flops, plot_metrics, read_metrics
from medvl.train.modeling import add_lora, apply_policy, component_params, load_start_model, merge_lora
from medvl.train.resume import SUMMARY_NAME, RunState, epoch_basis, read_run
from medvl.train.sources import load_source, mix_entries
from medvl.train.trainer import MedvlTrainer, compute_dtype, is_sharded, training_arguments
from medvl.train.validate import WARNINGS_NAME, CheckReport, check_sources, count_text, require_usable

__all__ = ["run_training", "TrainResult", "prepare_data"]

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    output_dir: Path
    global_step: int
    final_loss: float | None
    data: CheckReport
    samples_per_epoch: int
    model: Any = None  # the trained model as saved (LoRA merged), on the main process; None if already finished
    already_finished: bool = False  # the run had reached its last step and saved: nothing was done


def prepare_data(config: TrainConfig, processor: Any, out_dir: Path, progress: bool = True
                 ) -> tuple[CheckReport, list, ChatEncoder, list[tuple[int, int]]]:
    """Load and validate the sources (reusing a matching data check) and build the epoch's mix."""
    if not config.data.sources:
        raise ConfigError("data.sources is empty: add at least one LLaVA JSON/JSONL file or HF dataset")
    data = config.data
    encoder = ChatEncoder(processor, data.max_length, last_turn_only=data.last_turn_only, overlong=data.overlong)
    sources = [load_source(s) for s in data.sources]
    report = check_sources(sources, encoder, data, out_dir / "data_check", progress=progress)
    require_usable(report, sources)
    entries = mix_entries([s.valid for s in report.sources], [s.ratio for s in data.sources], data.seed)
    _refuse_empty_shares(data.sources, [len(s.valid) for s in report.sources], entries)
    return report, sources, encoder, entries


def _refuse_empty_shares(sources: list[SourceConfig], usable: list[int], entries: list[tuple[int, int]]) -> None:
    """A ConfigError for a source whose ratio rounds its usable records to none (0.01 of 48): it was left
    out of the mix silently, or, alone, ended in 'no usable training records' after a check that found some."""
    taken = {source for source, _ in entries}
    for index, (source, count) in enumerate(zip(sources, usable)):
        if count and index not in taken:
            raise ConfigError(f"data.sources[{index}] ({source.label()}): ratio {source.ratio:g} of its {count} usable "
                              f"records takes none of them; raise it to at least {1 / count:.3g} (one record)")


def run_training(config: TrainConfig, callbacks: Sequence[TrainerCallback] = ()) -> TrainResult:
    """Train one stage and save the result in the native format under `config.output_dir`.

    Started by a launcher, each process dies with it (`die_with_launcher`: the launcher puts its
    workers in their own sessions, out of reach of a kill of its process group). The main process
    holds the run folder's `RunLock` throughout: a second run on the same folder is refused. A run
    that fails before writing anything (a missing `model.path`, no data source) leaves no run folder.
    """
    die_with_launcher()
    args = training_arguments(config)  # sets up the (distributed) process state
    main = args.process_index == 0
    with no_empty_folder_on_failure(config.output_dir, enabled=main), (
            RunLock(config.output_dir, what="training run") if main else nullcontext()):
        return _train(config, args, callbacks)


def _train(config: TrainConfig, args: TrainingArguments, callbacks: Sequence[TrainerCallback]) -> TrainResult:
    out = Path(config.output_dir)
    run = read_run(config, out, args.world_size)
    if run.report is not None and run.finished(config.optim, args.world_size):  # the files tell
        return _already_finished(config, run, run.report, run.summary.get("samples_per_epoch"))
    model, processor = load_start_model(config)
    with args.main_process_first(desc="data check"):
        report, sources, encoder, entries = prepare_data(config, processor, out, progress=args.process_index == 0)
    if run.finished(config.optim, args.world_size, samples=len(entries)):  # the data tells
        return _already_finished(config, run, report, len(entries))
    if args.process_index == 0:
        dump_config(config, out / "train_config.yaml")
        _log_data(report, len(entries))
    dataset = TrainDataset(sources, entries, encoder, processor.image_processor,
                           runtime_rejects=out / "data_check" / f"rejects.runtime.rank{args.process_index}.jsonl",
                           max_pixels=config.data.max_pixels)

    policy = config.policy()
    apply_policy(model, policy)
    if config.lora.enabled:
        model = add_lora(model, config.lora, policy)
    params = component_params(model)
    if not any(p["trainable"] for p in params.values()):
        raise ConfigError(f"nothing to train: the policy {policy} freezes every component")
    optim = config.optim
    log.info("stage %s, trainable: %s, lr %g%s", config.stage,
             {name: f"{p['trainable']:,}/{p['total']:,}" for name, p in params.items()}, optim.lr,
             "" if optim.projector_lr is None else f" (projector {optim.projector_lr:g})")
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
        flops=flops, peak=peak, projector_lr=optim.projector_lr,
    )
    _check_lora_sharding(trainer, config)
    _check_projector_lr(trainer, config)
    if args.process_index == 0:  # the summary says the folder's model is final: no longer, from the first step
        (out / SUMMARY_NAME).unlink(missing_ok=True)
    trainer.train(resume_from_checkpoint=run.checkpoint)
    saved = _save_final(trainer, processor, config, out)
    rows = read_metrics(out / "metrics.jsonl") if args.process_index == 0 and (out / "metrics.jsonl").exists() else []
    result = TrainResult(out, trainer.state.global_step, rows[-1]["loss"] if rows else None, report, len(entries),
                         saved)
    if args.process_index == 0:
        plot_metrics(out / "metrics.jsonl", out / "loss.png")
        atomic_write_json(out / SUMMARY_NAME, {
            "stage": config.stage, "global_step": result.global_step, "final_loss": result.final_loss,
            "samples_per_epoch": result.samples_per_epoch, "data": report.to_json()["totals"],
            "trainable": params, "processes": args.world_size,
            "epoch_basis": epoch_basis(config, args.world_size, [s.fingerprint for s in sources],
                                       run.processor_files),
        })
    return result


def _already_finished(config: TrainConfig, run: RunState, report: CheckReport, samples: int) -> TrainResult:
    """The result of a run that had finished: nothing was trained, saved or written."""
    log.debug("%s already finished at step %d: nothing to do", config.output_dir, run.step)  # callers say it
    return TrainResult(Path(config.output_dir), run.step, run.summary.get("final_loss"), report, samples,
                       already_finished=True)


def _check_lora_sharding(trainer: Trainer, config: TrainConfig) -> None:
    if config.lora.enabled and is_sharded(trainer):
        raise ConfigError("LoRA with ZeRO-3 / FSDP is not supported: use the ZeRO-2 or DDP accelerate config "
                         "(adapters are small; the frozen base fits per device)")


def _check_projector_lr(trainer: Trainer, config: TrainConfig) -> None:
    """A DeepSpeed config with an `optimizer` section makes DeepSpeed build the optimizer, without the
    projector's groups (`MedvlTrainer.create_optimizer` is never called): refused, not ignored."""
    deepspeed = getattr(trainer.args, "hf_deepspeed_config", None) if trainer.is_deepspeed_enabled else None
    if config.optim.projector_lr is not None and deepspeed is not None and "optimizer" in deepspeed.config:
        raise ConfigError("optim.projector_lr needs the Trainer's optimizer, but the DeepSpeed config has an "
                          "`optimizer` section: remove it (as in configs/accelerate/ds_zero*.json)")


def _save_final(trainer: Trainer, processor: Any, config: TrainConfig, out: Path) -> Any:
    """Write the trained model in the native format (LoRA merged); every process must call it.

    Returns the saved model on the main process, None on the others.
    """
    from medvl.model.checkpoint import save_model

    trainer.accelerator.wait_for_everyone()
    state_dict = trainer.accelerator.get_state_dict(trainer.model_wrapped) if is_sharded(trainer) else None
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


def _log_data(report: CheckReport, samples: int) -> None:
    for source in report.sources:
        log.info("data %s: %d rows, %d usable, rejected %s", source.name, source.rows, len(source.valid),
                 count_text(source.rejects))
        if source.warnings:
            log.warning("data %s: kept with warnings (listed in %s): %s", source.name,
                        report.path.parent / WARNINGS_NAME, count_text(source.warnings))
    log.info("%d samples per epoch after mixing", samples)
