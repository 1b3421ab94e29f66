"""Model families and conversation formats: everything medvl knows per LLM family, in two tables.

`FAMILIES` (a registry; one `Family` per LLM family medvl builds, converts and checks for vLLM):

| field           | what it decides                                                                   |
|-----------------|-----------------------------------------------------------------------------------|
| `name`          | the LLM's transformers `model_type`: `text.family` of a model spec; a config-built LLM is `AutoConfig.for_model(name, ...)` (`text_config`) |
| `causal_lm`     | its causal-LM architecture, which a saved `text_config.architectures` names and vLLM's registry must list (`vllm_text_architectures`) |
| `legacy_types`  | original LLaVA-layout `model_type`s whose LLM is of this family (`medvl convert`)   |
| `legacy_format` | the conversation format those checkpoints were trained with                       |

`CHAT_FORMATS` (one `ChatFormat` per chat template medvl ships, `templates/<name>.jinja`):
`marker`, text only a template of this format contains (`templates.guess_format` tries them in
table order), and `stop_strings`, end-of-turn markers that end generation besides EOS.

A new LLM family is one `Family(...)` line here (or `FAMILIES.register(name, Family(...))` from
elsewhere); docs/architecture.md shows it. Nothing here imports transformers until it is used.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from medvl.registry import Registry

__all__ = ["CHAT_FORMATS", "FAMILIES", "ChatFormat", "Family", "legacy_types", "text_config",
           "vllm_text_architectures"]


@dataclass(frozen=True)
class ChatFormat:
    name: str
    marker: str
    stop_strings: tuple[str, ...] = ()


@dataclass(frozen=True)
class Family:
    name: str
    causal_lm: str
    legacy_types: tuple[str, ...] = ()
    legacy_format: str = ""

    def __post_init__(self) -> None:
        if self.legacy_types and self.legacy_format not in CHAT_FORMATS:
            raise ValueError(f"family {self.name}: legacy_format {self.legacy_format!r} is not one of {list(CHAT_FORMATS)}")


CHAT_FORMATS: dict[str, ChatFormat] = {f.name: f for f in (
    ChatFormat("chatml", "<|im_start|>", ("<|im_end|>",)),  # Qwen2 / Qwen2.5 / Qwen3, SmolLM2
    ChatFormat("llama3", "<|start_header_id|>", ("<|eot_id|>",)),  # Llama-3 instruct (LLaVA-v1.5-LLaMA3-8B)
    ChatFormat("mistral_instruct", "[INST]"),  # LLaVA-Med v1.5 (conv_mistral_instruct)
    ChatFormat("huatuo", "<|assistant|>", ("<|user|>",)),  # HuatuoGPT-Vision
    ChatFormat("vicuna", "ASSISTANT:"),  # LLaVA-1.5, LLaVA-Med v1 (conv_vicuna_v1)
)}

FAMILIES: Registry[Family] = Registry("model family")
for _family in (
    Family("llama", "LlamaForCausalLM", ("llava_llama", "llava"), "vicuna"),  # LLaVA-1.5, LLaVA-Med v1
    Family("mistral", "MistralForCausalLM", ("llava_mistral",), "mistral_instruct"),  # LLaVA-Med v1.5
    Family("qwen2", "Qwen2ForCausalLM", ("llava_qwen2",), "huatuo"),  # HuatuoGPT-Vision-7B
    Family("qwen3", "Qwen3ForCausalLM"),
):
    FAMILIES.register(_family.name, _family)


def text_config(family: str, **settings: Any) -> Any:
    """A transformers config of the family's LLM (`AutoConfig.for_model`) with `settings` set."""
    from transformers import AutoConfig

    return AutoConfig.for_model(FAMILIES.get(family).name, **settings)


def legacy_types() -> dict[str, Family]:
    """Legacy LLaVA-layout model_type → the family of its LLM, over every registered family."""
    return {legacy: family for family in FAMILIES.values() for legacy in family.legacy_types}


def vllm_text_architectures() -> frozenset[str]:
    """The language-model architectures of every registered family (each in vLLM's text registry)."""
    return frozenset(family.causal_lm for family in FAMILIES.values())
