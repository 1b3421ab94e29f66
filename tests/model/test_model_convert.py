"""`medvl convert`: a tiny checkpoint written in the original LLaVA layout converts to the native
format, and the converted model's logits equal a forward pass done the legacy way (image features
spliced in at the -200 sentinel)."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, CLIPVisionConfig, CLIPVisionModel

from medvl.model.checkpoint import load_model
from medvl.model.convert import ConversionError, convert_legacy

IMAGE_SENTINEL = -200
LLM_TYPES = {"llava_llama": "llama", "llava_mistral": "mistral", "llava_qwen2": "qwen2"}


def _write_legacy(folder, tower_dir, tokenizer_dir, model_type, projector, *, embed_tower=False,
                  select_layer=-2, aspect="pad", start_end=False):
    torch.manual_seed(1)
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    if start_end:
        tokenizer.add_tokens(["<im_start>", "<im_end>"], special_tokens=True)
    llm_config = AutoConfig.for_model(
        LLM_TYPES[model_type], vocab_size=len(tokenizer), hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, intermediate_size=128, max_position_embeddings=256)
    llm = AutoModelForCausalLM.from_config(llm_config)
    tower = CLIPVisionModel.from_pretrained(tower_dir)
    vision_hidden = tower.config.hidden_size
    if projector == "mlp2x_gelu":
        proj = torch.nn.Sequential(torch.nn.Linear(vision_hidden, 64), torch.nn.GELU(), torch.nn.Linear(64, 64))
    else:
        proj = torch.nn.Linear(vision_hidden, 64)
    state = {k: v.contiguous() for k, v in llm.state_dict().items()}
    state.update({f"model.mm_projector.{k}": v.contiguous() for k, v in proj.state_dict().items()})
    if embed_tower:
        state.update({f"model.vision_tower.vision_tower.{k}": v.contiguous() for k, v in tower.state_dict().items()})
    folder.mkdir(parents=True)
    save_file(state, str(folder / "model.safetensors"))
    config = llm_config.to_dict() | {
        "model_type": model_type, "architectures": ["LlavaLlamaForCausalLM"],
        "mm_vision_tower": str(tower_dir), "mm_hidden_size": vision_hidden, "mm_projector_type": projector,
        "mm_vision_select_layer": select_layer, "mm_vision_select_feature": "patch", "image_aspect_ratio": aspect,
        "mm_use_im_start_end": start_end, "mm_use_im_patch_token": False, "torch_dtype": "float32",
    }
    (folder / "config.json").write_text(json.dumps(config))
    tokenizer.save_pretrained(folder)
    return llm, tower, proj, tokenizer


def _legacy_logits(llm, tower, proj, input_ids, pixel_values, select_layer=-2):
    """The original LLaVA forward: tower hidden state → drop CLS → projector → splice at the sentinel."""
    features = tower(pixel_values, output_hidden_states=True).hidden_states[select_layer][:, 1:]
    image_embeds = proj(features)[0]
    at = input_ids.index(IMAGE_SENTINEL)
    embed = llm.get_input_embeddings()
    before = embed(torch.tensor([input_ids[:at]]))
    after = embed(torch.tensor([input_ids[at + 1:]]))
    sequence = torch.cat([before, image_embeds[None], after], dim=1)
    return llm(inputs_embeds=sequence).logits


@pytest.fixture(scope="module")
def tower_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("clip-tower")
    torch.manual_seed(0)
    config = CLIPVisionConfig(image_size=28, patch_size=14, hidden_size=32, num_hidden_layers=3,
                              num_attention_heads=2, intermediate_size=64)
    CLIPVisionModel(config).save_pretrained(folder)
    return folder


@pytest.mark.parametrize(
    "model_type,projector,embed_tower,start_end",
    [("llava_llama", "mlp2x_gelu", False, False), ("llava_qwen2", "mlp2x_gelu", True, False),
     ("llava_mistral", "mlp2x_gelu", False, False), ("llava_llama", "linear", False, True)],
)
def test_converted_logits_equal_legacy_forward(tmp_path, tower_dir, smol_tokenizer, rgb_image, model_type,
                                               projector, embed_tower, start_end):
    legacy_dir = tmp_path / "legacy"
    llm, tower, proj, tokenizer = _write_legacy(legacy_dir, tower_dir, smol_tokenizer, model_type, projector,
                                                embed_tower=embed_tower, start_end=start_end)
    out = convert_legacy(legacy_dir, tmp_path / "native")
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == ["LlavaForConditionalGeneration"] and config["model_type"] == "llava"

    model, processor = load_model(out)
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Is there a lesion?"}]}]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    inputs = processor(text=[prompt], images=[rgb_image], return_tensors="pt", add_special_tokens=False)
    image_id = model.config.image_token_index
    native_ids = inputs["input_ids"][0].tolist()
    first = native_ids.index(image_id)
    count = native_ids.count(image_id)
    assert count == (28 // 14) ** 2
    legacy_ids = native_ids[:first] + [IMAGE_SENTINEL] + native_ids[first + count:]
    if start_end:
        assert tokenizer.convert_ids_to_tokens(native_ids[first - 1]) == "<im_start>"
        assert tokenizer.convert_ids_to_tokens(native_ids[first + count]) == "<im_end>"

    with torch.no_grad():
        expected = _legacy_logits(llm, tower, proj, legacy_ids, inputs["pixel_values"])
        actual = model(**inputs).logits[:, :, : expected.shape[-1]]
    torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-4)


def test_pad_aspect_sets_pad_to_square(tmp_path, tower_dir, smol_tokenizer):
    _write_legacy(tmp_path / "legacy", tower_dir, smol_tokenizer, "llava_llama", "mlp2x_gelu", aspect="square")
    out = convert_legacy(tmp_path / "legacy", tmp_path / "native", chat_template="chatml")
    _, processor = load_model(out)
    assert processor.image_processor.do_pad is False
    assert "<|im_start|>" in processor.chat_template


def test_missing_tower_is_a_clear_error(tmp_path, tower_dir, smol_tokenizer):
    legacy_dir = tmp_path / "legacy"
    _write_legacy(legacy_dir, tower_dir, smol_tokenizer, "llava_llama", "mlp2x_gelu")
    config = json.loads((legacy_dir / "config.json").read_text())
    config["mm_vision_tower"] = "openai/clip-vit-large-patch14-336"
    (legacy_dir / "config.json").write_text(json.dumps(config))
    with pytest.raises(ConversionError, match="--vision-tower"):
        convert_legacy(legacy_dir, tmp_path / "native")
    out = convert_legacy(legacy_dir, tmp_path / "native", vision_tower=str(tower_dir))
    assert (out / "model.safetensors").is_file()


def test_not_a_legacy_checkpoint(tmp_path, tiny_model_dir):
    with pytest.raises(ConversionError, match="not a legacy LLaVA type"):
        convert_legacy(tiny_model_dir, tmp_path / "out")
