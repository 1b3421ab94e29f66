"""Benchmark train splits → conversations, with LLaVA-Med's candidate answers in closed prompts."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from medvl.benchmarks.base import VQAItem
from medvl.records import record_problems
from medvl.train.convert import NothingConverted, convert_items, item_to_record

FIXTURES = Path(__file__).parents[1] / "eval" / "fixtures"  # release-shaped benchmark files


def item(answer_type: str, answer: str, options: list[str] | None = None, question: str = "Is it normal?",
         images: list[str] | None = None, id: str = "1") -> VQAItem:
    return VQAItem(id=id, benchmark="toy", split="train", question=question, answer=answer,
                   answer_type=answer_type, images=images or ["/x/1.jpg"], options=options or [])


def turns(record: dict) -> tuple[str, str]:
    return record["conversations"][0]["value"], record["conversations"][1]["value"]


def test_closed_yes_no_gets_the_two_candidates_and_a_normalised_answer():
    question, answer = turns(item_to_record(item("closed", "Yes ")))
    assert question == "<image>\nIs it normal? Please choose from the following two options: [yes, no]."
    assert answer == "yes"


def test_closed_with_its_own_options_and_without_options():
    record = item_to_record(item("closed", "left", ["left", "right"], question="Which side?"))
    assert turns(record) == ("<image>\nWhich side? Please choose from the following two options: [left, right].",
                             "left")
    assert turns(item_to_record(item("closed", "Yes"), with_options=False)) == ("<image>\nIs it normal?", "Yes")
    # a closed question with no options and a non yes/no answer stays as asked
    assert turns(item_to_record(item("closed", "left", question="Left or right?"))) == ("<image>\nLeft or right?", "left")


def test_open_and_choice_items():
    assert turns(item_to_record(item("open", " pneumonia ", question="What is seen?"))) == (
        "<image>\nWhat is seen?", "pneumonia")
    question, answer = turns(item_to_record(item("choice", "CT", ["MRI", "CT", "X-ray"], question="Modality?")))
    assert question == ("<image>\nModality?\nA. MRI\nB. CT\nC. X-ray\n"
                        "Answer with the option's letter from the given choices directly.")
    assert answer == "B"


def read_lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_missing_images_go_to_the_rejects(tmp_path):
    items = [item("open", "a", id="1"), item("open", "b", id="2")]
    result = convert_items(items, tmp_path / "out.jsonl", missing=["2"])
    assert (result.written, result.rejected) == (1, 1)
    records = read_lines(tmp_path / "out.jsonl")
    assert [r["id"] for r in records] == ["toy-train-1"] and not record_problems(records[0])
    reject = json.loads((tmp_path / "out.rejects.jsonl").read_text())
    assert (reject["id"], reject["reason"]) == ("2", "missing_image")
    with pytest.raises(NothingConverted, match="nothing converted.*1 rejected \\(missing_image 1\\)"):
        convert_items(items[1:], tmp_path / "none.jsonl", missing=["2"])
    assert not (tmp_path / "none.jsonl").exists() and read_lines(tmp_path / "none.rejects.jsonl")[0]["id"] == "2"


def test_rows_the_loader_could_not_read_are_written_and_counted_per_reason(tmp_path, medvl):
    source = Path(shutil.copytree(FIXTURES / "llava", tmp_path / "llava")) / "eval.jsonl"  # 3 good rows, 2 bad
    out, rejects = tmp_path / "out" / "train.jsonl", tmp_path / "out" / "train.rejects.jsonl"
    for _ in range(2):  # a rerun rewrites the rejects file, it does not append to it
        result = medvl("data", "convert", "llava_jsonl", source, "--out", out)
        assert result.code == 0, result
        assert result.out == (f"3 conversations written to {out}; 2 rejected (bad_json 1, malformed_record 1) "
                              f"in {rejects}\n")
        assert sorted((r["id"], r["reason"]) for r in read_lines(rejects)) == [
            ("bad", "malformed_record"), ("line-5", "bad_json")]
    assert len(read_lines(out)) == 3


def test_a_conversion_that_writes_nothing_says_so_and_exits_2(tmp_path, medvl):
    root = Path(shutil.copytree(FIXTURES / "slake", tmp_path / "slake"))
    shutil.rmtree(root / "imgs")  # the questions without their images, as ../shared/data/slake-questions
    out = tmp_path / "slake_train.jsonl"
    result = medvl("data", "convert", "slake", root, "--split", "train", "--out", out)
    assert result.code == 2 and result.out == ""
    assert result.err.startswith("error: nothing converted") and result.err.count("\n") == 1
    assert "1 rejected (missing_image 1)" in result.err and str(tmp_path / "slake_train.rejects.jsonl") in result.err
    assert not out.exists() and [r["reason"] for r in read_lines(tmp_path / "slake_train.rejects.jsonl")] == [
        "missing_image"]


def test_an_output_that_is_one_of_the_inputs_is_refused(tmp_path, medvl):
    source = Path(shutil.copytree(FIXTURES / "llava", tmp_path / "llava")) / "eval.jsonl"
    slake = Path(shutil.copytree(FIXTURES / "slake", tmp_path / "slake"))
    before = source.read_bytes(), (slake / "train.json").read_bytes()
    for args in (["llava_jsonl", source, "--out", source.parent / "img" / ".." / "eval.jsonl"],
                 ["slake", slake, "--split", "train", "--out", slake / "train.json"]):
        result = medvl("data", "convert", *args)
        assert result.code == 2 and "would overwrite the input" in result.err and "choose another --out" in result.err
    assert (source.read_bytes(), (slake / "train.json").read_bytes()) == before
    assert not list(tmp_path.rglob("*.rejects.jsonl"))


@pytest.mark.shared_data
def test_vqa_rad_train_split_converts_and_trains(shared_dir, tmp_path, tiny_model):
    from medvl.records import to_messages
    from medvl.train.convert import convert_benchmark
    from medvl.train.encode import ChatEncoder

    result = convert_benchmark("vqa_rad", shared_dir / "data" / "vqa-rad", tmp_path / "rad.jsonl")
    assert (result.written, result.rejected) == (1797, 0)  # 2,248 rows - 451 official test rows
    records = [json.loads(line) for line in (tmp_path / "rad.jsonl").read_text().splitlines()]
    closed = [r for r in records if r["answer_type"] == "closed"]
    yes_no = [r for r in closed if r["conversations"][1]["value"] in ("yes", "no")]
    assert len(yes_no) > 0.9 * len(closed)
    assert all(r["conversations"][0]["value"].endswith("[yes, no].") for r in yes_no)
    encoder = ChatEncoder(tiny_model[1], max_length=256)
    for record in records[:50]:
        assert encoder.encode(to_messages(record)).supervised >= 2
