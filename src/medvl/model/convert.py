"""Convert checkpoints in the original LLaVA layout into transformers' native format.

The original LLaVA code base (LLaVA-1.5, LLaVA-Med v1 and v1.5, HuatuoGPT-Vision) saves custom
model types (`llava` with `mm_*` keys, `llava_llama`, `llava_mistral`, `llava_qwen2`) that
transformers and vLLM cannot load: the LLM's weights sit beside `model.mm_projector.*`, the vision
tower is a path in `mm_vision_tower` (its weights may also sit in the checkpoint, under
`model.vision_tower.vision_tower.*`), and images enter the sequence at a sentinel id (-200).

`plan_conversion` reads the source (config, weight names, tokenizer, tower config) and maps every
legacy key onto a native `LlavaForConditionalGeneration` built empty by the installed transformers:
the module paths of its language model, vision tower and projector are read off that model, and the
tower's key prefix is found by matching the checkpoint's tower names against the installed tower
class (CLIP weights were `vision_model.*` in transformers 4 and are bare in 5); `medvl.model.native_layout`
does that mapping and refuses, from the weight files' headers, whatever would convert into a model
that loads but computes something else. `convert_legacy` then loads the tensors and saves the native
folder whole (`atomic_folder`); `medvl convert --check` prints the plan.

The native model gets the same LLM weights; `linear_1`/`linear_2` from the projector
(`mlp2x_gelu`: Linear-GELU-Linear; `linear`: W, then identity); the tower (the checkpoint's own
when it carries one, else the tower folder's); a real `<image>` token appended to the vocabulary;
LLaVA's pad-to-square when `image_aspect_ratio` is `pad`; and the source's conversation format as
its chat template, fitted to its tokenizer (see `medvl.model.templates`) so that a prompt tokenises
to the ids the reference code fed the model.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from medvl.errors import UserError, first_line
from medvl.model.build import (
    VISION_FAMILIES,
    generation_config_for,
    identity_linear_state,
    load_tokenizer,
    transformers_errors_only,
)
from medvl.model.checkpoint import read_model_config
from medvl.model.dtypes import DTYPE_NAMES, torch_dtype
from medvl.model.families import legacy_types
from medvl.model.legacy_layout import (
    PROJECTOR,
    TOWER,
    ConversionError,
    check_projector,
    find_tower,
    legacy_config,
    no_tower_folder,
    read_legacy_weights,
    read_weight_file,
    tower_fix,
    weight_files,
)
from medvl.model.native_layout import (
    NativeParts,
    check_complete,
    check_dropped,
    check_shapes,
    map_keys,
    tower_key_names,
    tower_source,
)
from medvl.model.spec import ModelSpec, TextSpec, VisionSpec
from medvl.model.templates import TEMPLATE_NAMES

__all__ = ["ConversionError", "ConversionPlan", "NativeParts", "plan_conversion", "convert_legacy",
           "read_legacy_weights", "tower_key_names"]

_LEGACY_ONLY_KEYS = ("mm_", "tune_mm", "freeze_mm", "image_aspect_ratio", "image_grid", "tokenizer_model_max_length",
                     "tokenizer_padding_side", "unfreeze_mm", "use_mm_proj", "mm_patch_merge_type")
_NEW_FOLDER = "remove it or choose a new folder for the converted model"


@dataclass
class ConversionPlan:
    """What `convert_legacy` will do, read without loading any tensor."""

    source: Path
    legacy: dict[str, Any]  # its config.json
    model: Any  # the native model, empty (meta weights)
    processor: Any
    files: list[Path]
    renames: dict[str, str]  # legacy key → native key
    dropped: list[str]  # legacy keys with no native counterpart (buffers such as rotary inv_freq)
    tower_dir: Path
    tower_dir_from: str
    tower_weights_from: str  # "checkpoint" or "folder"
    projector: str
    template: str
    template_why: str
    dtype: torch.dtype
    notes: list[str] = field(default_factory=list)

    @property
    def parts(self) -> NativeParts:
        return NativeParts.of(self.model)

    def describe(self) -> list[str]:
        """Human-readable lines: what maps where, where each part comes from, the template and an example."""
        parts = self.parts
        config = self.model.config
        lines = [f"source: {self.source} → LlavaForConditionalGeneration ({config.text_config.model_type} LLM, "
                 f"{config.vision_config.model_type} tower, {self.dtype})",
                 f"weights: {', '.join(f.name for f in self.files)}"]
        groups: dict[tuple[str, str], list[tuple[str, str]]] = {}
        for legacy, native in self.renames.items():
            legacy_part = next(p for p in (TOWER, PROJECTOR, "lm_head.", "model.") if legacy.startswith(p))
            groups.setdefault((legacy_part, parts.part_of(native)), []).append((legacy, native))
        for (old, new), pairs in groups.items():
            lines.append(f"  {old}* → {new}*: {len(pairs)} tensors, e.g. {pairs[0][0]} → {pairs[0][1]}")
        if self.dropped:
            lines.append(f"  dropped {len(self.dropped)} key(s) with no native counterpart, e.g. {self.dropped[0]}")
        weights = "the checkpoint" if self.tower_weights_from == "checkpoint" else str(self.tower_dir)
        tokenizer = self.processor.tokenizer
        lines += [f"vision tower: config and preprocessing from {self.tower_dir} ({self.tower_dir_from}); "
                  f"weights from {weights}",
                  f"projector: {self.projector}",
                  f"tokenizer: {type(tokenizer).__name__}, {len(tokenizer)} tokens with <image>",
                  f"chat template: {self.template} ({self.template_why})"]
        lines += [f"note: {note}" for note in self.notes]
        text, pieces = self.example()
        return lines + [f"example prompt: {text!r}", f"example tokens: {pieces}"]

    def example(self) -> tuple[str, list[str]]:
        """A two-turn conversation with an image, rendered and tokenised as `processor(text=...)` does."""
        messages = [
            {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What does the image show?"}]},
            {"role": "assistant", "content": [{"type": "text", "text": "A chest X-ray."}]},
            {"role": "user", "content": [{"type": "text", "text": "Is it normal?"}]},
        ]
        text = self.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        tokenizer = self.processor.tokenizer
        return text, tokenizer.convert_ids_to_tokens(tokenizer(text)["input_ids"])


def plan_conversion(source: str | Path, vision_tower: str | None = None, chat_template: str | None = None,
                    dtype: str | None = None) -> ConversionPlan:
    """Read the legacy checkpoint in `source` and map it onto the native model (no tensors loaded)."""
    source = Path(source)
    legacy = legacy_config(source)
    llm_type = legacy_types()[legacy["model_type"]].name
    projector = legacy.get("mm_projector_type", "linear")
    if dtype and dtype not in DTYPE_NAMES:
        raise ConversionError(f"--dtype {dtype!r}: choose one of {', '.join(DTYPE_NAMES)}")
    template, template_why = _template_choice(legacy["model_type"], source, chat_template)
    files = weight_files(source)
    shapes = {key: shape for file in files for key, shape in read_weight_file(file, shapes_only=True)}
    keys = list(shapes)
    check_projector(keys, legacy, source)
    tower_dir, tower_dir_from = find_tower(legacy, source, vision_tower)
    if tower_dir is None:
        raise ConversionError(no_tower_folder(legacy, source, any(k.startswith(TOWER) for k in keys)))
    tower_type = read_model_config(tower_dir, tower_dir_from)["model_type"]  # a broken config.json is named
    if tower_type not in VISION_FAMILIES:
        raise ConversionError(f"{tower_dir_from} {tower_dir}: its config.json is a {tower_type!r} model, not a CLIP or "
                              f"SigLIP vision tower; {tower_fix(legacy)}")
    tokenizer = _tokenizer(source)
    model, spec, vision_config = _empty_native_model(legacy, llm_type, projector, tower_dir, tokenizer,
                                                     template, source)
    renames, dropped = map_keys(keys, model)
    check_dropped(dropped, source, tower_dir, legacy)
    tower_weights_from = tower_source(keys, renames, model, tower_dir)
    check_complete(model, renames, tower_weights_from, projector, source)
    check_shapes(shapes, renames, model, source, tower_dir, legacy)

    from medvl.model.build import build_processor, preprocessor_stats

    stats = preprocessor_stats(tower_dir)
    wrap = ("<im_start>", "<im_end>") if legacy.get("mm_use_im_start_end") else ("", "")
    try:
        processor = build_processor(spec, tokenizer, image_mean=stats.get("image_mean"),
                                    image_std=stats.get("image_std"), image_size=vision_config.image_size,
                                    patch_size=vision_config.patch_size, image_wrap=wrap)
    except ValueError as exc:  # a chat template that does not fit this tokenizer
        raise ConversionError(f"{source}: {exc}") from exc
    notes = [] if "image_mean" in stats else [f"{tower_dir} has no preprocessor_config.json: {spec.vision.family}'s "
                                              "default mean/std used"]
    saved_dtype = str(legacy.get("torch_dtype") or "float32").replace("torch.", "")
    return ConversionPlan(
        source=source, legacy=legacy, model=model, processor=processor, files=files, renames=renames, dropped=dropped,
        tower_dir=tower_dir, tower_dir_from=tower_dir_from, tower_weights_from=tower_weights_from,
        projector=projector, template=template, template_why=template_why,
        dtype=torch_dtype(dtype or (saved_dtype if saved_dtype in DTYPE_NAMES else "float32")), notes=notes,
    )


def convert_legacy(source: str | Path, out_dir: str | Path, vision_tower: str | None = None,
                   chat_template: str | None = None, dtype: str | None = None) -> Path:
    """Convert the legacy checkpoint in `source` into a native folder `out_dir`, which must be new or empty.

    It is written whole under a temporary name beside `out_dir` and renamed when complete: a run killed
    meanwhile leaves no `out_dir` that looks finished (only a hidden `.NAME.partial-*` folder).
    """
    from medvl.io.files import atomic_folder, check_new_folder, refuse_overwriting_inputs
    from medvl.model.build import load_pretrained
    from medvl.model.checkpoint import save_model

    out_dir = Path(out_dir)
    refuse_overwriting_inputs([out_dir], [source], "write the converted model to a new folder")
    check_new_folder(out_dir, _NEW_FOLDER)  # before the minutes of reading weights, not after
    plan = plan_conversion(source, vision_tower, chat_template, dtype)
    model, parts = plan.model, plan.parts
    weights = {plan.renames[key]: tensor for key, tensor in read_legacy_weights(plan.source) if key in plan.renames}
    if plan.tower_weights_from == "folder":  # quietly: a whole CLIPModel's text half is not wanted
        tower = load_pretrained(type(model.get_encoder(modality="image")), str(plan.tower_dir),
                                plan.tower_dir_from, tower_fix(plan.legacy))
        weights.update({parts.vision_tower + k: v for k, v in tower.state_dict().items()})
    if plan.projector == "linear":
        first, second = parts.projector_linears
        identity = identity_linear_state(model.config.text_config.hidden_size, weights[first + "weight"].dtype)
        weights.update({second + k: v for k, v in identity.items()})
    _grow_vocab(weights, model)
    if model.config.tie_word_embeddings:
        weights.pop(parts.lm_head + "weight", None)
    try:
        model.load_state_dict(weights, strict=False, assign=True)
    except RuntimeError as exc:  # shapes that do not fit the config
        detail = str(exc).splitlines()[-1].strip()
        raise ConversionError(f"{plan.source}: weights do not fit its config.json: {detail}") from exc
    model.tie_weights()
    model = model.to(plan.dtype)
    model.generation_config = generation_config_for(plan.processor.tokenizer, plan.processor.chat_template)
    try:
        with atomic_folder(out_dir, _NEW_FOLDER) as partial:
            save_model(model, plan.processor, partial, name=out_dir.name)
    except UserError:
        raise
    except OSError as exc:  # a full disk
        raise ConversionError(f"{out_dir}: cannot write the converted model ({exc})") from exc
    return out_dir


def _template_choice(model_type: str, source: Path, override: str | None) -> tuple[str, str]:
    if override:
        if override not in (*TEMPLATE_NAMES, "auto"):
            raise ConversionError(f"--chat-template {override!r}: choose one of {', '.join(TEMPLATE_NAMES)} or auto")
        return override, "--chat-template"
    if "huatuogpt" in source.resolve().name.lower():
        return "huatuo", "the folder is named HuatuoGPT…, which is how HuatuoGPT-Vision's cli.py picks its format"
    return legacy_types()[model_type].legacy_format, f"the conversation format of {model_type} checkpoints"


def _tokenizer(source: Path) -> Any:
    try:
        with transformers_errors_only():  # not "a model of type `llava_mistral` to instantiate a model of type ``"
            return load_tokenizer(TextSpec(path=str(source)))
    except (OSError, ValueError, ImportError, TypeError) as exc:
        raise ConversionError(
            f"{source}: its tokenizer does not load ({first_line(exc)}); the folder needs the tokenizer "
            "files it was released with (tokenizer.model, or tokenizer.json / vocab.json + merges.txt)") from exc


def _empty_native_model(legacy: dict[str, Any], llm_type: str, projector: str, tower_dir: Path, tokenizer: Any,
                        template: str, source: Path) -> tuple[Any, ModelSpec, Any]:
    from accelerate import init_empty_weights
    from transformers import AutoConfig, LlavaConfig, LlavaForConditionalGeneration

    from medvl.model.build import _image_seq_length

    try:
        tower_config = AutoConfig.from_pretrained(tower_dir)
    except (OSError, ValueError) as exc:
        raise ConversionError(f"{tower_dir}: not a vision tower config ({exc})") from exc
    vision_config = getattr(tower_config, "vision_config", tower_config)
    family = "siglip" if vision_config.model_type.startswith("siglip") else "clip"
    layer, layers = legacy.get("mm_vision_select_layer", -2), vision_config.num_hidden_layers
    if not -layers - 1 <= layer <= layers:  # hidden states: the embeddings', then one per layer
        raise ConversionError(f"{source / 'config.json'}: mm_vision_select_layer {layer} is past the {layers} layers "
                              f"of the tower in {tower_dir} (it takes -{layers + 1} to {layers}); {tower_fix(legacy)}")
    select = legacy.get("mm_vision_select_feature", "patch")
    strategy = "full" if select == "cls_patch" or family == "siglip" else "default"  # SigLIP has no CLS to drop
    text_fields = {k: v for k, v in legacy.items()
                   if not k.startswith(_LEGACY_ONLY_KEYS) and k not in ("model_type", "architectures", "auto_map")}
    try:
        text_config = AutoConfig.for_model(llm_type, **text_fields)
    except (ValueError, TypeError) as exc:
        raise ConversionError(f"{source / 'config.json'}: not a valid {llm_type} config ({exc})") from exc
    text_config.vocab_size = max(len(tokenizer), text_config.vocab_size)
    spec = ModelSpec(
        vision=VisionSpec(family=family, path=str(tower_dir)), text=TextSpec(path=str(source)),
        projector=projector, vision_feature_layer=layer,
        vision_feature_select_strategy=strategy, pad_to_square=legacy.get("image_aspect_ratio", "square") == "pad",
        chat_template=template,
    )
    config = LlavaConfig(
        vision_config=vision_config.to_dict() | {"model_type": vision_config.model_type},
        text_config=text_config.to_dict() | {"model_type": llm_type},
        image_token_index=tokenizer.convert_tokens_to_ids(spec.image_token),
        projector_hidden_act="gelu" if projector == "mlp2x_gelu" else "linear",
        vision_feature_layer=spec.vision_feature_layer,
        vision_feature_select_strategy=strategy,
        image_seq_length=_image_seq_length(vision_config, strategy),
        tie_word_embeddings=bool(legacy.get("tie_word_embeddings", False)),
        pad_token_id=tokenizer.pad_token_id,
    )
    with init_empty_weights():
        model = LlavaForConditionalGeneration(config)
    return model, spec, vision_config


def _grow_vocab(weights: dict[str, torch.Tensor], model: Any) -> None:
    """Append rows (the mean embedding) so the added `<image>` token has an id in the vocabulary."""
    parts = NativeParts.of(model)
    vocab_size = model.config.text_config.vocab_size
    for key in (parts.language_model + "embed_tokens.weight", parts.lm_head + "weight"):
        table = weights.get(key)
        if table is None or table.shape[0] >= vocab_size:
            continue
        extra = table.float().mean(0, keepdim=True).to(table.dtype).expand(vocab_size - table.shape[0], -1)
        weights[key] = torch.cat([table, extra], 0)
