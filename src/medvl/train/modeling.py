"""The model side of a stage: load the starting model, apply the freeze policy, add LoRA, merge it back.

Components of a LLaVA model (`LlavaForConditionalGeneration`):
`vision` = `model.vision_tower`, `projector` = `model.multi_modal_projector`,
`llm` = `model.language_model` + `lm_head`. A stage's policy says which of them train
(`config.STAGE_POLICIES`, overridable with `trainable.*`).

With LoRA the LLM's linear layers get adapters (the LLM weights stay frozen) and trainable
projector / vision parts are peft `modules_to_save`, so checkpoints hold everything a resume needs.
QLoRA (`lora.quantize`) loads the LLM in 4/8 bit with bitsandbytes, which needs a CUDA GPU.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from medvl.config import ConfigError
from medvl.errors import UserError
from medvl.model.dtypes import torch_dtype
from medvl.train.config import LoraSettings, ModelSource, TrainConfig

__all__ = ["COMPONENTS", "load_start_model", "load_processor", "apply_policy", "add_lora", "merge_lora",
           "component_params", "LoraUnavailable"]

log = logging.getLogger(__name__)
COMPONENTS = ("vision", "projector", "llm")
SPEC_AT = "model.spec"  # where a train config holds the spec of a fresh model


class LoraUnavailable(UserError, RuntimeError):
    """QLoRA asked for where it cannot run (no CUDA GPU or no bitsandbytes)."""


def components(model: Any) -> dict[str, list[torch.nn.Module]]:
    """The modules of each component (works on a peft-wrapped model too)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return {
        "vision": [base.model.vision_tower],
        "projector": [base.model.multi_modal_projector],
        "llm": [base.model.language_model, base.lm_head],
    }


def load_processor(source: ModelSource) -> Any:
    """The processor of the starting model without loading weights (for `medvl data check`)."""
    if source.path is not None:
        from medvl.model.checkpoint import load_saved_processor

        return load_saved_processor(source.path, "model.path")
    from medvl.model.build import build_processor, load_tokenizer, pretrained_config, pretrained_folder

    spec = source.spec
    sizes: dict[str, int] = {}
    if spec.vision.path is not None:
        key = f"{SPEC_AT}.vision.path"
        vision = pretrained_config(pretrained_folder(spec.vision.path, key), key)
        vision = getattr(vision, "vision_config", vision)
        sizes = {"image_size": vision.image_size, "patch_size": vision.patch_size}
    return build_processor(spec, load_tokenizer(spec.text, spec.image_token, SPEC_AT), at=SPEC_AT, **sizes)


def load_start_model(config: TrainConfig) -> tuple[Any, Any]:
    """(model, processor): the previous stage's folder, or a fresh build from `model.spec`."""
    source = config.model
    if config.lora.enabled and config.lora.quantize != "none":
        return _load_quantized(source, config.lora)
    if source.path is not None:
        from medvl.model.checkpoint import load_model

        model, processor = load_model(source.path, dtype=source.dtype, key="model.path")
    else:
        from medvl.model.build import build_model

        model, processor = build_model(source.spec, SPEC_AT)
        model = model.to(torch_dtype(source.dtype))
    processor.tokenizer.padding_side = "right"
    return model, processor


def _load_quantized(source: ModelSource, lora: LoraSettings) -> tuple[Any, Any]:
    if not torch.cuda.is_available():
        raise LoraUnavailable(
            f"lora.quantize={lora.quantize} (QLoRA) needs a CUDA GPU and bitsandbytes; on CPU use plain LoRA "
            "(lora.quantize=none)"
        )
    try:
        import bitsandbytes  # noqa: F401
    except ImportError as exc:
        raise LoraUnavailable("QLoRA needs bitsandbytes: pip install bitsandbytes") from exc
    if source.path is None:
        raise LoraUnavailable("QLoRA starts from a saved model folder (model.path), not a fresh spec")
    from peft import prepare_model_for_kbit_training
    from transformers import AutoModelForImageTextToText, BitsAndBytesConfig

    from medvl.model.checkpoint import load_saved_processor

    processor = load_saved_processor(source.path, "model.path")  # the folder checked before the weights load

    quantization = BitsAndBytesConfig(
        load_in_4bit=lora.quantize == "4bit", load_in_8bit=lora.quantize == "8bit",
        bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.bfloat16, bnb_4bit_use_double_quant=True,
        llm_int8_skip_modules=["vision_tower", "multi_modal_projector", "lm_head"],
    )
    model = AutoModelForImageTextToText.from_pretrained(
        source.path, quantization_config=quantization, dtype=torch.bfloat16, device_map={"": torch.cuda.current_device()}
    )
    model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    processor.tokenizer.padding_side = "right"
    return model, processor


def apply_policy(model: Any, policy: dict[str, bool]) -> None:
    """Freeze or unfreeze each component as `TrainConfig.policy()` says, then `embeddings` (input
    embeddings and lm_head, one tensor when tied; the policy defaults it to the LLM's setting)."""
    for name, modules in components(model).items():
        for module in modules:
            module.requires_grad_(policy[name])
    for module in (model.get_input_embeddings(), model.get_output_embeddings()):
        if module is not None:
            module.requires_grad_(policy["embeddings"])


def add_lora(model: Any, lora: LoraSettings, policy: dict[str, bool]) -> Any:
    """Wrap the model with LoRA adapters on the LLM; trainable projector/vision become modules_to_save."""
    from peft import LoraConfig, get_peft_model

    if not policy["llm"]:
        raise ConfigError("lora.enabled needs a stage that trains the LLM (instruct / finetune, or trainable.llm)")
    targets = "|".join(lora.target_modules)
    config = LoraConfig(
        r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout, bias="none",
        target_modules=rf".*language_model.*\.({targets})",
        modules_to_save=[m for m, on in (("multi_modal_projector", policy["projector"]),
                                         ("vision_tower", policy["vision"])) if on] or None,
    )
    peft_model = get_peft_model(model, config)
    trainable, total = peft_model.get_nb_trainable_parameters()
    log.info("LoRA: %d of %d parameters train (%.2f%%)", trainable, total, 100 * trainable / total)
    return peft_model


def merge_lora(model: Any, lora: LoraSettings, source: ModelSource, work_dir: Path) -> Any:
    """The plain model with adapters merged in (QLoRA: merged into an unquantized bf16 reload)."""
    if lora.quantize == "none":
        return model.merge_and_unload()
    from peft import PeftModel
    from transformers import AutoModelForImageTextToText

    adapter_dir = work_dir / "adapter"
    model.save_pretrained(adapter_dir)
    base = AutoModelForImageTextToText.from_pretrained(source.path, dtype=torch.bfloat16)
    return PeftModel.from_pretrained(base, adapter_dir).merge_and_unload()


def component_params(model: Any) -> dict[str, dict[str, int]]:
    """Matmul parameters, total and trainable, of vision, projector, llm (the decoder) and head.

    Embedding lookups are not matmuls and are skipped by name; a tied `lm_head` is the embedding
    tensor met again through `lm_head`, so it is counted once, as the output projection it is.
    The head is separate because the trainer runs it on supervised positions only. Under LoRA a
    trained projector / vision tower is a peft `modules_to_save` wrapper holding a trained copy
    and the frozen `original_module` the forward no longer uses; only the copy is counted.
    """
    parts = components(model)
    groups = {"vision": parts["vision"], "projector": parts["projector"], "llm": parts["llm"][:1],
              "head": parts["llm"][1:]}
    counts: dict[str, dict[str, int]] = {}
    for name, modules in groups.items():
        total = trainable = 0
        for module in modules:
            for param_name, param in module.named_parameters():
                if "embed_tokens" in param_name or "original_module." in f".{param_name}":
                    continue
                size = getattr(param, "ds_numel", param.numel())  # ZeRO-3 partitions hold 0 elements locally
                total += size
                trainable += size if param.requires_grad else 0
        counts[name] = {"total": total, "trainable": trainable}
    return counts
