"""Benchmark train splits → conversations, with LLaVA-Med's candidate answers in closed prompts."""

from __future__ import annotations

import json

import pytest

from medvl.benchmarks.base import VQAItem
from medvl.records import record_problems
from medvl.train.convert import convert_items, item_to_record


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


def test_missing_images_go_to_the_rejects(tmp_path):
    items = [item("open", "a", id="1"), item("open", "b", id="2")]
    result = convert_items(items, tmp_path / "out.jsonl", missing=["2"])
    assert (result.written, result.rejected) == (1, 1)
    records = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [r["id"] for r in records] == ["toy-train-1"] and not record_problems(records[0])
    reject = json.loads((tmp_path / "out.rejects.jsonl").read_text())
    assert (reject["id"], reject["reason"]) == ("2", "missing_image")


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
