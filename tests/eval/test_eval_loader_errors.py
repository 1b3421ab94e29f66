"""Bad benchmark input: each ends in one clear line and exit 2, or in a recorded reject — never a traceback.

Every case starts from a release-shaped file (the fixtures, or the real VQA-RAD / SLAKE files in
../shared) and breaks it the way real copies break.
"""

from __future__ import annotations

import csv
import json
import pickle

import numpy as np
import pytest
from fixture_helpers import FIXTURES, copy_fixture, rewrite_json

from medvl.benchmarks import BenchmarkError, load_benchmark
from medvl.errors import UserError


def test_benchmark_errors_are_user_errors():
    assert issubclass(BenchmarkError, UserError) and issubclass(BenchmarkError, ValueError)


@pytest.mark.parametrize("args, words", [
    (["slake", "/no/such/folder"], "does not exist"),
    (["slake", FIXTURES / "slake", "--split", "dev-set"], f"slake at {FIXTURES / 'slake'}: unknown split 'dev-set'"),
    (["slake", FIXTURES / "slake", "--option", "lang=fr"], "lang='fr' is not one of: en, zh, all"),
    (["omnimedvqa", FIXTURES / "omnimedvqa", "--option", "access=bogus"], "open, restricted, all"),
    (["mmmu_med", FIXTURES / "mmmu", "--option", "subjects=Pharmacology"], "known: Basic_Medical_Science"),
    (["mmmu_med", FIXTURES / "mmmu", "--option", "subjects=5"], "subjects=5 is neither a name nor a list of names"),
    (["llava_jsonl", FIXTURES / "llava"], "is a folder"),
])
def test_cli_prints_one_line_and_exits_2(medvl, args, words):
    result = medvl("eval", "inspect", *args)
    assert result.code == 2, result
    assert result.err.count("\n") == 1 and result.err.startswith("error: ") and words in result.err
    assert "Traceback" not in result.err + result.out


def test_bad_json_and_non_list_json_name_the_file(tmp_path, medvl):
    root = copy_fixture("slake", tmp_path)
    (root / "test.json").write_text('[{"qid": 1, ')
    result = medvl("eval", "inspect", "slake", root)
    assert result.code == 2 and "test.json: not valid JSON" in result.err
    for name, file in (("slake", "test.json"), ("vqa_rad", "VQA_RAD Dataset Public.json"),
                       ("huatuo", "medical_multimodel_evaluation_data.json")):
        folder = copy_fixture(name, tmp_path / "dict")
        (folder / file).write_text(json.dumps({"questions": []}))
        with pytest.raises(BenchmarkError, match="expected a JSON list of question rows, found a dict"):
            load_benchmark("huatuo_eval" if name == "huatuo" else name, folder)


def test_null_rows_and_rows_without_answer_or_question_are_rejected(tmp_path):
    slake = copy_fixture("slake", tmp_path)
    rewrite_json(slake / "test.json", lambda rows: [None, {**rows[0], "answer": None}, *rows[1:]])
    data = load_benchmark("slake", slake, lang="all")
    assert [(r["id"], r["reason"]) for r in data.rejects] == [("test-row-0", "malformed_row"), ("0", "no_answer")]
    assert [i.id for i in data.items] == ["1", "2"]

    rad = copy_fixture("vqa_rad", tmp_path)
    rewrite_json(rad / "VQA_RAD Dataset Public.json",
                 lambda rows: [*rows[:3], {k: v for k, v in rows[3].items() if k != "answer"}, None, *rows[4:]])
    data = load_benchmark("vqa_rad", rad)
    assert [(r["id"], r["reason"]) for r in data.rejects] == [("VQA_RAD Dataset Public-row-4", "malformed_row"),
                                                              ("3", "no_answer")]
    assert [i.id for i in data.items] == ["4", "5"]

    huatuo = copy_fixture("huatuo", tmp_path)
    rewrite_json(huatuo / "medical_multimodel_evaluation_data.json",
                 lambda rows: [{**rows[0], "answer": ""}, {k: v for k, v in rows[1].items() if k != "question"},
                               *rows[2:]])
    data = load_benchmark("huatuo_eval", huatuo)
    assert [(r["id"], r["reason"]) for r in data.rejects] == [("1", "no_answer"), ("2", "no_question")]
    assert [i.id for i in data.items] == ["3", "4"]  # numbering still follows the file (the reference's test_id)


def test_mmmu_test_split_with_hidden_answers(tmp_path, medvl):
    import pyarrow as pa
    import pyarrow.parquet as pq

    mmmu = copy_fixture("mmmu", tmp_path)
    for validation in mmmu.glob("*/validation-*.parquet"):
        table = pq.read_table(validation)
        hidden = table.set_column(table.schema.get_field_index("answer"), "answer", pa.array(["?"] * len(table)))
        pq.write_table(hidden, validation.with_name("test-00000-of-00001.parquet"))
    result = medvl("eval", "inspect", "mmmu_med", mmmu, "--split", "test", "--option", f"image_dir={tmp_path / 'img'}")
    assert result.code == 2 and "answers are hidden ('?'); score on split=validation or dev" in result.err


def test_vqa_rad_without_phrase_type_is_refused(tmp_path):
    rad = copy_fixture("vqa_rad", tmp_path)
    rewrite_json(rad / "VQA_RAD Dataset Public.json",
                 lambda rows: [{k: v for k, v in row.items() if k != "phrase_type"} for row in rows])
    with pytest.raises(BenchmarkError, match="no row has a phrase_type"):
        load_benchmark("vqa_rad", rad)
    assert len(load_benchmark("vqa_rad", rad, split="all")) == 6


def test_list_options_accept_one_string_and_refuse_unknown_names(tmp_path):
    only = load_benchmark("huatuo_eval", FIXTURES / "huatuo", datasets="OmniMedVQA")
    assert [i.meta["dataset"] for i in only.items] == ["OmniMedVQA"]
    with pytest.raises(BenchmarkError, match="known: MMMU-Medical-Tracks, OmniMedVQA, VQA-RAD"):
        load_benchmark("huatuo_eval", FIXTURES / "huatuo", datasets=["PathVQA"])
    pharmacy = load_benchmark("mmmu_med", FIXTURES / "mmmu", "validation", subjects="Pharmacy",
                              image_dir=str(tmp_path))
    assert {i.meta["subject"] for i in pharmacy.items} == {"Pharmacy"}


def test_a_split_with_no_question_is_an_error(tmp_path):
    slake = copy_fixture("slake", tmp_path)
    rewrite_json(slake / "test.json", lambda rows: [r for r in rows if r["q_lang"] == "en"])
    with pytest.raises(BenchmarkError, match=r"no questions found .* with options \{'lang': 'zh'\}"):
        load_benchmark("slake", slake, lang="zh")


def test_pmc_vqa_non_utf8_and_missing_columns(tmp_path):
    pmc = copy_fixture("pmc_vqa", tmp_path)
    csv_path = pmc / "test_clean.csv"
    csv_path.write_bytes(csv_path.read_text().replace("Ultrasound", "Échographie").encode("cp1252"))
    with pytest.raises(BenchmarkError, match="test_clean.csv: not UTF-8 text .* re-save the CSV as UTF-8"):
        load_benchmark("pmc_vqa", pmc)
    with csv_path.open("w", newline="") as handle:
        csv.writer(handle).writerows([["Figure_path", "Question", "Answer"], ["PMC100_F1.jpg", "Which?", "CT"]])
    with pytest.raises(BenchmarkError, match="missing column"):
        load_benchmark("pmc_vqa", pmc)


def test_pathvqa_corrupt_parquet_and_missing_column(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    hf = copy_fixture("pathvqa", tmp_path) / "hf"
    parquet = hf / "data" / "test-00000-of-00001.parquet"
    table = pq.read_table(parquet)
    parquet.write_bytes(parquet.read_bytes()[: parquet.stat().st_size // 2])
    with pytest.raises(BenchmarkError, match="not a readable parquet file"):
        load_benchmark("pathvqa", hf, image_dir=str(tmp_path / "img"))
    pq.write_table(table.drop(["answer"]), parquet)
    with pytest.raises(BenchmarkError, match=r"no column answer \(it has image, question\)"):
        load_benchmark("pathvqa", hf, image_dir=str(tmp_path / "img"))
    pq.write_table(table.set_column(2, "answer", pa.array([None, "hematoxylin and eosin"])), parquet)
    data = load_benchmark("pathvqa", hf, image_dir=str(tmp_path / "img"))
    assert [r["reason"] for r in data.rejects] == ["no_answer"] and len(data) == 1


@pytest.mark.parametrize("protocol", [2, 4])
def test_pathvqa_pickle_with_numpy_strings_is_read(tmp_path, protocol):
    pvqa = copy_fixture("pathvqa", tmp_path) / "pvqa"
    rows = [{"image": np.str_("test_0001"), "question": np.str_("Is this adipose tissue?"), "answer": np.str_("yes")},
            {"image": "test_0002", "question": "How many nuclei?", "answer": np.int64(3)},
            {"image": "test_0002", "question": "What is present?"},
            None]
    (pvqa / "qas" / "test" / "test_qa.pkl").write_bytes(pickle.dumps(rows, protocol=protocol))
    data = load_benchmark("pathvqa", pvqa)
    assert [(i.question, i.answer, i.answer_type) for i in data.items] == [
        ("Is this adipose tissue?", "yes", "closed"), ("How many nuclei?", "3", "open")]
    assert type(data.items[0].meta["image_id"]) is str
    assert [r["reason"] for r in data.rejects] == ["no_answer", "malformed_row"]


def test_pathvqa_pickle_of_a_numpy_array_is_still_refused(tmp_path):
    pvqa = copy_fixture("pathvqa", tmp_path) / "pvqa"
    (pvqa / "qas" / "test" / "test_qa.pkl").write_bytes(pickle.dumps([{"image": np.array([1, 2])}]))
    with pytest.raises(BenchmarkError, match="only plain data"):
        load_benchmark("pathvqa", pvqa)


@pytest.mark.shared_data
def test_real_slake_file_with_broken_rows(shared_dir, tmp_path):
    """The real SLAKE validate file with a null row and an answerless row added: both rejected, the rest read."""
    rows = json.loads((shared_dir / "data" / "slake-questions" / "validate.json").read_text(encoding="utf-8"))
    english = [r for r in rows if r["q_lang"] == "en"]
    broken = [None, {k: v for k, v in english[0].items() if k != "answer"}, *english[1:]]
    (tmp_path / "validate.json").write_text(json.dumps(broken, ensure_ascii=False), encoding="utf-8")
    data = load_benchmark("slake", tmp_path, split="validate")
    assert [r["reason"] for r in data.rejects] == ["malformed_row", "no_answer"]
    assert len(data) == len(english) - 1


@pytest.mark.shared_data
def test_real_vqa_rad_file_without_phrase_type(shared_dir, tmp_path, medvl):
    rows = json.loads((shared_dir / "data" / "vqa-rad" / "VQA_RAD Dataset Public.json").read_text())
    (tmp_path / "VQA_RAD Dataset Public.json").write_text(json.dumps(
        [{k: v for k, v in row.items() if k != "phrase_type"} for row in rows]))
    result = medvl("eval", "inspect", "vqa_rad", tmp_path)
    assert result.code == 2 and "no row has a phrase_type" in result.err and result.err.count("\n") == 1


@pytest.mark.shared_data
def test_real_vqa_rad_rows_with_lists_objects_and_numbers(shared_dir, tmp_path, medvl):
    """Fields of the wrong JSON type in the real file: a list question, an object answer, a numeric image
    name. The first two are rejects (`bad_question`, `bad_answer`), never "['...']" as text; the number
    is a file name like any other; none is a traceback."""
    rows = json.loads((shared_dir / "data" / "vqa-rad" / "VQA_RAD Dataset Public.json").read_text())
    test = [row for row in rows if row["phrase_type"] in ("test_freeform", "test_para")]
    test[0]["question"], test[1]["answer"], test[2]["image_name"] = [test[0]["question"]], {"a": 1}, 5
    (tmp_path / "VQA_RAD Dataset Public.json").write_text(json.dumps(test))
    data = load_benchmark("vqa_rad", tmp_path)
    assert sorted(r["reason"] for r in data.rejects) == ["bad_answer", "bad_question"]
    assert len(data) == len(test) - 2 and str(test[2]["qid"]) in data.missing_images
    assert all(not item.question.startswith("[") for item in data.items)


def test_inspect_of_a_split_whose_every_row_is_rejected_exits_2(tmp_path, medvl):
    root = copy_fixture("slake", tmp_path)
    rewrite_json(root / "test.json", lambda rows: [{k: v for k, v in row.items() if k != "question"} for row in rows])
    result = medvl("eval", "inspect", "slake", root, "--option", "lang=all")
    assert "rows could not be read" in result.out  # the summary still says why
    assert result.code == 2 and result.err.count("\n") == 1 and "no usable question" in result.err
