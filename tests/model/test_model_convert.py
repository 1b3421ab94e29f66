"""`medvl convert`: tiny checkpoints in each released legacy layout convert, prompt to the very ids the
reference code feeds them (1 and 2 turns with an image), and give the reference forward's logits."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
import torch
from legacy_testkit import (
    IMAGE_SENTINEL,
    LAYOUTS,
    reference_ids,
    reference_logits,
    reference_pixels,
    write_legacy_checkpoint,
    write_tower_folder,
)
from typer.testing import CliRunner

from medvl.cli import build_app
from medvl.model.checkpoint import load_model
from medvl.model.convert import ConversionError, convert_legacy, plan_conversion, tower_key_names

TURNS = {
    1: [("What is shown in this image?", None)],
    2: [("What is shown in this image?", "A chest X-ray."), ("Is it normal?", None)],
}


@pytest.fixture(scope="module")
def tower_dir(tmp_path_factory):
    """A local copy of the CLIP tower in openai's layout (a whole CLIPModel), as --vision-tower gets it."""
    folder = tmp_path_factory.mktemp("clip-vit-large-patch14-336")
    write_tower_folder(folder, seed=0, full_clip=True)
    return folder


@pytest.fixture(scope="module")
def converted(tmp_path_factory, tower_dir):
    """Per layout: (legacy folder, reference parts, native folder), built once."""
    cache = {}

    def get(name):
        if name not in cache:
            layout = LAYOUTS[name]
            root = tmp_path_factory.mktemp("legacy")
            reference = write_legacy_checkpoint(root, layout, tower_dir)
            tower = str(tower_dir) if layout.needs_tower_folder else None
            out = convert_legacy(root / name, root / "native", vision_tower=tower, dtype="float32")
            cache[name] = (root / name, reference, out)
        return cache[name]

    return get


def _messages(layout, turns):
    """The same conversation as chat messages: the image as a content part of the first question."""
    messages = []
    for index, (question, answer) in enumerate(turns):
        content = [{"type": "image"}] if index == 0 else []
        messages.append({"role": "user", "content": content + [{"type": "text", "text": question}]})
        if answer is not None:
            messages.append({"role": "assistant", "content": [{"type": "text", "text": answer}]})
    return messages


def _with_image_tag(layout, turns):
    tag = "<im_start><image><im_end>" if layout.start_end else "<image>"
    (question, answer), *rest = turns
    return [(f"{tag}\n{question}", answer), *rest]


@pytest.mark.parametrize("turns", [1, 2])
@pytest.mark.parametrize("name", list(LAYOUTS))
def test_prompt_ids_and_logits_equal_the_reference(converted, rgb_image, name, turns):
    legacy_dir, reference, out = converted(name)
    layout = LAYOUTS[name]
    model, processor = load_model(out)
    prompt = processor.apply_chat_template(_messages(layout, TURNS[turns]), add_generation_prompt=True, tokenize=False)
    inputs = processor(text=[prompt], images=[rgb_image], return_tensors="pt")  # a plain call: BOS added once
    ids = inputs["input_ids"][0].tolist()
    image_id = model.config.image_token_index
    first, count = ids.index(image_id), ids.count(image_id)
    assert count == (28 // 14) ** 2
    native = ids[:first] + [IMAGE_SENTINEL] + ids[first + count:]

    import transformers
    from transformers import AutoTokenizer

    named = json.loads((legacy_dir / "tokenizer_config.json").read_text())["tokenizer_class"]
    source_tokenizer = getattr(transformers, named).from_pretrained(legacy_dir)  # as the reference code loads it
    for reloaded in (AutoTokenizer.from_pretrained(out), type(source_tokenizer).from_pretrained(out)):
        assert reloaded(prompt)["input_ids"] == processor.tokenizer(prompt)["input_ids"]  # however it is reloaded
    expected = reference_ids(layout, source_tokenizer, _with_image_tag(layout, TURNS[turns]))
    assert native == expected, (source_tokenizer.convert_ids_to_tokens([i for i in native if i >= 0]),
                                source_tokenizer.convert_ids_to_tokens([i for i in expected if i >= 0]))

    pixels = reference_pixels(rgb_image, reference.tower_dir)
    torch.testing.assert_close(inputs["pixel_values"], pixels, rtol=0, atol=1e-6)
    with torch.no_grad():
        actual = model(**inputs).logits
    want = reference_logits(reference, expected, pixels)
    torch.testing.assert_close(actual[..., : want.shape[-1]], want, rtol=1e-5, atol=1e-5)


def test_check_prints_the_plan(converted, tower_dir):
    legacy_dir, _, _ = converted("llava-linear-im-start-end")
    result = CliRunner().invoke(build_app(), ["convert", str(legacy_dir), "--check", "--vision-tower", str(tower_dir)])
    assert result.exit_code == 0, result.output
    out = result.output
    assert "model.vision_tower.vision_tower.* → model.vision_tower.*" in out
    assert "vision_model.embeddings.class_embedding → model.vision_tower.embeddings.class_embedding" in out
    assert "model.mm_projector.* → model.multi_modal_projector.*" in out
    assert "dropped 2 key(s)" in out  # position_ids and rotary inv_freq, which older transformers saved
    assert f"config and preprocessing from {tower_dir} (--vision-tower); weights from the checkpoint" in out
    assert "chat template: vicuna" in out
    assert "USER: <im_start><image><im_end>\\nWhat does the image show? ASSISTANT: A chest X-ray.</s>USER:" in out
    assert "example tokens: ['<s>', '▁A'," in out  # one BOS; the text after it starts a word as on its own


def test_convert_ends_with_the_vllm_config_check(medvl, converted, tower_dir, tmp_path):
    legacy_dir, _, _ = converted("llava-med-v1.5-mistral-7b")
    outcome = medvl("convert", legacy_dir, tmp_path / "out", "--vision-tower", tower_dir)
    assert outcome.code == 0 and outcome.out.splitlines()[-1] == "vLLM config check: passed", outcome.out


def test_tower_folder_weights_when_the_checkpoint_has_none(converted, tower_dir):
    legacy_dir, _, _ = converted("llava-med-v1.5-mistral-7b")
    plan = plan_conversion(legacy_dir, vision_tower=str(tower_dir))
    assert plan.tower_weights_from == "folder" and plan.template == "mistral_instruct"
    huatuo_dir, _, _ = converted("HuatuoGPT-Vision-7B")
    plan = plan_conversion(huatuo_dir)  # finds ./vit/ through mm_vision_tower, relative to the checkpoint
    assert plan.tower_dir == huatuo_dir / "vit" / "clip_vit_large_patch14_336" and plan.template == "huatuo"


def test_tower_key_names_follow_the_installed_layout():
    native = {"embeddings.class_embedding", "encoder.layers.0.mlp.fc1.weight"}
    old = {"vision_model." + k for k in native}
    assert tower_key_names(sorted(old), native) == {"vision_model." + k: k for k in native}
    assert tower_key_names(sorted(native), old) == {k: "vision_model." + k for k in native}
    assert tower_key_names(sorted(native), native) == {k: k for k in native}
    assert tower_key_names(["head.weight"], native) == {}


def _copy(converted, name, tmp_path):
    legacy_dir, _, _ = converted(name)
    shutil.copytree(legacy_dir, tmp_path / name)
    return tmp_path / name


def test_conversion_failures_are_one_clear_error(converted, tmp_path, tower_dir, tiny_model_dir):
    source = _copy(converted, "llava-v1.5-7b", tmp_path)
    with pytest.raises(ConversionError, match="carries the tower's weights but not its config, .* pass --vision-tower"):
        plan_conversion(source)
    with pytest.raises(ConversionError, match="--vision-tower .*: no config.json there"):
        plan_conversion(source, vision_tower=str(tmp_path))
    with pytest.raises(ConversionError, match="--chat-template 'alpaca'"):
        plan_conversion(source, vision_tower=str(tower_dir), chat_template="alpaca")
    (source / "pytorch_model-00002-of-00002.bin").write_bytes(b"not a checkpoint")
    with pytest.raises(ConversionError, match="pytorch_model-00002-of-00002.bin: unreadable weights"):
        plan_conversion(source, vision_tower=str(tower_dir))
    (source / "pytorch_model-00002-of-00002.bin").unlink()
    with pytest.raises(ConversionError, match="lists pytorch_model-00002-of-00002.bin, missing .* download it again"):
        plan_conversion(source, vision_tower=str(tower_dir))
    with pytest.raises(ConversionError, match="not a legacy LLaVA type"):
        plan_conversion(tiny_model_dir)


def test_tokenizer_and_config_problems(converted, tmp_path, tower_dir):
    source = _copy(converted, "llava-med-v1.5-mistral-7b", tmp_path)
    config = json.loads((source / "config.json").read_text())
    (source / "config.json").write_text(json.dumps(config | {"image_aspect_ratio": "anyres"}))
    with pytest.raises(ConversionError, match="image_aspect_ratio 'anyres' is not supported"):
        plan_conversion(source, vision_tower=str(tower_dir))
    (source / "config.json").write_text(json.dumps(config))
    for name in ("tokenizer.model", "tokenizer_config.json", "special_tokens_map.json"):
        (source / name).unlink()
    with pytest.raises(ConversionError, match="its tokenizer does not load"):
        plan_conversion(source, vision_tower=str(tower_dir))


def test_a_broken_tower_config_json_is_named(converted, tmp_path, tower_dir):
    """Before: 'not a vision tower config (Unrecognized model in ...)', naming neither the file nor what is
    wrong."""
    import re

    from medvl.errors import UserError

    source = _copy(converted, "llava-med-v1.5-mistral-7b", tmp_path)
    tower = tmp_path / "tower"
    shutil.copytree(tower_dir, tower)
    (tower / "config.json").write_text("[1, 2]")
    said = f"--vision-tower: {tower / 'config.json'}: a list, not an object"
    with pytest.raises(UserError, match=re.escape(said)):
        plan_conversion(source, vision_tower=str(tower))


def test_cli_reports_a_conversion_error_in_one_line(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llava_llama", "mm_projector_type": "mlp2x_gelu"}))
    result = subprocess.run([sys.executable, "-m", "medvl.cli", "convert", str(tmp_path), str(tmp_path / "out")],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    # library notices: transformers' own handler, plus the root logger's copy when CI=true makes it propagate
    lines = [line for line in result.stderr.splitlines() if not line.startswith(("[transformers]", "WARNING transformers."))]
    assert lines == [f"error: {tmp_path}: no weights (*.safetensors or pytorch_model*.bin)"]


def test_pad_aspect_sets_pad_to_square(converted, tmp_path, tower_dir):
    source = _copy(converted, "llava-med-v1.5-mistral-7b", tmp_path)
    config = json.loads((source / "config.json").read_text())
    (source / "config.json").write_text(json.dumps(config | {"image_aspect_ratio": "square"}))
    plan = plan_conversion(source, vision_tower=str(tower_dir), chat_template="chatml")
    assert plan.processor.image_processor.do_pad is False
    assert "<|im_start|>" in plan.processor.chat_template
