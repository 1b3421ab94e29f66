"""bench/vqa_rad_image_prior.py: the image-recognising rule that bounds what VQA-RAD's images add."""

from __future__ import annotations

from pathlib import Path

import pytest

from medvl.benchmarks.base import VQAItem

VQA_RAD = Path(__file__).resolve().parents[2] / "data" / "vqa-rad"


def _item(image: str, answer: str) -> VQAItem:
    return VQAItem(id=f"{image}-{answer}", benchmark="vqa_rad", split="train", question="q", answer=answer,
                   answer_type="closed", images=[image])


def test_an_image_leans_by_its_yes_no_answers_and_a_tie_leans_nowhere(vqa_rad_image_prior):
    train = [_item("a", "Yes"), _item("a", "yes"), _item("a", "No"), _item("b", "no"), _item("c", "yes"),
             _item("c", "No"), _item("d", "left"), _item("e", "no.")]
    leans, overall = vqa_rad_image_prior.image_leans(train)
    assert leans == {"a": "yes", "b": "no", "e": "no"} and overall == "no"  # 4 no against 3 yes


def test_the_rule_on_the_vendored_split(vqa_rad_image_prior):
    if not VQA_RAD.is_dir():
        pytest.skip("data/vqa-rad not vendored in this checkout")
    hits, leans, yes_no, _, _ = vqa_rad_image_prior.rule_scores(VQA_RAD)
    # the figures docs/model.md quotes: 161 of 251 with the image's own train answers, 130 with the shuffled one
    assert (len(yes_no), sum(hits["own"]), sum(hits["shuffled"])) == (251, 161, 130)
    assert len(leans) == 265


def test_the_rule_overrides_only_yes_no_answers_of_the_question_only_run(vqa_rad_image_prior, tmp_path, capsys):
    test = [_item("a", "yes"), _item("b", "no"), _item("a", "left")]
    predictions = tmp_path / "eval" / "open_closed-question_only" / "predictions.jsonl"
    predictions.parent.mkdir(parents=True)
    predictions.write_text("".join(f'{{"id": "{item.id}", "output": "{said}"}}\n'
                                   for item, said in zip(test, ("No", "No", "left"))))
    donors = {test[0].id: test[1], test[1].id: test[0], test[2].id: test[1]}
    vqa_rad_image_prior.on_question_only(tmp_path, {"a": "yes", "b": "no"}, test, donors)
    out = capsys.readouterr().out
    # own image: yes (lean of a) right, no right, "left" kept right; shuffled: no wrong, yes wrong, left right
    assert "3 closed questions: own image 100.0, shuffled 33.3, question-only 66.7" in out
