"""Can vLLM's OpenAI server load this checkpoint? A static check of the saved config.

vLLM is the production path (see docs/serving.md) but is not installed in medvl's test
environment, so the check reads `config.json` against what vLLM's source accepts:
- `vllm/model_executor/models/registry.py` maps the architecture `LlavaForConditionalGeneration`
  to its `llava` module (`_MULTIMODAL_MODELS`).
- `llava.py` builds the vision tower from a CLIP, SigLIP or Pixtral vision config only
  (`init_vision_tower_for_llava`), and the language model from `text_config.architectures`
  through the text registry (`init_vllm_registered_model`); only a Mistral text config without
  architectures gets a default, any other raises "No model architectures are specified". The
  accepted language models are those of medvl's families (`medvl.model.families`), each in vLLM's
  `_TEXT_GENERATION_MODELS`.
- features are selected with strategy `default` (drop CLS) or `full`.
When vllm is importable, its live registry is asked as well.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from medvl.model.families import vllm_text_architectures

__all__ = ["VLLM_VISION_MODEL_TYPES", "vllm_problems"]

ARCHITECTURE = "LlavaForConditionalGeneration"
MODEL_TYPE = "llava"
# Vision configs `init_vision_tower_for_llava` accepts (CLIPVisionConfig, SiglipVisionConfig,
# PixtralVisionConfig), by their transformers model_type.
VLLM_VISION_MODEL_TYPES = frozenset({"clip_vision_model", "siglip_vision_model", "pixtral"})
_PROCESSOR_FILES = ("processor_config.json", "preprocessor_config.json")
_TEMPLATE_KEYS = ("chat_template",)


def vllm_problems(model_dir: str | Path) -> list[str]:
    """Why vLLM would not load `model_dir` as a LLaVA model; empty when it would."""
    folder = Path(model_dir)
    config_path = folder / "config.json"
    if not config_path.is_file():
        return [f"{config_path} does not exist"]
    config: dict[str, Any] = json.loads(config_path.read_text(encoding="utf-8"))
    problems = []
    if config.get("architectures") != [ARCHITECTURE]:
        problems.append(f"architectures is {config.get('architectures')!r}, expected [{ARCHITECTURE!r}]")
    if config.get("model_type") != MODEL_TYPE:
        problems.append(f"model_type is {config.get('model_type')!r}, expected {MODEL_TYPE!r}")
    text = config.get("text_config") or {}
    text_archs = text.get("architectures")
    if not text_archs and text.get("model_type") != "mistral":
        problems.append("text_config.architectures is missing; vLLM resolves the language model from it")
    elif text_archs and not set(text_archs) <= (known := vllm_text_architectures()):
        problems.append(f"text_config.architectures {text_archs} not among {sorted(known)}")
    vision_type = (config.get("vision_config") or {}).get("model_type")
    if vision_type not in VLLM_VISION_MODEL_TYPES:
        problems.append(f"vision_config.model_type {vision_type!r} not among {sorted(VLLM_VISION_MODEL_TYPES)}")
    if config.get("vision_feature_select_strategy", "default") not in ("default", "full"):
        problems.append(f"vision_feature_select_strategy {config['vision_feature_select_strategy']!r} "
                        "is not 'default' or 'full'")
    if not any((folder / name).is_file() for name in _PROCESSOR_FILES):
        problems.append("no processor_config.json / preprocessor_config.json (vLLM needs the HF processor)")
    if not _has_chat_template(folder):
        problems.append("no chat template saved (chat_template.jinja or in tokenizer/processor config)")
    problems.extend(_live_registry_problems(config.get("architectures") or [], text_archs or []))
    return problems


def _has_chat_template(folder: Path) -> bool:
    if (folder / "chat_template.jinja").is_file() or (folder / "chat_template.json").is_file():
        return True
    for name in ("tokenizer_config.json", "processor_config.json"):
        path = folder / name
        if path.is_file() and any(json.loads(path.read_text(encoding="utf-8")).get(k) for k in _TEMPLATE_KEYS):
            return True
    return False


def _live_registry_problems(architectures: list[str], text_architectures: list[str]) -> list[str]:
    try:
        from vllm import ModelRegistry  # type: ignore[import-not-found]
    except ImportError:
        return []
    supported = set(ModelRegistry.get_supported_archs())
    return [f"vLLM's registry does not list {arch}" for arch in architectures + text_architectures
            if arch not in supported]
