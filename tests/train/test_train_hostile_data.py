"""Hostile training data: wrapped JSON, dead sources, HF datasets and parquet files with broken embedded
images, answers cut by truncation, duplicate ids, unanswered questions. Each is one line and exit 2 when
the user must fix it, else a counted reject or warning listed with its reason; never a traceback or a
silent loss."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
import torch

from medvl.errors import UserError
from medvl.train.config import DataConfig, SourceConfig
from medvl.train.sources import load_source
from medvl.train.validate import REJECTS_NAME, check_sources


def _turns(question: str = "<image>\nWhat color?", answer: str = "red") -> list[dict]:
    return [{"from": "human", "value": question}, {"from": "gpt", "value": answer}]


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def _png(mode: str, size=(40, 40)) -> bytes:
    import numpy as np
    from PIL import Image

    image = Image.fromarray((np.arange(1600, dtype=np.uint16).reshape(40, 40) * 40)) if mode == "I;16" else (
        Image.new(mode, size))
    buffer = io.BytesIO()
    image.save(buffer, "JPEG" if mode == "CMYK" else "PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def encoder(tiny_model):
    from medvl.train.encode import ChatEncoder

    return ChatEncoder(tiny_model[1], max_length=128)


@pytest.fixture
def embedded_rows() -> list[dict]:
    """Rows whose images are bytes: RGB, CMYK, 16-bit, corrupt."""
    images = [{"bytes": _png("RGB"), "path": None}, {"bytes": _png("CMYK"), "path": None},
              {"bytes": _png("I;16"), "path": None}, {"bytes": b"\x89PNG\r\n\x1a\nnot really", "path": None}]
    return [{"id": f"e{i}", "image": image, "conversations": _turns()} for i, image in enumerate(images)]


def _embedded_dataset(rows: list[dict]):
    import datasets

    features = datasets.Features({
        "id": datasets.Value("string"), "image": datasets.Image(),
        "conversations": [{"from": datasets.Value("string"), "value": datasets.Value("string")}],
    })
    return datasets.Dataset.from_list(rows, features=features)


def _check(tmp_path: Path, encoder, *sources: SourceConfig, **settings):
    data = DataConfig(sources=list(sources), **settings)
    return check_sources([load_source(s) for s in data.sources], encoder, data, tmp_path / "check", progress=False)


def test_a_corrupt_image_embedded_in_a_hf_dataset_is_one_reject(tmp_path, encoder, embedded_rows):
    # datasets decoded the images itself: the corrupt one stopped the check with UnidentifiedImageError
    _embedded_dataset(embedded_rows).save_to_disk(str(tmp_path / "hf"))
    report = _check(tmp_path, encoder, SourceConfig(hf=str(tmp_path / "hf")))
    assert report.sources[0].valid == [0, 1, 2]
    assert dict(report.sources[0].rejects) == {"image_truncated": 1}
    assert [r["id"] for r in _lines(tmp_path / "check" / REJECTS_NAME)] == ["e3"]


@pytest.mark.parametrize("key", ["path", "hf"])
def test_a_parquet_file_is_a_source(tmp_path, encoder, embedded_rows, key):
    # as `path`, its bytes were read as JSON lines (every row bad_json); as `hf`, datasets found no data file
    _embedded_dataset(embedded_rows).to_parquet(str(tmp_path / "embedded.parquet"))
    report = _check(tmp_path, encoder, SourceConfig(**{key: str(tmp_path / "embedded.parquet")}))
    assert report.sources[0].valid == [0, 1, 2] and dict(report.sources[0].rejects) == {"image_truncated": 1}


def test_a_hf_source_that_does_not_load_is_one_line(tmp_path, embedded_rows):
    import datasets

    rows = _embedded_dataset(embedded_rows[:1])
    datasets.DatasetDict({"train": rows, "validation": rows}).save_to_disk(str(tmp_path / "hf"))
    with pytest.raises(UserError, match=r"hf has no split 'test' \(it has train, validation\): set hf_split"):
        load_source(SourceConfig(hf=str(tmp_path / "hf"), hf_split="test"))
    with pytest.raises(UserError, match="cannot load .*nowhere as a Hugging Face dataset"):
        load_source(SourceConfig(hf=str(tmp_path / "nowhere")))


@pytest.mark.parametrize("indent", [None, 2])
def test_a_json_object_wrapping_the_records_is_refused_in_one_line(tmp_path, indent):
    # read line by line it was one reject per line of the pretty-printed file (or one record without
    # conversations), and `data check` blamed the records
    path = tmp_path / "wrapped.json"
    path.write_text(json.dumps({"version": 1, "data": [{"id": "a", "conversations": _turns("Hi?")}]}, indent=indent))
    with pytest.raises(UserError, match=r"wrapped.json is one JSON object \(keys: version, data\), not records: .*"
                                        r"its 'data' holds a list of 1: save that list as the file"):
        load_source(SourceConfig(path=str(path)))
    record = tmp_path / "one.jsonl"  # a one-record JSONL file is still a record
    record.write_text(json.dumps({"id": "a", "conversations": _turns("Hi?")}))
    assert len(load_source(SourceConfig(path=str(record)))) == 1


def test_a_source_with_no_usable_record_stops_the_mix(tmp_path, color_data, train_config, medvl):
    # a JSON array that does not parse (not UTF-8) was one bad_json row: the mix trained on the other source
    broken = tmp_path / "latin1.json"
    broken.write_bytes(json.dumps([{"id": "a", "conversations": _turns("Caf\u00e9?")}], ensure_ascii=False)
                       .encode("latin-1"))
    config = train_config(**{"data__sources": [{"path": str(broken)}, {"path": str(color_data)}]})
    from medvl.config import dump_config

    dump_config(config, tmp_path / "train.yaml")
    for outcome in (medvl("train", tmp_path / "train.yaml"), medvl("data", "check", tmp_path / "train.yaml")):
        assert outcome.code == 2, outcome
        assert outcome.err.endswith(f"\nerror: {broken}: no usable record (all 1 rows rejected: bad_json: 1; the "
                                    f"reasons are in {Path(config.output_dir) / 'data_check' / REJECTS_NAME}); "
                                    "fix it or remove it from data.sources\n")  # after the progress bar
        assert "Traceback" not in outcome.err
    assert not (Path(config.output_dir) / "model.safetensors").exists()


def test_a_source_whose_images_are_all_missing_names_the_image_root(tmp_path, medvl):
    path = _write_jsonl(tmp_path / "cwd-relative.jsonl",
                        [{"id": "a", "image": "data/img0.png", "conversations": _turns()}])
    outcome = medvl("data", "check", path)
    assert outcome.code == 2 and len(outcome.err.splitlines()) == 1
    assert f"image_missing: 1; the reasons are in {tmp_path / 'cwd-relative.check' / REJECTS_NAME}; relative image " \
           f"paths resolve against {tmp_path} (set image_root)" in outcome.err


def test_truncation_that_cuts_an_answer_is_counted_and_listed(tmp_path, color_data, tiny_model):
    from medvl.train.encode import ChatEncoder

    image = str(color_data.parent / "img0.png")
    path = _write_jsonl(tmp_path / "long.jsonl", [
        {"id": "short", "image": image, "conversations": _turns()},
        {"id": "long-answer", "image": image, "conversations": _turns(answer="answer " * 60)},
        {"id": "long-second", "image": image,
         "conversations": _turns() + _turns("And then?", "more words " * 40)},
    ])
    encoder = ChatEncoder(tiny_model[1], max_length=64)
    report = _check(tmp_path, encoder, SourceConfig(path=str(path)), max_length=64)
    assert report.sources[0].valid == [0, 1, 2] and dict(report.sources[0].warnings) == {"truncated": 2}
    warned = _lines(tmp_path / "check" / "warnings.jsonl")
    assert [(w["id"], w["stage"], w["reason"]) for w in warned] == [("long-answer", "tokens", "truncated"),
                                                                  ("long-second", "tokens", "truncated")]
    assert all(" tokens cut to max_length 64: " in w["detail"] and w["detail"].endswith(" answer tokens lost")
               for w in warned)
    saved = json.loads((tmp_path / "check" / "data_check.json").read_text())
    assert saved["totals"] == {"rows": 3, "valid": 3, "rejected": 0, "warnings": 2}


def test_duplicate_ids_are_counted_and_an_unanswered_question_is_rejected(tmp_path, color_data, encoder):
    image = str(color_data.parent / "img0.png")
    path = _write_jsonl(tmp_path / "dups.jsonl", [
        {"id": "same", "image": image, "conversations": _turns()},
        {"id": "same", "image": image, "conversations": _turns(answer="blue")},
        {"id": "open", "image": image, "conversations": _turns() + [{"from": "human", "value": "And the left?"}]},
        {"id": "system", "image": image, "conversations": [{"from": "system", "value": "Be brief."}, *_turns()]},
        {"id": "roles", "image": image, "conversations": [{"from": "user", "value": "<image>\nColor?"},
                                                          {"from": "assistant", "value": "red"}]},
    ])
    report = _check(tmp_path, encoder, SourceConfig(path=str(path)))
    source = report.sources[0]
    assert source.valid == [0, 1, 3, 4]
    assert dict(source.rejects) == {"ends_on_question": 1} and dict(source.warnings) == {"duplicate_id": 1}
    [rejected] = _lines(tmp_path / "check" / REJECTS_NAME)
    assert (rejected["id"], rejected["detail"]) == (
        "open", "the last turn (2) is from 'human': its question has no answer (a lost answer?)")
    [warned] = _lines(tmp_path / "check" / "warnings.jsonl")
    assert (warned["id"], warned["row"], warned["detail"]) == ("same", 2, "row 1 has the same id")


def test_data_max_pixels_shrinks_large_images_before_the_image_processor(color_data, encoder):
    # the key was documented ("downscale larger images") and read by nothing: a 40x40 image went in whole
    from medvl.train.dataset import TrainDataset

    seen = []

    def image_processor(images, return_tensors):
        seen.extend(image.size for image in images)
        return {"pixel_values": torch.zeros(len(images), 3, 32, 32)}

    source = load_source(SourceConfig(path=str(color_data)))
    TrainDataset([source], [(0, 0)], encoder, image_processor, max_pixels=400)[0]
    TrainDataset([source], [(0, 0)], encoder, image_processor)[0]
    assert seen == [(20, 20), (40, 40)]


def test_a_ratio_that_takes_none_of_a_sources_records_is_refused(train_config, color_data):
    # ratio 0.01 of 48 records rounds to none: the source was left out of the mix without a word
    from medvl.train.modeling import load_processor
    from medvl.train.runner import prepare_data

    config = train_config(**{"data__sources": [{"path": str(color_data)}, {"path": str(color_data), "name": "few",
                                                                           "ratio": 0.01}]})
    with pytest.raises(UserError, match=r"data.sources\[1\] \(few\): ratio 0.01 of its 48 usable records takes none "
                                        r"of them; raise it to at least 0.0208 \(one record\)"):
        prepare_data(config, load_processor(config.model), Path(config.output_dir), progress=False)
