"""Concept questions from a split's own labels: facts per image, balance, determinism, real VQA-RAD."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from medvl.benchmarks import VQAItem
from medvl.train.concepts import concept_items, description, image_facts

VQA_RAD = Path(__file__).resolve().parents[2] / "data" / "vqa-rad"


def item(image: str, question: str, answer: str, question_type: str = "PRES", organ: str = "HEAD",
         answer_type: str = "closed", **meta: str) -> VQAItem:
    return VQAItem(id=f"{image}-{question}", benchmark="toy", split="train", question=question, answer=answer,
                   answer_type=answer_type, images=[f"/img/{image}.jpg"],
                   meta={"question_type": question_type, "organ": organ, **meta})


TOY = [
    item("a", "What type of imaging is this?", "MRI - T2 weighted", "MODALITY", answer_type="open"),
    item("a", "Is this a CT?", "No", "MODALITY"),
    item("a", "In what plane is this image?", "Axial", "PLANE", answer_type="open"),
    item("b", "Is this a CT image?", "yes", "MODALITY", organ="ABD"),
    item("b", "What type of imaging does this not represent?", "ultrasound", "MODALITY", organ="ABD",
         answer_type="open"),
    item("c", "What kind of scan is this?", "CT", "MODALITY", organ="CHEST", answer_type="open"),
    item("c", "What type of image is this?", "Chest x-ray", "MODALITY", organ="CHEST", answer_type="open"),
    item("d", "Is there a mass?", "yes", organ="Lung", modality="X-Ray"),
]


def test_facts_come_from_metadata_and_answers_and_ties_are_left_out():
    facts, stats = image_facts(TOY)
    assert facts["/img/a.jpg"] == {"organ": "head", "modality": "MRI", "plane": "axial"}
    assert facts["/img/b.jpg"] == {"organ": "abdomen", "modality": "CT"}  # the negated question is skipped
    assert facts["/img/c.jpg"] == {"organ": "chest"} and stats.conflicts["modality"] == 1  # CT vs X-ray: a tie
    assert facts["/img/d.jpg"] == {"organ": "lung", "modality": "X-ray"}  # SLAKE-style metadata
    assert stats.labelled == {"organ": 4, "modality": 3, "plane": 1}


def test_each_fact_gives_a_yes_a_no_about_another_label_and_an_open_question():
    items, stats = concept_items(TOY, "toy", seed=3)
    by_image = Counter((i.images[0], i.meta["concept"]) for i in items)
    facts, _ = image_facts(TOY)
    # plane has a single label in the whole split: nothing to contrast, so no plane questions
    expected = {(image, a) for image, known in facts.items() for a in known if a != "plane"}
    assert set(by_image) == expected and set(by_image.values()) == {3}
    assert stats.questions == len(items) == 3 * len(expected)
    for image, attribute in expected:
        asked = [i for i in items if (i.images[0], i.meta["concept"]) == (image, attribute)]
        assert sorted(i.answer for i in asked if i.answer_type == "closed") == ["no", "yes"]
        assert [i.answer for i in asked if i.answer_type == "open"] == [facts[image][attribute]]
    mri = [i for i in items if i.images[0] == "/img/a.jpg" and i.meta["concept"] == "modality"]
    assert any("MRI" in i.question and i.answer == "yes" for i in mri)
    assert any("MRI" not in i.question and i.answer == "no" for i in mri)


def test_same_seed_same_questions():
    first, _ = concept_items(TOY, "toy", seed=1)
    assert first == concept_items(TOY, "toy", seed=1)[0]
    assert len({i.id for i in first}) == len(first)


def test_description():
    assert description({"organ": "abdomen", "modality": "CT", "plane": "axial"}) == "Axial CT of the abdomen."
    assert description({"organ": "chest"}) == "Image of the chest."
    assert description({}) is None


@pytest.mark.skipif(not VQA_RAD.is_dir(), reason="the vendored VQA-RAD release is absent")
def test_vqa_rad_train_split_gives_balanced_questions_about_its_own_images():
    from medvl.benchmarks import load_benchmark

    train = load_benchmark("vqa_rad", VQA_RAD, split="train").items
    items, stats = concept_items(train, "vqa_rad")
    assert stats.labelled["organ"] == stats.images == len({i.images[0] for i in train})
    assert stats.labelled["modality"] >= 60 and stats.labelled["plane"] >= 50
    assert set(stats.labels["modality"]) == {"CT", "MRI", "X-ray"}
    answers = Counter(i.answer for i in items if i.answer_type == "closed")
    assert answers["yes"] == answers["no"] > 300
    assert {i.images[0] for i in items} <= {i.images[0] for i in train}


@pytest.mark.skipif(not VQA_RAD.is_dir(), reason="the vendored VQA-RAD release is absent")
def test_data_convert_concepts_appends_them_to_the_split(tmp_path):
    from typer.testing import CliRunner

    from medvl.cli import build_app
    from medvl.io.jsonl import read_records

    plain, more = tmp_path / "plain.jsonl", tmp_path / "concepts.jsonl"
    runner, app = CliRunner(), build_app()
    assert runner.invoke(app, ["data", "convert", "vqa_rad", str(VQA_RAD), "--out", str(plain)]).exit_code == 0
    result = runner.invoke(app, ["data", "convert", "vqa_rad", str(VQA_RAD), "--out", str(more), "--concepts"])
    assert result.exit_code == 0, result.output
    base, extended = read_records(plain), read_records(more)
    assert extended[:len(base)] == base
    added = extended[len(base):]
    assert added and all(r["benchmark"] == "vqa_rad-concepts" for r in added)
    assert any(r["conversations"][0]["value"].endswith("Please choose from the following two options: [yes, no].")
               for r in added)
