"""One table per model family (`medvl.model.families`): it agrees with transformers and vLLM, every
family in it builds and passes the vLLM check, and a throwaway family registered from outside is
built, converted from and served like the shipped ones. Also the one dtype table."""

from __future__ import annotations

import json

import pytest
import torch
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

from medvl.config import ConfigError, load_config
from medvl.errors import UserError
from medvl.model.build import build_model
from medvl.model.checkpoint import save_model
from medvl.model.dtypes import DTYPE_NAMES, resolve_dtype, torch_dtype
from medvl.model.families import CHAT_FORMATS, FAMILIES, Family, legacy_types, text_config
from medvl.model.legacy_layout import ConversionError, legacy_config
from medvl.model.spec import ModelSpec, TextSpec, tiny_spec
from medvl.model.templates import STOP_STRINGS, TEMPLATE_NAMES, guess_format, shipped_template
from medvl.model.vllm_compat import vllm_problems


def test_the_table_agrees_with_transformers():
    for family in FAMILIES.values():
        assert MODEL_FOR_CAUSAL_LM_MAPPING_NAMES[family.name] == family.causal_lm
        assert text_config(family.name, hidden_size=64).model_type == family.name
    assert legacy_types() == {"llava_llama": FAMILIES.get("llama"), "llava": FAMILIES.get("llama"),
                              "llava_mistral": FAMILIES.get("mistral"), "llava_qwen2": FAMILIES.get("qwen2")}
    assert set(TEMPLATE_NAMES) == set(CHAT_FORMATS) and STOP_STRINGS["chatml"] == ["<|im_end|>"]


@pytest.mark.parametrize("name", FAMILIES.names())
def test_every_family_builds_a_model_vllm_accepts(smol_tokenizer, tmp_path, name):
    model, processor = build_model(tiny_spec(str(smol_tokenizer), family=name))
    saved = json.loads((save_model(model, processor, tmp_path) / "config.json").read_text())
    assert saved["text_config"]["architectures"] == [FAMILIES.get(name).causal_lm]
    assert vllm_problems(tmp_path) == []


@pytest.fixture
def olmo2():
    """A family medvl does not ship, registered the way docs/architecture.md shows."""
    FAMILIES.register("olmo2", Family("olmo2", "Olmo2ForCausalLM", ("llava_olmo2",), "chatml"))
    try:
        yield FAMILIES.get("olmo2")
    finally:
        FAMILIES.unregister("olmo2")


def test_a_registered_family_is_built_converted_from_and_checked(olmo2, smol_tokenizer, tmp_path, rgb_image):
    model, processor = build_model(tiny_spec(str(smol_tokenizer), family="olmo2"))
    assert model.config.text_config.model_type == "olmo2"
    inputs = processor(text=processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "?"}]}], add_generation_prompt=True),
        images=[rgb_image], return_tensors="pt")
    with torch.no_grad():
        assert model(**inputs).logits.shape[1] == inputs["input_ids"].shape[1]
    assert vllm_problems(save_model(model, processor, tmp_path / "native")) == []
    (tmp_path / "legacy").mkdir()
    (tmp_path / "legacy" / "config.json").write_text(json.dumps({"model_type": "llava_olmo2", "hidden_size": 64}))
    assert legacy_config(tmp_path / "legacy")["model_type"] == "llava_olmo2"
    assert legacy_types()["llava_olmo2"] is olmo2


def test_an_unknown_family_is_named_with_the_known_ones(tmp_path, smol_tokenizer):
    with pytest.raises(ValueError, match="unknown model family 'olmo2'; known: llama, mistral, qwen2, qwen3"):
        TextSpec(tokenizer=str(smol_tokenizer), family="olmo2")
    spec = tmp_path / "spec.yaml"
    spec.write_text(f"text: {{tokenizer: '{smol_tokenizer}', family: olmo2}}\n")
    with pytest.raises(ConfigError, match="text.family"):
        load_config(ModelSpec, spec)
    (tmp_path / "legacy").mkdir()
    (tmp_path / "legacy" / "config.json").write_text(json.dumps({"model_type": "llava_olmo2"}))
    with pytest.raises(ConversionError, match="llava_llama, llava, llava_mistral, llava_qwen2"):
        legacy_config(tmp_path / "legacy")


def test_a_template_is_guessed_by_its_format_markers_in_table_order():
    for name in TEMPLATE_NAMES:
        assert guess_format(shipped_template(name)) == name
    assert guess_format("[INST] ... ASSISTANT:") == "mistral_instruct" and guess_format("plain") is None


def test_one_dtype_table():
    assert DTYPE_NAMES == ("float32", "bfloat16", "float16")
    assert ModelSpec.model_fields["dtype"].annotation.__args__ == DTYPE_NAMES
    assert [torch_dtype(n) for n in ("bf16", "bfloat16", "fp16", "fp32")] == [
        torch.bfloat16, torch.bfloat16, torch.float16, torch.float32]
    assert resolve_dtype("auto") == "auto" and resolve_dtype(None) == "auto" and resolve_dtype(torch.half) is torch.half
    with pytest.raises(UserError, match="unknown dtype 'float64'; choose one of float32, bfloat16, float16, fp32"):
        resolve_dtype("float64")
