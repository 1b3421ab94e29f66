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
When vllm is importable, its live registry is asked as well. A config, tokenizer or processor file
that is not a JSON object is a problem listed, as vLLM could not read it either.

Its users: the `vllm` engine refuses a local folder with problems before vLLM starts, and
`medvl build`, `medvl convert` and the demo's report state the result (`vllm_check_line`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from medvl.io.jsonl import JsonlFileError, read_json_object
from medvl.model.checkpoint import NotAModelFolder, RESTORE_CONFIG, read_model_config
from medvl.model.families import vllm_text_architectures

__all__ = ["VLLM_VISION_MODEL_TYPES", "vllm_check_line", "vllm_problems"]

ARCHITECTURE = "LlavaForConditionalGeneration"
MODEL_TYPE = "llava"
# Vision configs `init_vision_tower_for_llava` accepts (CLIPVisionConfig, SiglipVisionConfig,
# PixtralVisionConfig), by their transformers model_type.
VLLM_VISION_MODEL_TYPES = frozenset({"clip_vision_model", "siglip_vision_model", "pixtral"})
_PROCESSOR_FILES = ("processor_config.json", "preprocessor_config.json")
_SETTINGS_FILES = ("tokenizer_config.json", *_PROCESSOR_FILES)
_TEMPLATE_KEYS = ("chat_template",)


def vllm_problems(model_dir: str | Path) -> list[str]:
    """Why vLLM would not load `model_dir` as a LLaVA model; empty when it would."""
    folder = Path(model_dir)
    try:
        config = read_model_config(folder)
    except NotAModelFolder as exc:  # missing, not JSON, not an object, no model_type
        return [str(exc)]
    problems: list[str] = []
    settings = {name: _settings(folder / name, problems) for name in _SETTINGS_FILES}
    if config.get("architectures") != [ARCHITECTURE]:
        problems.append(f"architectures is {config.get('architectures')!r}, expected [{ARCHITECTURE!r}]")
    if config["model_type"] != MODEL_TYPE:
        problems.append(f"model_type is {config['model_type']!r}, expected {MODEL_TYPE!r}")
    text = _section(config, "text_config")
    text_archs = _names(text.get("architectures"))
    if not text_archs and text.get("model_type") != "mistral":
        problems.append("text_config.architectures is missing; vLLM resolves the language model from it")
    elif text_archs and not set(text_archs) <= (known := vllm_text_architectures()):
        problems.append(f"text_config.architectures {text_archs} not among {sorted(known)}")
    vision_type = _section(config, "vision_config").get("model_type")
    if vision_type not in VLLM_VISION_MODEL_TYPES:
        problems.append(f"vision_config.model_type {vision_type!r} not among "
                        f"{sorted(VLLM_VISION_MODEL_TYPES)}")
    if config.get("vision_feature_select_strategy", "default") not in ("default", "full"):
        problems.append(f"vision_feature_select_strategy {config['vision_feature_select_strategy']!r} "
                        "is not 'default' or 'full'")
    if not any((folder / name).is_file() for name in _PROCESSOR_FILES):
        problems.append("no processor_config.json / preprocessor_config.json (vLLM needs the HF processor)")
    if not _has_chat_template(folder, settings):
        problems.append("no chat template saved (chat_template.jinja or in tokenizer/processor config)")
    problems.extend(_live_registry_problems(_names(config.get("architectures")) + text_archs))
    return problems


def vllm_check_line(problems: list[str]) -> str:
    """`vllm_problems`' answer in one line for a report: "vLLM config check: passed", or the problems."""
    return "vLLM config check: passed" if not problems else \
        f"vLLM config check: {len(problems)} problem{'s' if len(problems) > 1 else ''}: {'; '.join(problems)}"


def _settings(path: Path, problems: list[str]) -> dict[str, Any]:
    """The object in a saved tokenizer or processor file ({} when absent); one that is not JSON or not an
    object is a problem listed."""
    if not path.is_file():
        return {}
    try:
        return read_json_object(path, "a JSON object of settings", RESTORE_CONFIG, {})
    except JsonlFileError as exc:
        problems.append(str(exc))
        return {}


def _section(config: dict[str, Any], key: str) -> dict[str, Any]:
    """A nested config (`text_config`, `vision_config`); {} when it is missing or no object."""
    value = config.get(key)
    return value if isinstance(value, dict) else {}


def _names(value: Any) -> list[str]:
    """An `architectures` value as a list ([] when it is none)."""
    return [name for name in value if isinstance(name, str)] if isinstance(value, list) else []


def _has_chat_template(folder: Path, settings: dict[str, dict[str, Any]]) -> bool:
    if (folder / "chat_template.jinja").is_file() or (folder / "chat_template.json").is_file():
        return True
    return any(settings[name].get(key) for name in ("tokenizer_config.json", "processor_config.json")
               for key in _TEMPLATE_KEYS)


def _live_registry_problems(architectures: list[str]) -> list[str]:
    try:
        from vllm import ModelRegistry  # type: ignore[import-not-found]
    except ImportError:
        return []
    supported = set(ModelRegistry.get_supported_archs())
    return [f"vLLM's registry does not list {arch}" for arch in architectures if arch not in supported]
