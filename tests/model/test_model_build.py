"""Model-core invariants on tiny models: token counts, projector kinds, preprocessing, save→load."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from medvl.config import ConfigError
from medvl.model.build import build_model
from medvl.model.checkpoint import load_model, save_model
from medvl.model.spec import tiny_spec
from medvl.model.templates import TemplateError

MESSAGES = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is shown?"}]}]


def _features_and_tokens(model, processor, image):
    prompt = processor.apply_chat_template(MESSAGES, add_generation_prompt=True, tokenize=False)
    inputs = processor(text=[prompt], images=[image], return_tensors="pt", add_special_tokens=False)
    tokens = int((inputs["input_ids"] == model.config.image_token_index).sum())
    with torch.no_grad():
        features = model.model.get_image_features(pixel_values=inputs["pixel_values"]).pooler_output
    return tokens, sum(f.shape[0] for f in features), inputs


@pytest.mark.parametrize(
    "family,image_size,patch_size,strategy,layer",
    [("clip", 32, 8, None, -2), ("clip", 48, 16, "full", -1), ("clip", 28, 14, "default", [-3, -1]),
     ("siglip", 32, 8, None, -2), ("siglip", 64, 16, None, -1)],
)
def test_image_token_count_equals_feature_count(smol_tokenizer, rgb_image, family, image_size, patch_size,
                                                strategy, layer):
    spec = tiny_spec(str(smol_tokenizer), vision__family=family, vision__image_size=image_size,
                     vision__patch_size=patch_size, vision_feature_select_strategy=strategy,
                     vision_feature_layer=layer)
    model, processor = build_model(spec)
    tokens, features, inputs = _features_and_tokens(model, processor, rgb_image)
    assert tokens == features == model.config.image_seq_length
    with torch.no_grad():  # and the full forward accepts it
        assert model(**inputs).logits.shape[1] == inputs["input_ids"].shape[1]


@pytest.mark.parametrize("family", ["llama", "qwen2", "mistral"])
def test_llm_families_build_and_answer(smol_tokenizer, rgb_image, family):
    model, processor = build_model(tiny_spec(str(smol_tokenizer), family=family))
    assert model.config.text_config.model_type == family
    tokens, features, inputs = _features_and_tokens(model, processor, rgb_image)
    assert tokens == features
    out = model.generate(**inputs, max_new_tokens=3, do_sample=False)
    assert out.shape[1] == inputs["input_ids"].shape[1] + 3 or int(out[0, -1]) in model.generation_config.eos_token_id


def test_linear_projector_is_exactly_linear(smol_tokenizer):
    model, _ = build_model(tiny_spec(str(smol_tokenizer), projector="linear"))
    projector = model.model.multi_modal_projector
    x = torch.randn(3, 5, projector.linear_1.in_features)
    with torch.no_grad():
        assert torch.allclose(projector(x), projector.linear_1(x), atol=1e-6)
    assert model.config.projector_hidden_act == "linear"


def test_pad_to_square_pads_with_mean_colour(smol_tokenizer):
    """A wide red image padded to square: the pad rows equal the mean colour, i.e. 0 after normalising."""
    _, processor = build_model(tiny_spec(str(smol_tokenizer)))
    wide = Image.new("RGB", (64, 16), (255, 0, 0))
    pixels = processor.image_processor(images=[wide], return_tensors="pt")["pixel_values"][0]
    assert pixels.shape == (3, 32, 32)
    assert torch.allclose(pixels[:, 0, :], torch.zeros(3, 32), atol=0.03)  # top padding row
    assert pixels[0, 16, 16] > 1.5  # the red band survives in the middle
    _, no_pad = build_model(tiny_spec(str(smol_tokenizer), pad_to_square=False))
    assert not torch.allclose(no_pad.image_processor(images=[wide], return_tensors="pt")["pixel_values"][0][:, 0, :],
                              torch.zeros(3, 32), atol=0.03)


def test_save_load_gives_equal_logits(tiny_model, tmp_path, rgb_image):
    model, processor = tiny_model
    save_model(model, processor, tmp_path / "m")
    loaded, loaded_processor = load_model(tmp_path / "m")
    _, _, inputs = _features_and_tokens(model, processor, rgb_image)
    _, _, loaded_inputs = _features_and_tokens(loaded, loaded_processor, rgb_image)
    assert torch.equal(inputs["input_ids"], loaded_inputs["input_ids"])
    with torch.no_grad():
        assert torch.equal(model(**inputs).logits, loaded(**loaded_inputs).logits)
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    assert config["architectures"] == ["LlavaForConditionalGeneration"]
    assert (tmp_path / "m" / "chat_template.jinja").is_file()
    # safetensors writes 0600: a model saved into a team's folder must be readable as its config is
    config_mode = (tmp_path / "m" / "config.json").stat().st_mode & 0o777
    assert [w.stat().st_mode & 0o777 for w in (tmp_path / "m").glob("*.safetensors")] == [config_mode]


PLAIN_TRANSFORMERS = r"""
import sys
from transformers import AutoModelForImageTextToText, AutoProcessor
from PIL import Image
assert "medvl" not in sys.modules
folder = sys.argv[1]
processor = AutoProcessor.from_pretrained(folder)
model = AutoModelForImageTextToText.from_pretrained(folder)
messages = [{"role": "user", "content": [{"type": "image"}, {"type": "image"},
            {"type": "text", "text": "Compare the two scans."}]}]
prompt = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
images = [Image.new("RGB", (40, 30), (200, 10, 10)), Image.new("RGB", (30, 50), (10, 10, 200))]
inputs = processor(text=[prompt], images=images, return_tensors="pt")
out = model.generate(**inputs, max_new_tokens=4, do_sample=False)
print(type(model).__name__, out.shape[1] - inputs["input_ids"].shape[1], prompt.count("<image>"))
"""


def test_plain_transformers_loads_and_generates(tiny_model_dir):
    """A Python that imports only transformers loads the saved folder and answers (two images)."""
    result = subprocess.run([sys.executable, "-c", PLAIN_TRANSFORMERS, str(tiny_model_dir)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    name, new_tokens, placeholders = result.stdout.split()[-3:]
    assert name == "LlavaForConditionalGeneration" and 1 <= int(new_tokens) <= 4 and placeholders == "2"


def test_build_from_pretrained_parts(tmp_path, smol_tokenizer, medvl):
    """Pretrained tower and LLM folders are loaded weight for weight."""
    from transformers import AutoModelForCausalLM, CLIPVisionConfig, CLIPVisionModel, LlamaConfig

    torch.manual_seed(3)
    tower = CLIPVisionModel(CLIPVisionConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2,
                                             num_attention_heads=2, intermediate_size=64))
    tower.save_pretrained(tmp_path / "tower")
    llm = AutoModelForCausalLM.from_config(LlamaConfig(vocab_size=49152, hidden_size=64, num_hidden_layers=2,
                                                       num_attention_heads=4, intermediate_size=128))
    llm.save_pretrained(tmp_path / "llm")
    from transformers import AutoTokenizer

    AutoTokenizer.from_pretrained(smol_tokenizer).save_pretrained(tmp_path / "llm")
    spec = tiny_spec(str(smol_tokenizer), vision__path=str(tmp_path / "tower"), text__path=str(tmp_path / "llm"),
                     text__tokenizer=None)
    model, _ = build_model(spec)
    torch.testing.assert_close(model.model.vision_tower.state_dict(), tower.state_dict())
    native_layer = model.model.language_model.layers[1].mlp.up_proj.weight
    assert torch.equal(native_layer, llm.model.layers[1].mlp.up_proj.weight)
    ids = torch.tensor([[5, 6, 7]])
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=ids).logits[..., :49152], llm(input_ids=ids).logits)

    # text.keep_layers: the first layer alone, its weights unchanged; the saved config says one layer
    cut, _ = build_model(spec.model_copy(update={"text": spec.text.model_copy(update={"keep_layers": 1})}))
    assert len(cut.model.language_model.layers) == cut.config.text_config.num_hidden_layers == 1
    assert torch.equal(cut.model.language_model.layers[0].mlp.up_proj.weight, llm.model.layers[0].mlp.up_proj.weight)
    picked, _ = build_model(spec.model_copy(update={"text": spec.text.model_copy(update={"keep_layers": [1]})}))
    assert torch.equal(picked.model.language_model.layers[0].mlp.up_proj.weight, llm.model.layers[1].mlp.up_proj.weight)
    for bad in (3, [0, 2]):
        with pytest.raises(ConfigError, match="only 2 layers"):
            build_model(spec.model_copy(update={"text": spec.text.model_copy(update={"keep_layers": bad})}))
    # a spec inside a larger config (a demo's `model`): the error names the key the user wrote, which was
    # `text.keep_layers` whatever the config
    with pytest.raises(ConfigError) as raised:
        build_model(spec.model_copy(update={"text": spec.text.model_copy(update={"keep_layers": 3})}), "model")
    assert str(raised.value) == ("model.text.keep_layers=3 does not fit the LLM of model.text.path, which has only 2 "
                                 "layers: keep at most 2, or indices up to 1")
    with pytest.raises(TemplateError, match=r"^model\.spec\.chat_template: unknown chat template 'alpaca'"):
        build_model(spec.model_copy(update={"chat_template": "alpaca"}), "model.spec")
    # through the command: one line (it was a ValueError traceback), and no output folder left
    (tmp_path / "empty.yaml").write_text("")
    outcome = medvl("build", tmp_path / "empty.yaml", tmp_path / "built", f"vision.path={tmp_path / 'tower'}",
                    f"text.path={tmp_path / 'llm'}", "text.keep_layers=3")
    assert outcome.code == 2 and outcome.err.strip().splitlines()[-1] == (
        "error: text.keep_layers=3 does not fit the LLM of text.path, which has only 2 layers: keep at most 2, "
        "or indices up to 1"), outcome.err
    assert not (tmp_path / "built").exists()


def test_spec_rejects_bad_patch_size(smol_tokenizer):
    with pytest.raises(ValueError, match="not a multiple"):
        tiny_spec(str(smol_tokenizer), vision__image_size=30, vision__patch_size=8)


@pytest.mark.parametrize("keep", [0, [], [-1], [1, 1]])
def test_spec_rejects_keep_layers_that_keep_no_layer_or_one_twice(smol_tokenizer, keep):
    """Refused with the config, before the LLM is loaded (0 and [] were found only after loading it)."""
    with pytest.raises(ValueError, match=r"keep the first N layers \(N >= 1\) or list distinct layer indices"):
        tiny_spec(str(smol_tokenizer), text__keep_layers=keep)


def test_the_model_card_commands_work_for_an_odd_folder_name(tiny_model, tmp_path):
    """The card's Python and shell lines name the folder so that they run as written: a name with a
    space, a quote and a literal `$HOME` is one quoted argument, and a valid Python string."""
    import ast
    import re
    import shlex

    name = "tiny é 图像 'v2' $HOME"
    card = (save_model(*tiny_model, tmp_path / name) / "README.md").read_text()
    snippet = card.split("```python\n")[1].split("```")[0]
    loads = [call.args[0].value for call in ast.walk(ast.parse(snippet)) if isinstance(call, ast.Call)]
    assert loads == [name, name]
    assert shlex.split(re.search(r"`(vllm serve .*)`", card).group(1)) == ["vllm", "serve", name]
