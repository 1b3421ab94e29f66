"""The `Trainer` medvl trains with, and how it is configured.

- `MedvlTrainer`: transformers' `Trainer` plus throughput metrics (tokens/s, images/s, MFU at every
  logging step), epochs padded to whole global batches, no step past `max_steps`, a resume that maps
  LLaVA's saved key names, the loss computed on supervised positions only (`next_token_loss`), and
  the projector optionally at a learning rate of its own (`split_projector_groups`), and the weights
  of each checkpoint given the mode of every file medvl writes (`medvl.io.files.share_weights`).
- `training_arguments(config)`: the `TrainingArguments` of a `TrainConfig` (precision resolved by
  `resolved_precision`; `compute_dtype` is the dtype its matmuls run in); `is_sharded(trainer)`: are
  the weights partitioned across processes (ZeRO-3 / FSDP).

`medvl.train.runner` builds the data, the model and this trainer, runs it and saves the result.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

import torch
from transformers import Trainer, TrainingArguments

from medvl.config import ConfigError
from medvl.io.files import share_weights
from medvl.model.dtypes import torch_dtype
from medvl.train.config import TrainConfig
from medvl.train.dataset import STAT_KEYS, epoch_sampler
from medvl.train.encode import IGNORE_INDEX
from medvl.train.metrics import PEAK_CACHE_NAME, FlopsModel, utilisation

__all__ = ["MedvlTrainer", "next_token_loss", "split_projector_groups", "training_arguments", "resolved_precision",
           "compute_dtype", "is_sharded", "PROJECTOR_MODULE"]

log = logging.getLogger(__name__)
PROJECTOR_MODULE = "multi_modal_projector"  # LlavaForConditionalGeneration's projector: a part of its parameters' names


class MedvlTrainer(Trainer):
    """`Trainer` plus throughput metrics (tokens/s, images/s, MFU at every logging step), epochs
    padded to whole global batches, no step past `max_steps`, a resume that maps key names, and
    the projector at `projector_lr` (None: the base learning rate)."""

    def __init__(self, *args: Any, flops: FlopsModel, peak: float, projector_lr: float | None = None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.flops, self.peak = flops, peak
        self.projector_lr = projector_lr
        self.projector_groups: list[int] = []  # indexes of the optimizer's projector groups (with projector_lr)
        self._projector_step_lr: float | None = None  # the projector's rate in the current step
        self._warned_mfu = False
        self._window = [0] * len(STAT_KEYS)  # tokens, images, supervised since the last log (this process)
        self._window_start: float | None = None

    def training_step(self, model: Any, inputs: dict[str, Any], num_items_in_batch: Any = None) -> torch.Tensor:
        if self._window_start is None:
            self._window_start = time.perf_counter()
        for index, key in enumerate(STAT_KEYS):
            self._window[index] += inputs.pop(key, 0)
        if self.projector_groups:
            self._projector_step_lr = self.optimizer.param_groups[self.projector_groups[0]]["lr"]
        return super().training_step(model, inputs, num_items_in_batch)

    def create_optimizer(self, model: Any = None) -> torch.optim.Optimizer:
        """The Trainer's optimizer (its class and settings, no weight decay on biases and norms) with,
        when `projector_lr` is set, the projector's parameters in groups of their own at that rate.

        Every path builds its optimizer here before wrapping it: plain and DDP, DeepSpeed without an
        `optimizer` section in its config (medvl's), and FSDP (given the wrapped model, whose names
        keep the projector's with `use_orig_params`).
        """
        fresh = self.optimizer is None
        optimizer = super().create_optimizer(model)
        if fresh and self.projector_lr is not None:
            self.projector_groups = split_projector_groups(optimizer, self.model if model is None else model,
                                                           self.projector_lr)
        return optimizer

    def _load_optimizer_and_scheduler(self, checkpoint: str | None) -> None:
        """The Trainer's load, with a checkpoint whose optimizer groups do not fit this run a clear error."""
        try:
            super()._load_optimizer_and_scheduler(checkpoint)
        except ValueError as error:  # torch: a different number or size of parameter groups
            raise ConfigError(
                f"{checkpoint}: its optimizer state does not fit this run ({error}); optim.projector_lr or the "
                "trainable parts changed since it was saved: restore them, or set save.resume=never to start over"
            ) from error

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

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        """The Trainer's save of the weights (a checkpoint's too), then their mode made 0666 less the umask:
        safetensors writes them 0600, so a run in a shared folder could be resumed or evaluated by its owner only."""
        super()._save(output_dir, state_dict)
        if self.args.should_save:
            share_weights(output_dir if output_dir is not None else self.args.output_dir)

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
        if "learning_rate" in logs and self._projector_step_lr is not None:
            # beside the Trainer's learning_rate (the first group's), the rate the last step used too
            logs["projector_learning_rate"] = self._projector_step_lr
        super().log(logs, start_time)


def split_projector_groups(optimizer: torch.optim.Optimizer, model: Any, lr: float) -> list[int]:
    """Move the projector's parameters out of each of `optimizer`'s groups into a copy of that group
    at `lr` (LLaVA's `mm_projector_lr`); returns the indexes of the projector's groups.

    Copies keep their group's settings, so the Trainer's weight-decay split holds for both parts.
    The other groups stay first (the Trainer logs the first group's rate as `learning_rate`); groups
    left empty are dropped (DeepSpeed has not always taken them).
    """
    projector = {id(p) for name, p in model.named_parameters() if PROJECTOR_MODULE in name.split(".")}
    groups, optimizer.param_groups = optimizer.param_groups, []
    indexes = []
    for in_projector in (False, True):
        for group in groups:
            params = [p for p in group["params"] if (id(p) in projector) == in_projector]
            if not params:
                continue
            if in_projector:
                indexes.append(len(optimizer.param_groups))
            optimizer.add_param_group({**group, "params": params, "lr": lr if in_projector else group["lr"]})
    if not indexes:
        raise ConfigError(f"optim.projector_lr is set but no trained parameter is under `{PROJECTOR_MODULE}` "
                          "(FSDP needs fsdp_use_orig_params: true to keep parameter names)")
    return indexes


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
    """The `TrainingArguments` of `config` (creating them sets up the distributed process state)."""
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


def is_sharded(trainer: Trainer) -> bool:
    """Are the weights partitioned across processes (ZeRO-3 or FSDP)?"""
    if trainer.is_fsdp_enabled:
        return True
    plugin = getattr(trainer.accelerator.state, "deepspeed_plugin", None)
    return bool(trainer.is_deepspeed_enabled and plugin is not None and plugin.zero_stage == 3)


def _installed(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None
