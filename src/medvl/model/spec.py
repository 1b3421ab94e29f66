"""What a medvl model is made of: a typed spec for the vision tower, projector and LLM.

A spec either points at local folders with pretrained weights (`path`) or describes a tower/LLM
by its architecture numbers (random weights: tests, from-scratch towers). Nothing here downloads.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from medvl.config import Config
from medvl.model.dtypes import DtypeName
from medvl.model.families import FAMILIES

__all__ = ["VisionSpec", "TextSpec", "ModelSpec", "spec_key", "tiny_spec"]


class VisionSpec(Config):
    """The vision tower: CLIP or SigLIP vision transformer."""

    family: Literal["clip", "siglip"] = "clip"
    path: str | None = Field(None, description="local folder of a CLIP/SigLIP (vision) model or of a LLaVA-style "
                             "model with one; random weights if unset")
    image_size: int = Field(336, ge=8)
    patch_size: int = Field(14, ge=1)
    hidden_size: int = 1024
    num_layers: int = Field(24, ge=1)
    num_heads: int = Field(16, ge=1)
    intermediate_size: int = 4096

    @model_validator(mode="after")
    def _patches_fit(self) -> "VisionSpec":
        if self.path is None and self.image_size % self.patch_size:
            raise ValueError(f"image_size {self.image_size} is not a multiple of patch_size {self.patch_size}")
        return self


class TextSpec(Config):
    """The causal LLM: a local folder (optionally a GGUF file in it) or an architecture."""

    path: str | None = Field(None, description="local folder of a causal LM (and its tokenizer)")
    gguf_file: str | None = Field(None, description="GGUF file name inside `path` (dequantised on load)")
    tokenizer: str | None = Field(None, description="tokenizer folder when `path` is unset (or to override it)")
    keep_layers: int | list[int] | None = Field(
        None, description="keep only some decoder layers of the pretrained LLM (less compute per token): the "
        "first N, or a list of layer indices such as [0, 1, 28, 29] (first and last layers)")
    family: str = Field("llama", description="the LLM family of a config-built LLM (medvl.model.families)")
    hidden_size: int = 4096
    num_layers: int = Field(32, ge=1)
    num_heads: int = Field(32, ge=1)
    num_kv_heads: int | None = None
    intermediate_size: int = 11008
    max_position_embeddings: int = 4096
    tie_word_embeddings: bool = False

    @field_validator("family")
    @classmethod
    def _known_family(cls, family: str) -> str:
        return FAMILIES.check(family)

    @field_validator("keep_layers")
    @classmethod
    def _layers_to_keep(cls, keep: int | list[int] | None) -> int | list[int] | None:
        """The shape of `keep_layers`; whether the LLM has those layers is checked when it is loaded."""
        if isinstance(keep, int) and keep < 1 or isinstance(keep, list) and (
                not keep or min(keep) < 0 or len(set(keep)) != len(keep)):
            raise ValueError("keep the first N layers (N >= 1) or list distinct layer indices from 0, "
                             "e.g. [0, 1, 28, 29]")
        return keep

    @model_validator(mode="after")
    def _has_tokenizer(self) -> "TextSpec":
        if self.path is None and self.tokenizer is None:
            raise ValueError("set text.path (a pretrained LLM) or text.tokenizer (for a config-built LLM)")
        return self


class ModelSpec(Config):
    """A LLaVA-style model: vision tower → projector → LLM, saved as LlavaForConditionalGeneration."""

    vision: VisionSpec = VisionSpec()
    text: TextSpec
    projector: Literal["mlp2x_gelu", "linear"] = "mlp2x_gelu"
    vision_feature_layer: int | list[int] = -2
    vision_feature_select_strategy: Literal["default", "full"] | None = Field(
        None, description="'default' drops the CLS token (CLIP); None picks default for CLIP, full for SigLIP"
    )
    pad_to_square: bool = Field(True, description="LLaVA's expand2square: pad with the mean colour before resizing")
    chat_template: str = Field("auto", description="'auto' (the tokenizer's own) or a shipped template name")
    image_token: str = "<image>"
    dtype: DtypeName = "float32"
    seed: int = 0

    def select_strategy(self) -> str:
        if self.vision_feature_select_strategy is not None:
            return self.vision_feature_select_strategy
        return "default" if self.vision.family == "clip" else "full"


def spec_key(at: str, key: str) -> str:
    """A model spec's `key` ("text.keep_layers") as the user wrote it, the spec sitting at `at` in their
    config: "model.spec" in a train config, "model" in a demo config, "" in a spec file of its own."""
    return f"{at}.{key}" if at else key


def tiny_spec(tokenizer: str, family: str = "llama", **overrides: object) -> ModelSpec:
    """A model of a few hundred thousand parameters (plus embeddings) for tests and benchmarks."""
    data: dict = {
        "vision": {"family": "clip", "image_size": 32, "patch_size": 8, "hidden_size": 32, "num_layers": 2,
                   "num_heads": 2, "intermediate_size": 64},
        "text": {"tokenizer": tokenizer, "family": family, "hidden_size": 64, "num_layers": 2, "num_heads": 4,
                 "num_kv_heads": 2, "intermediate_size": 128, "max_position_embeddings": 512},
        "chat_template": "chatml",
    }
    for key, value in overrides.items():
        section, _, field = key.partition("__")
        if field:
            data[section] = {**data[section], field: value}
        else:
            data[key] = value
    return ModelSpec.model_validate(data)
