"""Hostile input on the command line: each case is a mistake a new user makes (a missing or misplaced
path, a file that is not UTF-8, an override that is not YAML, an output path blocked by a file, an input
that yields nothing), and each must end in exit 2 with an `error:` line naming the path or key, never a
traceback or a silent exit 0. Every case here failed that way before it was fixed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

RAD = Path(__file__).parents[1] / "eval" / "fixtures" / "vqa_rad"
RECORD = {"id": "a", "image": "img.png",
          "conversations": [{"from": "human", "value": "<image>\nq?"}, {"from": "gpt", "value": "yes"}]}


def _expect_user_error(outcome, *fragments: str) -> None:
    last = outcome.err.strip().splitlines()[-1] if outcome.err.strip() else ""
    assert outcome.code == 2 and "Traceback" not in outcome.err, (outcome.code, outcome.err)
    assert all(fragment in outcome.err for fragment in fragments), outcome.err
    assert last.startswith("error:"), last  # one line (a config's problems too: joined by "; ")


@pytest.fixture
def hostile(tmp_path: Path) -> dict[str, Path]:
    """A file where a folder belongs, an empty folder, a text file named .png, a non-UTF-8 YAML."""
    from PIL import Image

    paths = {"file": tmp_path / "a-file", "folder": tmp_path / "a-folder", "text_png": tmp_path / "text.png",
             "latin1": tmp_path / "latin1.yaml", "image": tmp_path / "img.png", "records": tmp_path / "records.jsonl"}
    paths["file"].write_text("x")
    paths["folder"].mkdir()
    paths["text_png"].write_text("this is not an image")
    paths["latin1"].write_bytes(b"output_dir: caf\xe9\n")
    Image.new("RGB", (40, 40), (200, 0, 0)).save(paths["image"])
    paths["records"].write_text(json.dumps(RECORD) + "\n")
    return paths


def _curate_config(tmp_path: Path, source: Path) -> Path:
    config = tmp_path / "curate.yaml"
    config.write_text(f"sources: [{{format: pmc_jsonl, path: '{source}'}}]\n")
    return config


def test_a_config_that_is_not_utf8_is_named(medvl, hostile):
    _expect_user_error(medvl("build", hostile["latin1"], hostile["folder"] / "m"), "latin1.yaml: not UTF-8 text")


def test_a_folder_given_as_config_is_named(medvl, hostile):
    _expect_user_error(medvl("eval", "run", hostile["folder"]), "a-folder is a folder; give the config file")


def test_an_override_that_is_not_yaml_is_named(medvl, hostile, tmp_path):
    (tmp_path / "empty.yaml").write_text("")
    _expect_user_error(medvl("build", tmp_path / "empty.yaml", tmp_path / "m", "vision.num_layers=[1"),
                       "override 'vision.num_layers=[1': the value is not valid YAML")
    _expect_user_error(medvl("eval", "inspect", "vqa_rad", RAD, "--option", "x=[1"),
                       "--option x=[1: the value is not valid YAML")
    _expect_user_error(medvl("eval", "inspect", "vqa_rad", RAD, "--option", "lang"),  # was passed as lang=None
                       "--option 'lang': give key=value")


def test_an_output_folder_blocked_by_a_file_is_named(medvl, hostile):
    blocked = hostile["file"]
    _expect_user_error(medvl("data", "convert", "vqa_rad", RAD, "--out", blocked / "out.jsonl"),
                       f"{blocked} is a file, not a folder")
    _expect_user_error(medvl("data", "check", hostile["records"], "--out", blocked), f"{blocked} is a file")
    _expect_user_error(medvl("curate", "decontaminate", hostile["records"], "--against", f"vqa_rad={RAD}",
                             "--out", blocked), f"{blocked} is a file")


def test_a_folder_given_as_an_output_file_is_named(medvl, hostile):
    _expect_user_error(medvl("data", "convert", "vqa_rad", RAD, "--out", hostile["folder"]),
                       "a-folder is a folder; give a file path")


def test_an_eval_output_dir_that_is_a_file_is_named(medvl, hostile, tmp_path):
    config = tmp_path / "eval.yaml"
    config.write_text(f"benchmark: {{name: vqa_rad, root: '{RAD}', limit: 2}}\nbackend: {{kind: majority}}\n"
                      f"output_dir: '{hostile['file']}'\n")
    _expect_user_error(medvl("eval", "run", config), "a-file is a file, not a folder")


def test_save_model_into_a_file_is_an_output_path_error(tiny_model, hostile):
    from medvl.io.files import OutputPathError
    from medvl.model.checkpoint import save_model

    with pytest.raises(OutputPathError, match="is a file, not a folder"):
        save_model(*tiny_model, hostile["file"])


def test_a_curate_source_that_is_missing_or_a_folder_stops_before_the_run(medvl, hostile, tmp_path):
    missing = tmp_path / "figures.jsonl"
    _expect_user_error(medvl("curate", "run", _curate_config(tmp_path, missing), "--out", tmp_path / "out"),
                       f"sources[0].path (format pmc_jsonl): {missing} does not exist")
    _expect_user_error(medvl("curate", "estimate", _curate_config(tmp_path, hostile["folder"]), "--out",
                             tmp_path / "out"), "a-folder is a folder; give the file in it")
    assert not (tmp_path / "out").exists()  # checked before the run locks (and so creates) its output folder


def test_an_unknown_until_stage_is_named(medvl, hostile, tmp_path):
    _expect_user_error(medvl("curate", "run", _curate_config(tmp_path, hostile["records"]), "--out",
                             tmp_path / "out", "--until", "dedupe"), "--until dedupe: not a stage; choose one of")


def test_labelling_nothing_is_an_error(medvl, hostile, tmp_path):
    llm = ["--model", "mock", "--base-url", "http://127.0.0.1:9"]
    _expect_user_error(medvl("curate", "label", hostile["folder"], "--out", tmp_path / "l.jsonl", *llm),
                       "no image files under")
    _expect_user_error(medvl("curate", "label", hostile["text_png"], "--out", tmp_path / "l.jsonl", *llm),
                       "no image was labelled (already_done: 0, rejected:image_not_image: 1)", "l.rejects.jsonl")


def test_classifier_labels_that_are_missing_a_folder_or_one_class_are_named(medvl, hostile, tmp_path):
    out = ["--out", tmp_path / "classifier"]
    _expect_user_error(medvl("curate", "train-classifier", tmp_path / "labels.jsonl", *out), "labels.jsonl: no such file")
    _expect_user_error(medvl("curate", "train-classifier", hostile["folder"], *out), "a-folder is a folder")
    _expect_user_error(medvl("curate", "train-classifier", hostile["records"], *out),
                       "records.jsonl:1: needs 'image' and 'label'")
    one_class = tmp_path / "medical.jsonl"
    one_class.write_text(json.dumps({"image": str(hostile["image"]), "label": "medical"}) + "\n")
    _expect_user_error(medvl("curate", "train-classifier", one_class, *out),
                       "needs both medical and non-medical examples: got 1 medical and 0 non-medical")
    assert not (tmp_path / "classifier").exists()  # made before the check, it stayed behind empty


def test_a_missing_encoder_leaves_no_empty_output_folder(medvl, hostile, tmp_path):
    """train-classifier and train-text-filter made their --out folder before loading the encoder."""
    labels = tmp_path / "labels.jsonl"
    labels.write_text("".join(json.dumps({"image": str(hostile["image"]), "label": label}) + "\n"
                              for label in ("medical", "non_medical")))
    _expect_user_error(medvl("curate", "train-classifier", labels, "--out", tmp_path / "runs" / "classifier",
                             "--encoder", f"hf:{tmp_path / 'missing'}"), f"{tmp_path / 'missing'} is not a folder")
    _expect_user_error(medvl("curate", "train-text-filter", "--out", tmp_path / "runs" / "text-filter",
                             "--features", "embedding", "--encoder", tmp_path / "missing"),
                       f"caption encoder {tmp_path / 'missing'} is not a folder")
    assert not (tmp_path / "runs").exists()


def test_judge_inputs_that_are_missing_are_named(medvl, tmp_path):
    judge = Path(__file__).parents[2] / "configs" / "eval" / "judge.yaml"
    _expect_user_error(medvl("eval", "judge-open", tmp_path / "predictions.jsonl", "--config", judge),
                       "predictions.jsonl: no such file")
    _expect_user_error(medvl("eval", "judge-chat", tmp_path / "q.jsonl", tmp_path / "a.jsonl", "--config", judge,
                             "--out", tmp_path / "judged"), "q.jsonl: no such file")


def test_scoring_a_file_that_is_not_predictions_is_named(medvl, hostile):
    _expect_user_error(medvl("eval", "score", hostile["records"]),
                       "records.jsonl: record 1 has no 'answer', 'answer_type': not a predictions file")


@pytest.mark.parametrize("steps", ["-3", "0"])
def test_max_steps_is_minus_one_or_positive(medvl, tmp_path, steps):
    config = tmp_path / "train.yaml"
    config.write_text(f"model: {{path: '{tmp_path}'}}\noutput_dir: '{tmp_path / 'run'}'\n")
    _expect_user_error(medvl("data", "check", config, f"optim.max_steps={steps}"), "optim.max_steps")


def test_a_model_folder_that_holds_no_model_is_named(medvl, hostile, tmp_path, smol_tokenizer):
    _expect_user_error(medvl("data", "check", hostile["records"], "--model", hostile["folder"]),
                       "a-folder is not a saved model folder (no config.json)")
    (tmp_path / "empty.yaml").write_text("")
    _expect_user_error(medvl("build", tmp_path / "empty.yaml", tmp_path / "m", f"text.path={tmp_path / 'llm'}"),
                       f"text.path: {tmp_path / 'llm'} is not a folder")
    _expect_user_error(medvl("build", tmp_path / "empty.yaml", tmp_path / "m", f"text.path={hostile['folder']}"),
                       f"text.path: no tokenizer could be loaded from {hostile['folder']}")
    _expect_user_error(medvl("build", tmp_path / "empty.yaml", tmp_path / "m", f"text.path={smol_tokenizer}"),
                       f"text.path: {smol_tokenizer} has no config.json")  # a tokenizer, but no LLM to load
    _expect_user_error(medvl("convert", hostile["file"], tmp_path / "out"), "a-file: no config.json")


def test_an_unknown_dtype_is_not_blamed_on_the_model(medvl, tiny_model_dir):
    outcome = medvl("chat", tiny_model_dir, "-q", "hi", "--dtype", "float99")
    _expect_user_error(outcome, "unknown dtype 'float99'")
    assert "not a loadable medvl model" not in outcome.err


def test_serve_refuses_an_image_root_that_is_not_a_folder(medvl, hostile, tmp_path):
    _expect_user_error(medvl("serve", tmp_path, "--image-root", tmp_path / "images"), "images.local_root")
    _expect_user_error(medvl("serve", tmp_path, "--image-root", hostile["file"]), "images.local_root")


def test_a_data_check_that_finds_no_usable_record_fails_after_writing_its_report(medvl, hostile, tmp_path):
    (tmp_path / "empty.jsonl").write_text("")
    outcome = medvl("data", "check", tmp_path / "empty.jsonl")
    _expect_user_error(outcome, "empty.jsonl: no usable record (no rows at all)")
    assert (tmp_path / "empty.check" / "data_check.json").is_file()
    not_images = tmp_path / "not-images.jsonl"
    not_images.write_text(json.dumps({**RECORD, "image": str(hostile["text_png"])}) + "\n")
    _expect_user_error(medvl("data", "check", not_images), "no usable record (all 1 rows rejected: image_not_image: 1; "
                       "the reasons are in",
                       "rejects.jsonl")


def test_text_filter_labels_that_are_not_utf8_are_named(medvl, tmp_path):
    labels = tmp_path / "captions.jsonl"
    labels.write_bytes(b'{"text": "caf\xe9", "label": "medical"}\n')
    _expect_user_error(medvl("curate", "train-text-filter", labels, "--out", tmp_path / "filter"),
                       "captions.jsonl: not UTF-8 text (byte 13)")


def test_decontaminate_refuses_an_image_root_that_is_not_a_folder(medvl, hostile, tmp_path):
    """Before, every training image counted as missing and the command exited 0."""
    outcome = medvl("curate", "decontaminate", hostile["records"], "--against", f"vqa_rad={RAD}", "--out",
                    tmp_path / "clean", "--image-root", tmp_path / "images")
    assert outcome.code == 2 and "Invalid value for '--image-root'" in outcome.err and not (tmp_path / "clean").exists()


def test_a_blocked_output_folder_is_refused_before_the_training_it_would_lose(hostile, monkeypatch):
    """`medvl prior`, `curate train-classifier` and `curate train-text-filter` found a file in the way
    of their output folder only when saving, after the teacher, the embedding and the fit had run."""
    from medvl.curate import classifier, text_probe
    from medvl.io.files import OutputPathError
    from medvl.model import prior

    def expensive(*args, **kwargs):
        raise AssertionError("the expensive part ran before the output path was checked")

    monkeypatch.setattr("medvl.curate.embed.make_text_embedder", expensive)
    monkeypatch.setattr(classifier, "make_embedder", expensive)
    monkeypatch.setattr(prior, "load_teacher", expensive)
    captions = [text_probe.LabelledCaption(f"{text} {i}", medical, False, f"{text} {i}")  # 5 articles per class
                for text, medical in (("CT of the chest", True), ("A solar map", False)) for i in range(5)]
    with pytest.raises(OutputPathError, match="is a file, not a folder"):
        text_probe.train_text_probe(captions, hostile["file"])
    with pytest.raises(OutputPathError, match="is a file, not a folder"):
        classifier.train_classifier([(hostile["image"], True), (hostile["image"], False)], hostile["file"])
    with pytest.raises(OutputPathError, match="is a file, not a folder"):
        prior.distil_tower(prior.PriorConfig(images=[str(hostile["image"])]), hostile["file"])


def test_a_folder_where_an_input_file_belongs_is_named_as_a_folder(medvl, hostile, tmp_path):
    folder = hostile["folder"]  # each said "not found" / "no such file" / "no images given" of a folder that exists
    _expect_user_error(medvl("data", "check", folder), f"{folder} is a folder; give the JSONL/JSON file itself")
    _expect_user_error(medvl("curate", "train-text-filter", folder, "--out", tmp_path / "tf"),
                       f"{folder} is a folder; give the labelled captions JSONL itself")
    _expect_user_error(medvl("prior", tmp_path / "tower", "-i", folder), f"prior: no image files in {folder}")
