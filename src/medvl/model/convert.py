"""Convert checkpoints in the original LLaVA layout into transformers' native format.

The original LLaVA code base (LLaVA-1.5, LLaVA-Med v1 and v1.5, HuatuoGPT-Vision-7B) saves custom
model types (`llava_llama`, `llava_mistral`, `llava_qwen2`) that transformers and vLLM cannot
load: the LLM's weights sit beside `model.mm_projector.*`, the vision tower is a path in
`mm_vision_tower`, and images enter the sequence at a sentinel id (-200) that is not a token.

The native model gets the same LLM weights, `multi_modal_projector.linear_1/linear_2` from the
projector (`mlp2x_gelu`: Linear-GELU-Linear; `linear`: W then identity), the CLIP tower (from the
checkpoint if it carries it, else from a local folder), a real `<image>` token appended to the
vocabulary, LLaVA's pad-to-square preprocessing when `image_aspect_ratio` is `pad`, and the
conversation format of the source model as its chat template.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Iterator

import torch

from medvl.errors import UserError
from medvl.model.build import generation_config_for, identity_linear_state, load_tokenizer
from medvl.model.spec import ModelSpec, TextSpec, VisionSpec

__all__ = ["LEGACY_TYPES", "ConversionError", "convert_legacy", "read_legacy_weights"]

log = logging.getLogger(__name__)

# legacy model_type → (native LLM model_type, default chat template)
LEGACY_TYPES = {
    "llava_llama": ("llama", "vicuna"),
    "llava": ("llama", "vicuna"),
    "llava_mistral": ("mistral", "mistral_instruct"),
    "llava_qwen2": ("qwen2", "huatuo"),
}
_LEGACY_ONLY_KEYS = ("mm_", "tune_mm", "freeze_mm", "image_aspect_ratio", "image_grid", "tokenizer_model_max_length",
                     "tokenizer_padding_side", "unfreeze_mm", "use_mm_proj", "mm_patch_merge_type")


class ConversionError(UserError, ValueError):
    """The legacy checkpoint lacks something the conversion needs; the message says what to pass."""


def read_legacy_weights(folder: Path) -> Iterator[tuple[str, torch.Tensor]]:
    """Every (key, tensor) of a checkpoint folder: safetensors or PyTorch .bin, sharded or not."""
    from safetensors import safe_open

    files = sorted(folder.glob("*.safetensors")) or sorted(folder.glob("pytorch_model*.bin"))
    if not files:
        raise ConversionError(f"{folder}: no *.safetensors or pytorch_model*.bin weights")
    for file in files:
        if file.suffix == ".safetensors":
            with safe_open(str(file), framework="pt") as handle:
                for key in handle.keys():
                    yield key, handle.get_tensor(key)
        else:
            yield from torch.load(file, map_location="cpu", weights_only=True).items()


def _native_key(key: str) -> str | None:
    """Map a legacy key to its native name (None for keys with no native counterpart)."""
    if key.startswith("model.mm_projector."):
        rest = key.removeprefix("model.mm_projector.")
        index, _, param = rest.partition(".")
        if not param:  # single Linear: model.mm_projector.weight
            return f"model.multi_modal_projector.linear_1.{index}"
        return {"0": f"model.multi_modal_projector.linear_1.{param}",
                "2": f"model.multi_modal_projector.linear_2.{param}"}.get(index)
    if key.startswith("model.vision_tower.vision_tower."):
        return "model.vision_tower." + key.removeprefix("model.vision_tower.vision_tower.")
    if key.startswith("model.vision_tower."):
        return None
    if key.startswith("model."):
        return "model.language_model." + key.removeprefix("model.")
    if key.startswith("lm_head."):
        return key
    return None


def _find_tower(legacy: dict[str, Any], source: Path, override: str | None) -> Path | None:
    candidates = [override] if override else [legacy.get("mm_vision_tower"), legacy.get("vision_tower")]
    for candidate in candidates:
        if not candidate:
            continue
        for path in (Path(candidate), source / candidate):
            if (path / "config.json").is_file():
                return path
    if override:
        raise ConversionError(f"--vision-tower {override}: no config.json there")
    return None


def convert_legacy(source: str | Path, out_dir: str | Path, vision_tower: str | None = None,
                   chat_template: str | None = None, dtype: str | None = None) -> Path:
    """Convert the legacy checkpoint in `source` into a native folder `out_dir`."""
    from accelerate import init_empty_weights
    from transformers import AutoConfig, LlavaConfig, LlavaForConditionalGeneration

    from medvl.model.build import DTYPES, _image_seq_length, _preprocessor_stats, build_processor
    from medvl.model.checkpoint import save_model

    source = Path(source)
    legacy = json.loads((source / "config.json").read_text())
    model_type = legacy.get("model_type")
    if model_type not in LEGACY_TYPES or "text_config" in legacy:  # native llava configs nest text_config
        raise ConversionError(f"{source}: model_type {model_type!r} with this layout is not a legacy LLaVA type "
                              f"({', '.join(LEGACY_TYPES)} with mm_* keys)")
    llm_type, default_template = LEGACY_TYPES[model_type]
    projector = legacy.get("mm_projector_type", "linear")
    if projector not in ("linear", "mlp2x_gelu"):
        raise ConversionError(f"mm_projector_type {projector!r} is not supported (linear, mlp2x_gelu)")
    select = legacy.get("mm_vision_select_feature", "patch")
    strategy = {"patch": "default", "cls_patch": "full"}.get(select)
    if strategy is None:
        raise ConversionError(f"mm_vision_select_feature {select!r} is not supported (patch, cls_patch)")

    text_fields = {k: v for k, v in legacy.items()
                   if not k.startswith(_LEGACY_ONLY_KEYS) and k not in ("model_type", "architectures", "auto_map")}
    text_config = AutoConfig.for_model(llm_type, **text_fields)

    weights: dict[str, torch.Tensor] = {}
    for key, tensor in read_legacy_weights(source):
        native = _native_key(key)
        if native is None:
            log.warning("dropping legacy key with no native counterpart: %s", key)
            continue
        weights[native] = tensor
    has_tower_weights = any(k.startswith("model.vision_tower.") for k in weights)

    tower_dir = _find_tower(legacy, source, vision_tower)
    if tower_dir is None:
        raise ConversionError(
            f"vision tower {legacy.get('mm_vision_tower')!r} is not a local folder; pass --vision-tower with a "
            "local copy of it (e.g. clip-vit-large-patch14-336)")
    tower_config = AutoConfig.from_pretrained(tower_dir)
    vision_config = getattr(tower_config, "vision_config", tower_config)
    if not has_tower_weights:
        from transformers import CLIPVisionModel

        tower = CLIPVisionModel.from_pretrained(tower_dir)
        weights.update({f"model.vision_tower.{k}": v for k, v in tower.state_dict().items()})

    use_start_end = bool(legacy.get("mm_use_im_start_end", False))
    spec = ModelSpec(
        vision=VisionSpec(family="clip", path=str(tower_dir)),
        text=TextSpec(path=str(source)),
        projector=projector,
        vision_feature_layer=legacy.get("mm_vision_select_layer", -2),
        vision_feature_select_strategy=strategy,
        pad_to_square=legacy.get("image_aspect_ratio", "square") == "pad",
        chat_template=chat_template or default_template,
    )
    tokenizer = load_tokenizer(spec.text, spec.image_token)
    image_token_id = tokenizer.convert_tokens_to_ids(spec.image_token)
    _grow_vocab(weights, text_config, len(tokenizer))

    config = LlavaConfig(
        vision_config=vision_config.to_dict() | {"model_type": vision_config.model_type},
        text_config=text_config.to_dict() | {"model_type": llm_type},
        image_token_index=image_token_id,
        projector_hidden_act="gelu" if projector == "mlp2x_gelu" else "linear",
        vision_feature_layer=spec.vision_feature_layer,
        vision_feature_select_strategy=strategy,
        image_seq_length=_image_seq_length(vision_config, strategy),
        tie_word_embeddings=bool(legacy.get("tie_word_embeddings", False)),
        pad_token_id=tokenizer.pad_token_id,
    )
    if projector == "linear":
        projector_dtype = weights["model.multi_modal_projector.linear_1.weight"].dtype
        identity = identity_linear_state(text_config.hidden_size, projector_dtype)
        weights.update({f"model.multi_modal_projector.linear_2.{k}": v for k, v in identity.items()})
    with init_empty_weights():
        model = LlavaForConditionalGeneration(config)
    if config.tie_word_embeddings:
        weights.pop("lm_head.weight", None)
    missing, unexpected = model.load_state_dict(weights, strict=False, assign=True)
    missing = [k for k in missing if not (config.tie_word_embeddings and k == "lm_head.weight")]
    if missing or unexpected:
        raise ConversionError(f"weights do not fit the native model: missing={missing[:5]} unexpected={unexpected[:5]}")
    model.tie_weights()
    target_dtype = DTYPES[dtype] if dtype else getattr(torch, str(legacy.get("torch_dtype", "float32")).replace("torch.", ""))
    model = model.to(target_dtype)

    image_stats = _preprocessor_stats(tower_dir)
    placeholder = "<im_start><image><im_end>" if use_start_end else spec.image_token
    processor = build_processor(
        spec, tokenizer, image_mean=image_stats.get("image_mean"), image_std=image_stats.get("image_std"),
        image_size=vision_config.image_size, patch_size=vision_config.patch_size,
    )
    if use_start_end:
        from medvl.model.templates import resolve_chat_template

        processor.chat_template = resolve_chat_template(spec.chat_template, tokenizer, placeholder)
    model.generation_config = generation_config_for(tokenizer, processor.chat_template)
    return save_model(model, processor, out_dir)


def _grow_vocab(weights: dict[str, torch.Tensor], text_config: Any, vocab_size: int) -> None:
    """Append rows (the mean embedding) so the added `<image>` token has an id in the vocabulary."""
    for key in ("model.language_model.embed_tokens.weight", "lm_head.weight"):
        table = weights.get(key)
        if table is None or table.shape[0] >= vocab_size:
            continue
        extra = table.float().mean(0, keepdim=True).to(table.dtype).expand(vocab_size - table.shape[0], -1)
        weights[key] = torch.cat([table, extra], 0)
    text_config.vocab_size = max(vocab_size, text_config.vocab_size)
