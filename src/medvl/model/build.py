"""Build a LLaVA-style model as transformers' own `LlavaForConditionalGeneration` plus its processor.

vision tower (CLIP/SigLIP, pretrained from a local folder or random from a config)
→ projector (`mlp2x_gelu` as LLaVA-1.5 / HuatuoGPT-Vision, `linear` as LLaVA-Med v1)
→ causal LLM (a family of `medvl.model.families`, from a local folder, GGUF file or config).

The `linear` projector is stored in the native two-layer projector as `linear_1` = W,
activation = identity, `linear_2` = I, which computes exactly W·x + b, so the checkpoint stays
the stock architecture that transformers and vLLM load.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    CLIPVisionConfig,
    GenerationConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaImageProcessorPil,
    LlavaProcessor,
    SiglipVisionConfig,
)
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

from medvl.config import ConfigError
from medvl.errors import first_line
from medvl.model.checkpoint import read_model_config
from medvl.model.dtypes import torch_dtype
from medvl.model.families import text_config
from medvl.io.offline import resolve_asset
from medvl.model.spec import ModelSpec, TextSpec, VisionSpec, spec_key
from medvl.model.templates import STOP_STRINGS, guess_format, resolve_chat_template, single_bos

__all__ = ["build_model", "build_processor", "causal_lm_config", "generation_config_for", "identity_linear_state",
           "load_pretrained", "load_tokenizer", "preprocessor_stats", "pretrained_config",
           "pretrained_folder", "transformers_errors_only"]

log = logging.getLogger(__name__)

CLIP_MEAN, CLIP_STD = [0.48145466, 0.4578275, 0.40821073], [0.26862954, 0.26130258, 0.27577711]
SIGLIP_MEAN, SIGLIP_STD = [0.5, 0.5, 0.5], [0.5, 0.5, 0.5]
VISION_FAMILIES = {"clip": "clip", "clip_vision_model": "clip", "siglip": "siglip", "siglip_vision_model": "siglip"}


def pretrained_folder(value: str, key: str, marker: str | None = "config.json") -> str:
    """The local folder a spec path names (`offline:NAME` resolved), checked before transformers sees it:
    not a folder, or a folder without `marker`, is a ConfigError naming `key` (spec paths are local
    folders; transformers would read a missing one as a hub id and fail offline with a traceback), and
    a config.json it holds must be readable (`read_model_config`): transformers reads it for a
    tokenizer too."""
    path = resolve_asset(value)
    if not Path(path).is_dir():
        raise ConfigError(f"{key}: {path} is not a folder; give the local folder of a saved Hugging Face model")
    if marker and not (Path(path) / marker).is_file():
        raise ConfigError(f"{key}: {path} has no {marker}; give the folder of a saved Hugging Face model")
    if (Path(path) / "config.json").is_file():
        read_model_config(path, key)
    return path


def load_tokenizer(text: TextSpec, image_token: str = "<image>", at: str = "") -> Any:
    """The LLM's tokenizer with the image token added and a pad token set; `at`: where the spec sits in
    the user's config (`spec_key`), for the keys errors name."""
    key = spec_key(at, "text.tokenizer" if text.tokenizer else "text.path")
    source = pretrained_folder(text.tokenizer or text.path, key, marker=None)  # a tokenizer needs no config.json
    kwargs = {} if text.tokenizer else _gguf_keywords(text, source, at)
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, **kwargs)
    except (OSError, ValueError) as exc:  # transformers' words for a folder without a tokenizer it can read
        raise ConfigError(f"{key}: no tokenizer could be loaded from {source} ({first_line(exc)})") from None
    if hasattr(tokenizer, "legacy"):  # transformers 5 drops it on save, and Llama's reload then defaults to False
        tokenizer.init_kwargs["legacy"] = tokenizer.legacy
    if image_token not in tokenizer.get_vocab():
        tokenizer.add_special_tokens({"additional_special_tokens": [image_token]})
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.unk_token or tokenizer.eos_token
    return tokenizer


def build_processor(spec: ModelSpec, tokenizer: Any, image_mean: list[float] | None = None,
                    image_std: list[float] | None = None, image_size: int | None = None,
                    patch_size: int | None = None, image_wrap: tuple[str, str] = ("", ""), at: str = ""
                    ) -> LlavaProcessor:
    """Image processor (pad-to-square option, resize, normalise) + tokenizer + chat template (`at`: as
    `load_tokenizer`'s)."""
    clip = spec.vision.family == "clip"
    size = image_size or spec.vision.image_size
    image_processor = LlavaImageProcessorPil(  # the PIL backend whether or not torchvision is installed
        do_pad=spec.pad_to_square,
        size={"shortest_edge": size},
        crop_size={"height": size, "width": size},
        image_mean=image_mean or (CLIP_MEAN if clip else SIGLIP_MEAN),
        image_std=image_std or (CLIP_STD if clip else SIGLIP_STD),
    )
    template = resolve_chat_template(spec.chat_template, tokenizer, spec.image_token, image_wrap,
                                     key=spec_key(at, "chat_template"))
    single_bos(tokenizer, template)
    return LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=patch_size or spec.vision.patch_size,
        vision_feature_select_strategy=spec.select_strategy(),
        chat_template=template,
        image_token=spec.image_token,
        num_additional_image_tokens=1 if clip else 0,
    )


def generation_config_for(tokenizer: Any, chat_template: str) -> GenerationConfig:
    """Greedy decoding that stops at EOS or at the template's end-of-turn token."""
    eos = [tokenizer.eos_token_id]
    for stop in STOP_STRINGS.get(guess_format(chat_template) or "", []):
        ids = tokenizer.convert_tokens_to_ids(stop)
        if isinstance(ids, int) and ids != tokenizer.unk_token_id and ids not in eos:
            eos.append(ids)
    return GenerationConfig(
        do_sample=False, max_new_tokens=256, eos_token_id=eos, pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
    )


def build_model(spec: ModelSpec, at: str = "") -> tuple[LlavaForConditionalGeneration, LlavaProcessor]:
    """Assemble the model (pretrained parts loaded where paths are given) and its processor. `at`: where
    the spec sits in the user's config ("model.spec" in a train config), so that an error names the key
    they wrote (`model.spec.text.keep_layers`, not `text.keep_layers`)."""
    torch.manual_seed(spec.seed)
    tokenizer = load_tokenizer(spec.text, spec.image_token, at)
    vision_config, vision_weights, vision_preproc = _vision_part(spec.vision, at)
    text_config, llm = _text_part(spec.text, len(tokenizer), at)
    config = LlavaConfig(
        vision_config=vision_config,
        text_config=text_config,
        image_token_index=tokenizer.convert_tokens_to_ids(spec.image_token),
        projector_hidden_act="gelu" if spec.projector == "mlp2x_gelu" else "linear",
        vision_feature_layer=spec.vision_feature_layer,
        vision_feature_select_strategy=spec.select_strategy(),
        image_seq_length=_image_seq_length(vision_config, spec.select_strategy()),
        tie_word_embeddings=bool(getattr(text_config, "tie_word_embeddings", False)),
        pad_token_id=tokenizer.pad_token_id,
    )
    model = LlavaForConditionalGeneration(config)
    if vision_weights is not None:
        model.model.vision_tower.load_state_dict(vision_weights)
    if llm is not None:
        model.model.language_model.load_state_dict(llm.model.state_dict())
        if not config.tie_word_embeddings:
            model.lm_head.load_state_dict(llm.lm_head.state_dict())
        del llm
    if spec.projector == "linear":
        linear_2 = model.model.multi_modal_projector.linear_2
        linear_2.load_state_dict(identity_linear_state(linear_2.out_features, linear_2.weight.dtype))
    if model.get_input_embeddings().num_embeddings < len(tokenizer):
        model.resize_token_embeddings(len(tokenizer), mean_resizing=True)
    model.tie_weights()
    model = model.to(torch_dtype(spec.dtype))
    processor = build_processor(
        spec, tokenizer,
        image_mean=vision_preproc.get("image_mean"), image_std=vision_preproc.get("image_std"),
        image_size=vision_config.image_size, patch_size=vision_config.patch_size, at=at,
    )
    model.generation_config = generation_config_for(tokenizer, processor.chat_template)
    model.eval()
    return model, processor


def _image_seq_length(vision_config: Any, strategy: str) -> int:
    patches = (vision_config.image_size // vision_config.patch_size) ** 2
    has_cls = vision_config.model_type == "clip_vision_model"
    return patches + (1 if has_cls and strategy == "full" else 0)


def _vision_part(vision: VisionSpec, at: str) -> tuple[Any, dict | None, dict]:
    if vision.path is None:
        common = dict(
            image_size=vision.image_size, patch_size=vision.patch_size, hidden_size=vision.hidden_size,
            num_hidden_layers=vision.num_layers, num_attention_heads=vision.num_heads,
            intermediate_size=vision.intermediate_size,
        )
        config = CLIPVisionConfig(**common) if vision.family == "clip" else SiglipVisionConfig(**common)
        return config, None, {}
    from transformers import CLIPVisionModel, SiglipVisionModel

    key = spec_key(at, "vision.path")
    path = pretrained_folder(vision.path, key)
    full = pretrained_config(path, key)
    config = getattr(full, "vision_config", full)
    family = VISION_FAMILIES.get(config.model_type)
    if family is None:
        raise ConfigError(f"{key}: {path} holds a {full.model_type} model, not a CLIP/SigLIP vision tower; "
                          "give a CLIP/SigLIP model folder, a LLaVA-style folder with one, or a tower made by "
                          "`medvl prior` (which distils an image network such as a DINOv2/ViT folder into one)")
    if family != vision.family:
        raise ConfigError(f"{key}: {path} holds a {config.model_type} model but "
                          f"{spec_key(at, 'vision.family')}={vision.family!r}")
    llava_style = full is not config and full.model_type not in VISION_FAMILIES  # its tower's weights: vision_tower.*
    tower = load_pretrained(CLIPVisionModel if family == "clip" else SiglipVisionModel, path, key,
                            "give the folder of a CLIP/SigLIP vision model or of a LLaVA-style model with one",
                            config=config, key_mapping={r"^(model\.)?vision_tower\.": ""} if llava_style else None)
    return tower.config, tower.state_dict(), preprocessor_stats(Path(path))


def pretrained_config(folder: str, key: str, **kwargs: Any) -> Any:
    """The transformers config of `folder` (a `pretrained_folder`); one transformers cannot read is a
    ConfigError naming `key`."""
    try:
        return AutoConfig.from_pretrained(folder, **kwargs)
    except (OSError, ValueError) as exc:  # a broken config.json, a model_type this transformers does not know
        raise ConfigError(f"{key}: {folder} has no config transformers can read ({first_line(exc)})") from None


def causal_lm_config(folder: str, key: str, **kwargs: Any) -> Any:
    """The config of `folder`, which must hold a causal LM (a LLaVA or an encoder is a ConfigError naming `key`)."""
    config = pretrained_config(folder, key, **kwargs)
    if config.model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        raise ConfigError(f"{key}: {folder} holds a {config.model_type} model, not a causal LM; give the folder of "
                          "the LLM itself (Llama, Mistral, Qwen2, Qwen3 family)")
    return config


@contextmanager
def transformers_errors_only() -> Iterator[None]:
    """transformers' log at ERROR for the block: its load report and its warnings about a config it reads
    for another class (a legacy LLaVA's, for its tokenizer) are noise where medvl checks what it loads."""
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)


def load_pretrained(model_class: Any, folder: str, key: str, expected: str, **kwargs: Any) -> Any:
    """`model_class.from_pretrained(folder, **kwargs)` with every weight of the model read from the folder.

    What transformers raises for a folder it cannot load as `model_class` (no weight file, a config
    its auto class does not map, shapes that do not fit), and weights the checkpoint leaves missing
    (transformers would start them at random and carry on), are ConfigErrors naming `key`, the
    folder and, as the fix, `expected`. Weights the folder has beyond the model's (a LLaVA's LLM when
    its tower is read) are expected, so transformers' load report is not printed.
    """
    try:
        with transformers_errors_only():
            model, info = model_class.from_pretrained(folder, output_loading_info=True, **kwargs)
    except (OSError, ValueError, RuntimeError) as exc:
        raise ConfigError(f"{key}: {folder} cannot be loaded ({first_line(exc)}); {expected}") from None
    missing = sorted(info["missing_keys"])
    if missing:
        raise ConfigError(f"{key}: {folder} lacks {len(missing)} of the {len(model.state_dict())} weights of its "
                          f"{model.config.model_type} model (e.g. {missing[0]}), which would start random; {expected}")
    return model


def preprocessor_stats(folder: Path) -> dict:
    """The image mean/std a model folder was saved with: its `preprocessor_config.json`, or the image
    processor inside the `processor_config.json` of a saved LLaVA (transformers 5); {} without either.
    A file that is no JSON object is a ConfigError naming it (it was a JSONDecodeError traceback)."""
    import json

    for name, section in (("preprocessor_config.json", None), ("processor_config.json", "image_processor")):
        path = folder / name
        if path.is_file():
            fix = "fix it (its image_mean and image_std set how images are normalised)"
            try:
                data = json.loads(path.read_text(encoding="utf-8"))
            except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError
                raise ConfigError(f"{path}: not valid JSON ({first_line(exc)}); {fix}") from None
            data = data.get(section, {}) if section and isinstance(data, dict) else data
            if not isinstance(data, dict):
                raise ConfigError(f"{path}: not an image processor's settings (a JSON object); {fix}")
            return {k: data[k] for k in ("image_mean", "image_std") if k in data}
    return {}


def _text_part(text: TextSpec, vocab_size: int, at: str) -> tuple[Any, Any]:
    if text.path is not None:
        key = spec_key(at, "text.path")
        kwargs = _gguf_keywords(text, pretrained_folder(text.path, key, marker=None), at)
        folder = pretrained_folder(text.path, key, None if kwargs else "config.json")
        causal_lm_config(folder, key, **kwargs)
        llm = load_pretrained(AutoModelForCausalLM, folder, key, "give the folder of a saved causal LM "
                              "with its weights", dtype=torch.float32, **kwargs)
        if getattr(llm, "hf_quantizer", None) is not None:  # GGUF: weights are already dequantised
            llm.hf_quantizer = None
        if hasattr(llm.config, "quantization_config"):
            del llm.config.quantization_config
        if text.keep_layers is not None:
            _keep_layers(llm, text.keep_layers, at)
        return llm.config, llm
    config = text_config(
        text.family,
        vocab_size=vocab_size, hidden_size=text.hidden_size, num_hidden_layers=text.num_layers,
        num_attention_heads=text.num_heads, num_key_value_heads=text.num_kv_heads or text.num_heads,
        intermediate_size=text.intermediate_size, max_position_embeddings=text.max_position_embeddings,
        tie_word_embeddings=text.tie_word_embeddings,
    )
    return config, None


def _gguf_keywords(text: TextSpec, folder: str, at: str) -> dict[str, str]:
    """`gguf_file=text.gguf_file` for loading from `text.path` (the folder `folder`), the file checked whole
    first (`check_gguf`); {} without `text.gguf_file`, where a folder without config.json that holds
    .gguf files is a ConfigError saying to name one (transformers would look for config.json)."""
    from medvl.model.gguf_file import check_gguf

    held = ", ".join(sorted(p.name for p in Path(folder).glob("*.gguf")))
    gguf_key = spec_key(at, "text.gguf_file")
    if not text.gguf_file:
        if held and not (Path(folder) / "config.json").is_file():
            raise ConfigError(f"{spec_key(at, 'text.path')}: {folder} has no config.json but holds {held}: name "
                              f"the GGUF file to load, {gguf_key}=NAME")
        return {}
    path = Path(folder) / text.gguf_file
    if not path.is_file():
        raise ConfigError(f"{gguf_key}: {folder} has no {text.gguf_file} ("
                          f"{f'it holds {held}' if held else 'nor any .gguf file'}); give the name of the GGUF "
                          f"file in {spec_key(at, 'text.path')}")
    check_gguf(path, gguf_key)
    return {"gguf_file": text.gguf_file}


def _keep_layers(llm: Any, keep: int | list[int], at: str) -> None:
    """Cut a decoder-only LLM to some of its layers (the first `keep`, or the listed indices in order);
    embeddings, final norm and LM head stay."""
    total = len(llm.model.layers)
    indices = list(range(keep)) if isinstance(keep, int) else list(keep)  # `TextSpec`: N >= 1, distinct, >= 0
    if max(indices) >= total:
        raise ConfigError(f"{spec_key(at, 'text.keep_layers')}={keep} does not fit the LLM of "
                          f"{spec_key(at, 'text.path')}, which has only {total} layers: keep at most {total}, or "
                          f"indices up to {total - 1}")
    llm.model.layers = torch.nn.ModuleList(llm.model.layers[i] for i in indices)
    for position, layer in enumerate(llm.model.layers):
        if hasattr(layer, "self_attn") and hasattr(layer.self_attn, "layer_idx"):
            layer.self_attn.layer_idx = position  # the KV cache is indexed by position
    if getattr(llm.config, "layer_types", None):
        llm.config.layer_types = [llm.config.layer_types[i] for i in indices]
    llm.config.num_hidden_layers = len(indices)
    log.info("kept layers %s of the LLM's %d", indices, total)


def identity_linear_state(size: int, dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """Weights of a size x size Linear that passes its input through: how `linear_2` stores a `linear` projector."""
    return {"weight": torch.eye(size, dtype=dtype), "bias": torch.zeros(size, dtype=dtype)}
