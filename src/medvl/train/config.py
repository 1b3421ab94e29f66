"""The schema of a `medvl train` / `medvl data check` config (YAML + `key.sub=value` overrides).

One config describes one stage: where the model comes from (a previous stage's folder or a fresh
`ModelSpec`), which parts train (the stage's freeze policy, optionally LoRA/QLoRA), the data mix,
the optimiser schedule and where the run folder goes. `docs/training.md` documents every key.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from medvl.config import Config
from medvl.model.dtypes import DtypeName
from medvl.model.spec import ModelSpec

__all__ = [
    "Stage",
    "ModelSource",
    "Trainable",
    "LoraSettings",
    "SourceConfig",
    "DataConfig",
    "OptimConfig",
    "SaveConfig",
    "LogConfig",
    "TrainConfig",
    "STAGE_POLICIES",
]

Stage = Literal["align", "instruct", "finetune"]

# Which parts train in each stage (vision, projector, llm) unless `trainable` says otherwise.
STAGE_POLICIES: dict[str, dict[str, bool]] = {
    "align": {"vision": False, "projector": True, "llm": False},
    "instruct": {"vision": False, "projector": True, "llm": True},
    "finetune": {"vision": False, "projector": True, "llm": True},
}


class ModelSource(Config):
    """Where the starting weights come from: a saved folder (previous stage) or a spec (fresh build)."""

    path: str | None = Field(None, description="folder of a saved medvl / transformers LLaVA model")
    spec: ModelSpec | None = Field(None, description="build a fresh model from this spec (stage 1)")
    dtype: DtypeName = Field(
        "float32", description="dtype the weights are loaded in (mixed precision is `precision`)"
    )

    @model_validator(mode="after")
    def _one_source(self) -> "ModelSource":
        if (self.path is None) == (self.spec is None):
            raise ValueError("set exactly one of model.path (a saved model folder) and model.spec (a fresh build)")
        return self


class Trainable(Config):
    """Overrides of the stage's freeze policy; `null` keeps the stage default."""

    vision: bool | None = None
    projector: bool | None = None
    llm: bool | None = None
    embeddings: bool | None = Field(
        None, description="the LLM's token embeddings and (tied) lm_head; null: as the LLM. false keeps them fixed "
        "while the LLM trains: a small model's embedding table is most of its parameters and optimizer time")


class LoraSettings(Config):
    """LoRA (or QLoRA with `quantize`) on the LLM's linear layers; merged into the saved model."""

    enabled: bool = False
    r: int = Field(64, ge=1)
    alpha: int = Field(16, ge=1)
    dropout: float = Field(0.05, ge=0, lt=1)
    target_modules: list[str] = Field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        description="linear layer names inside the language model that get adapters",
    )
    quantize: Literal["none", "4bit", "8bit"] = Field("none", description="QLoRA: needs CUDA and bitsandbytes")


class SourceConfig(Config):
    """One data source: a LLaVA JSON/JSONL file or a Hugging Face dataset, plus its image root."""

    name: str | None = Field(None, description="label in reports (default: the file or dataset name)")
    path: str | None = Field(None, description="LLaVA JSON (array) or JSONL file")
    hf: str | None = Field(None, description="HF dataset: a local `save_to_disk` folder or a `load_dataset` path")
    hf_split: str = "train"
    image_root: str | None = Field(None, description="folder that relative image paths are resolved against")
    ratio: float = Field(1.0, gt=0, description="share of this source per epoch: 0.5 = a seeded half, 2 = twice")

    @model_validator(mode="after")
    def _one_input(self) -> "SourceConfig":
        if (self.path is None) == (self.hf is None):
            raise ValueError("a data source needs exactly one of `path` (JSON/JSONL) and `hf` (dataset)")
        return self

    def label(self) -> str:
        return self.name or Path(self.path or self.hf or "source").stem


class DataConfig(Config):
    """The data mix and how records become training examples."""

    sources: list[SourceConfig] = Field(default_factory=list)
    max_length: int = Field(2048, ge=16, description="tokens per sample incl. expanded image tokens")
    overlong: Literal["truncate", "reject"] = Field(
        "truncate", description="over-long samples: cut at max_length (never inside an image span) or reject"
    )
    last_turn_only: bool = Field(False, description="supervise only the last assistant turn (HuatuoGPT-Vision 2025)")
    max_images: int | None = Field(None, ge=1, description="reject samples with more images (HuatuoGPT-Vision: 8)")
    max_pixels: int | None = Field(None, ge=1, description="downscale larger images before preprocessing")
    empty_answers: Literal["reject", "warn"] = Field(
        "reject", description="a blank assistant turn (it only teaches the end-of-turn token): reject the record, "
                              "or keep it and count a warning"
    )
    image_check: Literal["decode", "exists"] = Field(
        "decode", description="validation opens and decodes every image, or only checks the file exists"
    )
    seed: int = 42
    num_workers: int = Field(0, ge=0, description="DataLoader worker processes")


class OptimConfig(Config):
    """AdamW with a warmup + decay schedule (weight decay skips biases and norms)."""

    lr: float = Field(2e-5, gt=0)
    projector_lr: float | None = Field(
        None, gt=0, description="peak learning rate of the multimodal projector (LLaVA's `mm_projector_lr`); "
        "null: `lr`. The schedule scales both alike")
    epochs: float = Field(1.0, gt=0)
    max_steps: int = Field(-1, ge=-1, description="stop after this many optimizer steps (-1: run all epochs)")

    @field_validator("max_steps")
    @classmethod
    def _steps_or_epochs(cls, value: int) -> int:
        if value == 0:  # transformers reads 0 as "run all epochs", which nobody writing 0 means
            raise ValueError("give a positive step count, or -1 to run all epochs")
        return value
    batch_size: int = Field(16, ge=1, description="samples per device per micro-batch")
    grad_accum: int = Field(1, ge=1)
    weight_decay: float = Field(0.0, ge=0)
    warmup_ratio: float = Field(0.03, ge=0, lt=1)
    scheduler: Literal["cosine", "cosine_with_min_lr", "linear", "constant_with_warmup"] = "cosine"
    min_lr_ratio: float = Field(0.0, ge=0, lt=1, description="floor of cosine_with_min_lr as a fraction of lr")
    max_grad_norm: float = Field(1.0, ge=0)
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999


class SaveConfig(Config):
    """Checkpoints (for resuming) and the final native save."""

    every_steps: int = Field(500, ge=1)
    keep: int = Field(2, ge=1, description="checkpoints kept (oldest deleted)")
    resume: str = Field("auto", description="'auto' (latest checkpoint of this run, if any), 'never', or a folder")


class LogConfig(Config):
    every_steps: int = Field(10, ge=1)
    report_to: list[Literal["tensorboard", "wandb"]] = Field(
        default_factory=lambda: ["tensorboard", "wandb"], description="backends used when installed"
    )
    peak_tflops: float | None = Field(
        None, gt=0, description="per-device peak for MFU; default: a table of GPUs, else a cached matmul probe"
    )
    progress_bar: bool = True


class TrainConfig(Config):
    """One training stage."""

    stage: Stage = "instruct"
    model: ModelSource
    trainable: Trainable = Trainable()
    lora: LoraSettings = LoraSettings()
    data: DataConfig = DataConfig()
    optim: OptimConfig = OptimConfig()
    precision: Literal["auto", "bf16", "fp16", "fp32"] = Field(
        "auto", description="mixed precision; auto = bf16 where the GPU supports it, else fp32"
    )
    gradient_checkpointing: bool = False
    output_dir: str = "runs/train"
    save: SaveConfig = SaveConfig()
    logging: LogConfig = LogConfig()
    seed: int = 42

    @model_validator(mode="after")
    def _projector_lr_needs_a_trained_projector(self) -> "TrainConfig":
        if self.optim.projector_lr is not None and not self.policy()["projector"]:
            raise ValueError(f"optim.projector_lr is set but the {self.stage} stage's projector is frozen "
                             "(trainable.projector): train it or leave projector_lr null")
        return self

    def policy(self) -> dict[str, bool]:
        """The effective freeze policy: the stage's defaults with `trainable` overrides applied."""
        overrides = {k: v for k, v in self.trainable.model_dump().items() if v is not None}
        policy = {**STAGE_POLICIES[self.stage], **overrides}
        policy.setdefault("embeddings", policy["llm"])
        return policy
