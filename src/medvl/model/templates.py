"""Chat templates: the tokenizer's own when it has one, or one medvl ships for the field's formats.

Every template medvl saves starts with a prelude that flattens OpenAI-style content parts
(`{"type": "image"}` / `{"type": "text"}`) into text with one image placeholder per image, so the
same template serves `AutoProcessor.apply_chat_template`, vLLM's OpenAI server and medvl itself,
with several images per turn and several turns. Shipped formats:

| name               | used by                                               |
|--------------------|-------------------------------------------------------|
| `chatml`           | Qwen2 / Qwen2.5 / Qwen3, SmolLM2                      |
| `llama3`           | Llama-3 instruct (LLaVA-v1.5-LLaMA3-8B)               |
| `mistral_instruct` | LLaVA-Med v1.5 (`conv_mistral_instruct`)              |
| `huatuo`           | HuatuoGPT-Vision (`<|user|>` / `<|assistant|>`)       |
| `vicuna`           | LLaVA-1.5 and LLaVA-Med v1 (`conv_vicuna_v1`)         |

Each format's marker and stop strings are in `medvl.model.families.CHAT_FORMATS`.

Shipped templates mark assistant text with `{% generation %}` so transformers can return an
assistant-token mask.

Two tokenizer facts are folded in when a template is resolved for a tokenizer, so that one
`tokenizer(rendered, add_special_tokens=False)` gives the ids the reference projects fed their
models (they tokenised each text chunk around `<image>` on its own, `tokenizer_image_token`):

- `text_start`: a SentencePiece tokenizer with `legacy=False` marks the start of a text with a
  word-boundary `▁` but not text after a special token, so the chunk after BOS and the chunk after
  an image token begin with a space that the tokenizer turns into that `▁`;
- `single_bos`: when the template renders BOS itself, the tokenizer stops adding one, so a plain
  `processor(text=..., images=...)` call does not get two.
"""

from __future__ import annotations

from functools import lru_cache
from importlib import resources
from typing import Any

from medvl.errors import UserError
from medvl.model.families import CHAT_FORMATS

__all__ = [
    "TEMPLATE_NAMES", "STOP_STRINGS", "TemplateError", "shipped_template", "image_aware", "resolve_chat_template", "guess_format",
    "text_start", "single_bos",
]

TEMPLATE_NAMES = tuple(CHAT_FORMATS)
# End-of-turn markers that end generation besides the tokenizer's EOS.
STOP_STRINGS = {name: list(chat.stop_strings) for name, chat in CHAT_FORMATS.items()}


class TemplateError(UserError, ValueError):
    """A chat template that cannot be chosen: an unknown name, or a tokenizer without a usable one."""
_PLACEHOLDER = "@IMAGE@"
_TEXT_START = "@TEXT_START@"


@lru_cache(maxsize=None)
def _read(name: str) -> str:
    return resources.files("medvl.model").joinpath(f"templates/{name}.jinja").read_text(encoding="utf-8")


def image_aware(template: str, image_placeholder: str = "<image>", text_start_with: str = "") -> str:
    """Prefix a text-only chat template with the content-parts prelude (idempotent)."""
    if "medvl prelude" in template:
        return template
    prelude = _read("_flatten").replace(_PLACEHOLDER, image_placeholder).replace(_TEXT_START, text_start_with)
    return prelude + template


def shipped_template(name: str, image_placeholder: str = "<image>", text_start_with: str = "") -> str:
    """One of medvl's templates, image-aware."""
    if name not in TEMPLATE_NAMES:
        raise TemplateError(f"unknown chat template {name!r}; choose one of {', '.join(TEMPLATE_NAMES)} or 'auto'")
    return image_aware(_read(name), image_placeholder, text_start_with)


def guess_format(template: str | None) -> str | None:
    """Which shipped format a template text resembles (for its stop strings), or None."""
    if not template:
        return None
    return next((chat.name for chat in CHAT_FORMATS.values() if chat.marker in template), None)


def resolve_chat_template(name: str, tokenizer: Any, image_token: str = "<image>",
                          image_wrap: tuple[str, str] = ("", ""), key: str = "chat_template") -> str:
    """`auto`: the tokenizer's own template made image-aware; otherwise the named shipped one.

    Each image becomes `image_wrap[0] + image_token + image_wrap[1]` (LLaVA's `mm_use_im_start_end`
    wraps it in `<im_start>`/`<im_end>`), followed by the tokenizer's `text_start` when text follows
    the image token directly. A TemplateError starts with `key`, the setting that gave `name`.
    """
    start = text_start(tokenizer, image_token)
    placeholder = image_wrap[0] + image_token + (image_wrap[1] or start)
    if name != "auto":
        try:
            return shipped_template(name, placeholder, start)
        except TemplateError as exc:
            raise TemplateError(f"{key}: {exc}") from None
    own = getattr(tokenizer, "chat_template", None)
    if not own or not isinstance(own, str):
        problem = "has no chat template" if not own else "has several named chat templates"
        raise TemplateError(f"{key}: the tokenizer {problem}; set {key} to one of {', '.join(TEMPLATE_NAMES)}")
    return image_aware(own, placeholder, start)


def text_start(tokenizer: Any, special_token: str = "<image>") -> str:
    """What a text chunk must start with so that, read after a special token, it tokenises as on its own.

    A SentencePiece tokenizer with `legacy=False` gives "x" a leading `▁` but "<image>x" none; a space
    restores it. Other tokenizers (byte-level BPE, `legacy=True`) need nothing.
    """
    if special_token not in tokenizer.get_vocab():
        return ""
    alone = tokenizer.encode("x", add_special_tokens=False)
    if tokenizer.encode(special_token + "x", add_special_tokens=False)[1:] == alone:
        return ""
    return " " if tokenizer.encode(special_token + " x", add_special_tokens=False)[1:] == alone else ""


def single_bos(tokenizer: Any, template: str) -> None:
    """Stop the tokenizer adding BOS when the template already renders it (one BOS per prompt on every path)."""
    from transformers.utils.chat_template_utils import render_jinja_template

    bos = tokenizer.bos_token
    if not bos or tokenizer.encode("x")[:1] != [tokenizer.bos_token_id]:
        return
    rendered, _ = render_jinja_template(
        conversations=[[{"role": "user", "content": "x"}]], chat_template=template, add_generation_prompt=True,
        **tokenizer.special_tokens_map,
    )
    if rendered[0].startswith(bos):
        tokenizer.add_bos_token = False
