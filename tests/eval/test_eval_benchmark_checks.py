"""Each benchmark's `check` (`check_benchmark`, which `medvl launch ... eval run` runs before any process
starts): a question file that is there but cannot be read as the release (truncated, not of its format,
rows without the fields the loader needs, an option value no row has) is one line naming the file, and only
when the load itself fails on it or would ask nothing from it; a file with some broken rows passes, as the
load asks the rest. No image is read or written (tests/eval/test_eval_loaders.py: a release as published)."""

from __future__ import annotations

import csv
import json
import pickle

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from fixture_helpers import FIXTURES, copy_fixture, rewrite_json

from medvl.benchmarks import BenchmarkError, check_benchmark, load_benchmark

JSON_RELEASES = [  # (benchmark, fixture, its question file)
    ("vqa_rad", "vqa_rad", "VQA_RAD Dataset Public.json"),
    ("slake", "slake", "test.json"),
    ("huatuo_eval", "huatuo", "medical_multimodel_evaluation_data.json"),
    ("omnimedvqa", "omnimedvqa", "QA_information/Open-access/Chest CT Scan.json"),
]


def refused(name: str, root, *words: str, split: str = "test", **options) -> str:
    """The check's one line, holding `words`; the load of the same split fails too, or asks nothing."""
    with pytest.raises(BenchmarkError) as caught:
        check_benchmark(name, root, split, **options)
    message = str(caught.value)
    assert "\n" not in message and all(word in message for word in words), message
    try:
        data = load_benchmark(name, root, split, **options)
    except BenchmarkError:
        return message
    assert data.items == [], f"the check refused what the load asks: {message}"
    return message


def passes(name: str, root, split: str = "test", **options) -> None:
    assert check_benchmark(name, root, split, **options) is not None
    assert load_benchmark(name, root, split, **options).items


@pytest.mark.parametrize("name,folder,file", JSON_RELEASES)
@pytest.mark.parametrize("content,words", [
    ('[{"qid": 1, "question": "Is', ("not valid JSON", "downloaded whole")),
    ("\x89PNG\r\n\x1a\n", ("not valid JSON",)),
    ('{"questions": []}', ("expected a JSON list of question rows, found a dict",)),
    ("[]", ("no question rows", "docs/evaluation.md lists each layout")),
    ("[1, null]", ("none of its 2 question rows can be asked (malformed_row 2)",)),
], ids=["truncated", "not JSON", "an object", "empty", "no objects"])
def test_a_json_question_file_that_is_not_the_release_is_refused(tmp_path, name, folder, file, content, words):
    root = copy_fixture(folder, tmp_path)
    (root / file).write_text(content)
    assert str(root / file) in refused(name, root, *words)


@pytest.mark.parametrize("name,folder,file,reason", [
    ("vqa_rad", "vqa_rad", "VQA_RAD Dataset Public.json", "no_question"),
    ("slake", "slake", "test.json", "no_question"),
    ("huatuo_eval", "huatuo", "medical_multimodel_evaluation_data.json", "no_question"),
    ("omnimedvqa", "omnimedvqa", "QA_information/Open-access/Chest CT Scan.json", "malformed_row"),
])
def test_rows_without_the_fields_the_loader_needs_are_refused_and_one_good_row_passes(tmp_path, name, folder,
                                                                                      file, reason):
    root = copy_fixture(folder, tmp_path)
    rows = json.loads((root / file).read_text())
    another_release = [{"phrase_type": "test_freeform", "caption": "a chest film"}] * 2
    (root / file).write_text(json.dumps(another_release))
    refused(name, root, f"none of its 2 question rows can be asked ({reason} 2)")
    (root / file).write_text(json.dumps([*another_release, None, *rows]))  # broken rows first: the load skips them
    passes(name, root)


def test_the_split_and_options_choose_the_rows_checked(tmp_path):
    rad = copy_fixture("vqa_rad", tmp_path)
    rewrite_json(rad / "VQA_RAD Dataset Public.json", lambda rows: [{**row, "phrase_type": "freeform"} for row in rows])
    refused("vqa_rad", rad, "no question rows")  # no test row left: the official split is empty
    passes("vqa_rad", rad, split="train")
    rewrite_json(rad / "VQA_RAD Dataset Public.json",
                 lambda rows: [{k: v for k, v in row.items() if k != "phrase_type"} for row in rows])
    refused("vqa_rad", rad, "no row has a phrase_type")
    passes("vqa_rad", rad, split="all")

    slake = copy_fixture("slake", tmp_path)
    rewrite_json(slake / "test.json", lambda rows: [row for row in rows if row["q_lang"] == "en"])
    refused("slake", slake, f"{slake / 'test.json'} (lang=zh): no question rows; is the lang option right?", lang="zh")
    passes("slake", slake, lang="all")


def test_huatuo_datasets_are_checked_against_the_file(tmp_path):
    huatuo = copy_fixture("huatuo", tmp_path)
    refused("huatuo_eval", huatuo, "option datasets=['PathVQA'] names no known value; known: MMMU-Medical-Tracks, "
            "OmniMedVQA, VQA-RAD", datasets=["PathVQA"])
    passes("huatuo_eval", huatuo, datasets="VQA-RAD")
    rewrite_json(huatuo / "medical_multimodel_evaluation_data.json",
                 lambda rows: [{**row, "answer": ""} if row["dataset"] == "VQA-RAD" else row for row in rows])
    refused("huatuo_eval", huatuo, "can be asked (no_answer", datasets="VQA-RAD")
    passes("huatuo_eval", huatuo, datasets=["OmniMedVQA"])


def test_one_unreadable_omnimedvqa_file_among_good_ones_is_named(tmp_path):
    root = copy_fixture("omnimedvqa", tmp_path)
    broken = root / "QA_information" / "Open-access" / "Another Set.json"
    broken.write_text('[{"question_id": "x", ')
    assert refused("omnimedvqa", root, "not valid JSON").startswith(str(broken))


BROKEN_PARQUET = {  # how a parquet question file is broken: words of the refusal
    "truncated": "not a readable parquet file",
    "a CSV": "Parquet magic bytes not found",
    "no question column": "no column question (it has ",
    "no answers": "question rows can be asked (no_answer",
}


def break_parquet(path, how: str) -> None:
    table = pq.read_table(path)
    if how == "truncated":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif how == "a CSV":
        path.write_text("id,question,answer\n1,Which?,A\n")
    elif how == "no question column":
        pq.write_table(table.drop(["question"]), path)
    else:
        pq.write_table(table.set_column(table.schema.get_field_index("answer"), "answer",
                                        pa.array([""] * len(table))), path)


@pytest.mark.parametrize("how", BROKEN_PARQUET)
def test_pathvqa_parquet_is_checked_by_its_question_columns(tmp_path, how):
    hf = copy_fixture("pathvqa", tmp_path) / "hf"
    parquet = hf / "data" / "test-00000-of-00001.parquet"
    break_parquet(parquet, how)
    message = refused("pathvqa", hf, BROKEN_PARQUET[how], image_dir=str(tmp_path / "images"))
    assert message.startswith(str(parquet.parent if how == "no answers" else parquet))


@pytest.mark.parametrize("how", [*BROKEN_PARQUET][:3])
def test_mmmu_parquet_is_checked_without_its_images(tmp_path, how):
    mmmu = copy_fixture("mmmu", tmp_path)
    parquet = mmmu / "Pharmacy" / "validation-00000-of-00001.parquet"
    break_parquet(parquet, how)
    message = refused("mmmu_med", mmmu, BROKEN_PARQUET[how], split="validation", image_dir=str(tmp_path / "images"))
    assert message.startswith(str(parquet))


def test_mmmu_test_split_with_every_answer_hidden_is_refused(tmp_path):
    mmmu = copy_fixture("mmmu", tmp_path)
    for validation in mmmu.glob("*/validation-*.parquet"):
        table = pq.read_table(validation)
        hidden = table.set_column(table.schema.get_field_index("answer"), "answer", pa.array(["?"] * len(table)))
        pq.write_table(hidden, validation.with_name("test-00000-of-00001.parquet"))
    refused("mmmu_med", mmmu, "MMMU test: answers are hidden ('?'); score on split=validation or dev",
            image_dir=str(tmp_path / "images"))


def test_pathvqa_pickle_is_read_whole(tmp_path):
    pvqa = copy_fixture("pathvqa", tmp_path) / "pvqa"
    path = pvqa / "qas" / "test" / "test_qa.pkl"
    rows = pickle.loads(path.read_bytes())
    path.write_bytes(pickle.dumps(rows)[:-10])
    refused("pathvqa", pvqa, f"{path}: not a readable pickle")
    path.write_bytes(pickle.dumps([None, {"image": "test_0001", "question": "Which stain?"}]))
    refused("pathvqa", pvqa, "none of its 2 question rows can be asked (malformed_row 1, no_answer 1)")
    path.write_bytes(pickle.dumps([None, *rows]))
    passes("pathvqa", pvqa)


def test_pmc_vqa_csv_is_checked(tmp_path):
    pmc = copy_fixture("pmc_vqa", tmp_path)
    path = pmc / "test_clean.csv"
    with path.open(newline="") as handle:
        rows = list(csv.reader(handle))
    path.write_bytes(path.read_text().replace("Ultrasound", "Échographie").encode("cp1252"))
    refused("pmc_vqa", pmc, f"{path}: not UTF-8 text")
    with path.open("w", newline="") as handle:
        csv.writer(handle).writerows([["Figure_path", "Question", "Answer"], ["PMC100_F1.jpg", "Which?", "CT"]])
    refused("pmc_vqa", pmc, "missing column")
    with path.open("w", newline="") as handle:  # every answer is none of the options
        csv.writer(handle).writerows([rows[0], *[[*row[:2], "Sonar", *row[3:7], ""] for row in rows[1:]]])
    refused("pmc_vqa", pmc, f"{path}: none of its {len(rows) - 1} question rows can be asked (malformed_row")


def test_llava_jsonl_with_no_record_is_refused_and_one_record_passes(tmp_path):
    path = tmp_path / "eval.jsonl"
    path.write_text('"text"\n[1, 2]\n{"id": "x", "conversations": []}\n')
    refused("llava_jsonl", path, f"{path}: none of its 3 question rows can be asked (bad_json 2, malformed_record 1)")
    path.write_bytes(b"\x00\xff\xfe binary\n")
    refused("llava_jsonl", path, "(bad_json 1)")
    good = (FIXTURES / "llava" / "eval.jsonl").read_text()
    path.write_text("not json\n" + good)
    passes("llava_jsonl", path)
