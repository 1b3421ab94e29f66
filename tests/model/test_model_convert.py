"""`medvl convert`: tiny checkpoints in each released legacy layout convert, prompt to the very ids the
reference code feeds them (1 and 2 turns with an image), and give the reference forward's logits; what a
user can get wrong (a shard, a pickle, a projector or tower that does not fit, the output folder) is one
line naming the file or key, found before any weight is loaded where it can be, and a killed run leaves
no output folder that looks finished."""

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
    with pytest.raises(ConversionError, match="image_aspect_ratio 'anyres' cannot be converted"):
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


# ---- what a user can get wrong: each is one line naming the file or key and the fix ------------------------

def _edit_config(source, **changes):
    config = json.loads((source / "config.json").read_text())
    config.update(changes)
    (source / "config.json").write_text(json.dumps({k: v for k, v in config.items() if v != "DELETE"}))


def _edit_weights(source, edit):
    """Rewrite a sharded safetensors checkpoint as one shard (and its index) after `edit(state)`."""
    from safetensors.torch import load_file, save_file

    index = source / "model.safetensors.index.json"
    shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    state = {key: tensor for shard in shards for key, tensor in load_file(str(source / shard)).items()}
    edit(state)
    for shard in shards:
        (source / shard).unlink()
    save_file({k: v.contiguous() for k, v in state.items()}, str(source / "model.safetensors"))
    index.write_text(json.dumps({"weight_map": {key: "model.safetensors" for key in state}}))


def test_the_output_folder_appears_only_when_complete(converted, tmp_path, tower_dir, monkeypatch):
    """Before: save_model wrote into OUT as it went, so a run killed after the weights left a folder that
    `from_pretrained` loaded (with no processor)."""
    from transformers import LlavaProcessor

    source, out = _copy(converted, "llava-med-v1.5-mistral-7b", tmp_path), tmp_path / "native"
    seen = []

    def killed(self, folder, *args, **kwargs):
        seen.append(sorted(p.name for p in out.iterdir()) if out.exists() else None)
        raise KeyboardInterrupt  # as a kill between the weights and the processor

    monkeypatch.setattr(LlavaProcessor, "save_pretrained", killed)
    with pytest.raises(KeyboardInterrupt):
        convert_legacy(source, out, vision_tower=str(tower_dir))
    assert seen == [None] and not out.exists()  # the weights went to a partial folder, not to OUT
    assert list(tmp_path.glob(".native.partial-*")) == []  # removed, as the interruption was seen


def test_an_output_that_is_the_source_or_not_empty_is_refused_first(converted, tmp_path, tower_dir):
    """Before: OUT=SOURCE overwrote the checkpoint's config.json and deleted its shards; a non-empty OUT was
    written into, and a file in the way was found only after every weight was read."""
    from medvl.io.files import OutputPathError

    source = _copy(converted, "llava-med-v1.5-mistral-7b", tmp_path)
    before = {p.name: p.read_bytes() for p in source.iterdir()}
    with pytest.raises(OutputPathError, match="would overwrite the input"):
        convert_legacy(source, source, vision_tower=str(tower_dir))
    assert {p.name: p.read_bytes() for p in source.iterdir()} == before
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "notes.txt").write_text("mine")
    with pytest.raises(OutputPathError, match="used exists and is not empty; remove it or choose a new folder"):
        convert_legacy(source, tmp_path / "used", vision_tower=str(tower_dir))
    assert [p.name for p in (tmp_path / "used").iterdir()] == ["notes.txt"]


@pytest.mark.parametrize("projector, edit, said", [
    ("linear", None, "mm_projector_type is 'linear', but the weights hold 2 Linear layers .* set mm_projector_type "
                     "to mlp2x_gelu"),
    ("DELETE", None, "mm_projector_type is absent \\(LLaVA's default: 'linear'\\), but the weights hold 2"),
    (None, lambda s: s.update({"model.mm_projector.4.weight": torch.zeros(64, 64)}),
     "hold 3 Linear layers .*an mlp3x_gelu projector, which .* cannot hold"),
    (None, lambda s: [s.pop(k) for k in list(s) if k.startswith("model.mm_projector.")],
     "its weights hold no projector \\(model.mm_projector.\\*\\)"),
])
def test_a_projector_unlike_mm_projector_type_is_refused(converted, tmp_path, tower_dir, projector, edit, said):
    """Before: the first two converted with the second Linear replaced by the identity and no GELU, the third
    with its last Linear dropped (models that load and answer wrongly); the fourth named native keys only."""
    source = _copy(converted, "llava-med-v1.5-mistral-7b", tmp_path)
    if projector:
        _edit_config(source, mm_projector_type=projector)
    if edit:
        _edit_weights(source, edit)
    with pytest.raises(ConversionError, match=said):
        plan_conversion(source, vision_tower=str(tower_dir))


def test_weights_and_settings_the_native_model_cannot_hold_are_named(converted, tmp_path, tower_dir):
    """Before: a weight past num_hidden_layers was dropped silently, a projector for a wider tower failed
    only after every weight was read ('do not fit its config.json'), mm_vision_select_layer past the tower's
    layers converted into a model that fails at its first image, null was a pydantic traceback, and an
    image_aspect_ratio of null (LLaVA's plain resize) was refused."""
    source = _copy(converted, "llava-med-v1.5-mistral-7b", tmp_path)
    _edit_weights(source, lambda s: s.update({"model.layers.7.mlp.up_proj.weight": torch.zeros(128, 64)}))
    with pytest.raises(ConversionError, match="1 of its weights \\(e.g. model.layers.7.mlp.up_proj.weight\\) have "
                                              "no place in the model its config.json describes"):
        plan_conversion(source, vision_tower=str(tower_dir))

    def projector_for_a_wider_tower(state):
        del state["model.layers.7.mlp.up_proj.weight"]
        state["model.mm_projector.0.weight"] = torch.zeros(64, 48)

    _edit_weights(source, projector_for_a_wider_tower)
    with pytest.raises(ConversionError, match="model.mm_projector.0.weight takes 48-wide image features .* but the "
                                              "tower in .* gives 32 .* pass --vision-tower"):
        plan_conversion(source, vision_tower=str(tower_dir))
    source = _copy(converted, "llava-v1.5-7b", tmp_path)
    _edit_config(source, mm_vision_select_layer=5, image_aspect_ratio=None)
    with pytest.raises(ConversionError, match="mm_vision_select_layer 5 is past the 3 layers .* takes -4 to 3"):
        plan_conversion(source, vision_tower=str(tower_dir))
    _edit_config(source, mm_vision_select_layer=None)
    with pytest.raises(ConversionError, match="mm_vision_select_layer None is not a layer index"):
        plan_conversion(source, vision_tower=str(tower_dir))
    _edit_config(source, mm_vision_select_layer=-4)
    assert plan_conversion(source, vision_tower=str(tower_dir)).model.config.vision_feature_layer == -4


def test_pytorch_files_are_read_safely_and_as_saved(converted, tmp_path, tower_dir):
    """Before: a pickle with code in it was an UnpicklingError traceback (weights_only stopped the code), a file
    in torch's pre-zip format was 'unreadable ... download it again', a nested state dict 'lacks weights', and
    a stray adapter's safetensors beside indexed .bin shards was read instead of them."""
    import os

    from safetensors.torch import save_file

    source = _copy(converted, "llava-linear-im-start-end", tmp_path)
    state = torch.load(source / "pytorch_model.bin", weights_only=True)
    torch.save(state | {"evil": RunsOnLoad(f"touch {tmp_path / 'ran'}")}, source / "pytorch_model.bin")
    with pytest.raises(ConversionError, match="holds Python objects besides tensors, .* GLOBAL posix.system"):
        plan_conversion(source, vision_tower=str(tower_dir))
    assert not (tmp_path / "ran").exists()
    torch.save({"state_dict": state}, source / "pytorch_model.bin")
    with pytest.raises(ConversionError, match="not a state dict of named tensors.* under 'state_dict'"):
        plan_conversion(source, vision_tower=str(tower_dir))
    torch.save(state, source / "pytorch_model.bin", _use_new_zipfile_serialization=False)
    convert_legacy(source, tmp_path / "native", vision_tower=str(tower_dir))
    sharded = _copy(converted, "llava-v1.5-7b", tmp_path)
    save_file({"lora_A": torch.zeros(2)}, str(sharded / "adapter_model.safetensors"))
    assert {f.name for f in plan_conversion(sharded, vision_tower=str(tower_dir)).files} == {
        "pytorch_model-00001-of-00002.bin", "pytorch_model-00002-of-00002.bin"}
    os.remove(sharded / "pytorch_model.bin.index.json")
    os.remove(sharded / "pytorch_model-00002-of-00002.bin")
    with pytest.raises(ConversionError, match="shard\\(s\\) pytorch_model-00002-of-00002.bin missing \\(and no index"):
        plan_conversion(sharded, vision_tower=str(tower_dir))


class RunsOnLoad:
    """Pickles as a call of os.system: what a hostile .bin could hold."""

    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        import os

        return (os.system, (self.command,))


def test_the_tower_folder_must_be_a_tower_and_loads_quietly(converted, tmp_path, tower_dir):
    """Before: an LLM folder as --vision-tower failed after every weight was read; a whole CLIPModel folder
    (openai's layout) printed transformers' load report, one UNEXPECTED line per text weight."""
    source = _copy(converted, "llava-med-v1.5-mistral-7b", tmp_path)
    with pytest.raises(ConversionError, match="--vision-tower .*: its config.json is a 'llava' model, not a CLIP or "
                                              "SigLIP vision tower; pass --vision-tower with a local copy of the tower"):
        plan_conversion(source, vision_tower=str(converted("llava-v1.5-7b")[0]))
    import logging

    said = []
    handler = logging.Handler()
    handler.emit = lambda record: said.append(record.getMessage())
    logging.getLogger("transformers").addHandler(handler)  # its own handler writes to the stderr it started with
    try:
        convert_legacy(source, tmp_path / "native", vision_tower=str(tower_dir))
    finally:
        logging.getLogger("transformers").removeHandler(handler)
    assert not [line for line in said if "UNEXPECTED" in line or "instantiate a model of type" in line]
    assert "from_pretrained('native')" in (tmp_path / "native" / "README.md").read_text()  # not the partial name
