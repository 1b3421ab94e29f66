"""Chat templates: the tokenizer's own when it has one, or one medvl ships for the field's formats.

Every template medvl saves starts with a prelude that flattens OpenAI-style content parts
(`{"type": "image"}` / `{"type": "text"}`) into text with one image placeholder per image, so the
same template serves `AutoProcessor.apply_chat_template`, vLLM's OpenAI server and medvl itself,
with several images per turn and several turns. Shipped formats:

| name               | used by                                               |
|--------------------|-------------------------------------------------------|
| `chatml`           | Qwen2 / Qwen2.5 (HuatuoGPT-Vision-7B's LLM), SmolLM2  |
| `llama3`           | Llama-3 instruct (LLaVA-v1.5-LLaMA3-8B)               |
| `vicuna`           | LLaVA-1.5 and LLaVA-Med v1 (`conv_vicuna_v1`)         |
| `mistral_instruct` | LLaVA-Med v1.5 (`conv_mistral_instruct`)              |
| `huatuo`           | HuatuoGPT-Vision (`<|user|>` / `<|assistant|>`)       |

Shipped templates mark assistant text with `{% generation %}` so transformers can return an
assistant-token mask.
"""

from __future__ import annotations

from functools import lru_cache
from importlib import resources
from typing import Any

__all__ = ["TEMPLATE_NAMES", "STOP_STRINGS", "shipped_template", "image_aware", "resolve_chat_template", "guess_format"]

TEMPLATE_NAMES = ("chatml", "llama3", "vicuna", "mistral_instruct", "huatuo")
# End-of-turn markers that end generation besides the tokenizer's EOS.
STOP_STRINGS = {
    "chatml": ["<|im_end|>"],
    "llama3": ["<|eot_id|>"],
    "vicuna": [],
    "mistral_instruct": [],
    "huatuo": ["<|user|>"],
}
_PLACEHOLDER = "@IMAGE@"


@lru_cache(maxsize=None)
def _read(name: str) -> str:
    return resources.files("medvl.model").joinpath(f"templates/{name}.jinja").read_text(encoding="utf-8")


def image_aware(template: str, image_placeholder: str = "<image>") -> str:
    """Prefix a text-only chat template with the content-parts prelude (idempotent)."""
    if "medvl prelude" in template:
        return template
    return _read("_flatten").replace(_PLACEHOLDER, image_placeholder) + template


def shipped_template(name: str, image_placeholder: str = "<image>") -> str:
    """One of medvl's templates, image-aware."""
    if name not in TEMPLATE_NAMES:
        raise ValueError(f"unknown chat template {name!r}; choose one of {', '.join(TEMPLATE_NAMES)} or 'auto'")
    return image_aware(_read(name), image_placeholder)


def guess_format(template: str | None) -> str | None:
    """Which shipped format a template text resembles (for its stop strings), or None."""
    if not template:
        return None
    markers = [
        ("<|im_start|>", "chatml"),
        ("<|start_header_id|>", "llama3"),
        ("[INST]", "mistral_instruct"),
        ("<|assistant|>", "huatuo"),
        ("ASSISTANT:", "vicuna"),
    ]
    return next((name for marker, name in markers if marker in template), None)


def resolve_chat_template(name: str, tokenizer: Any, image_placeholder: str = "<image>") -> str:
    """`auto`: the tokenizer's own template made image-aware; otherwise the named shipped one."""
    if name == "auto":
        own = getattr(tokenizer, "chat_template", None)
        if not own:
            raise ValueError(
                "the tokenizer has no chat template; set chat_template to one of " + ", ".join(TEMPLATE_NAMES)
            )
        if not isinstance(own, str):
            raise ValueError("the tokenizer has several named chat templates; pick one by name")
        return image_aware(own, image_placeholder)
    return shipped_template(name, image_placeholder)
