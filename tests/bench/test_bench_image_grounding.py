"""bench/image_grounding.py: the held-out concept probe holds out whole images, asks balanced questions,
and pairs its controls question by question."""

from __future__ import annotations

from pathlib import Path

import pytest

VQA_RAD = Path(__file__).resolve().parents[2] / "data" / "vqa-rad"


def test_probe_images_are_never_trained_on_and_half_the_answers_are_yes(image_grounding):
    if not VQA_RAD.is_dir():
        pytest.skip("data/vqa-rad not vendored in this checkout")
    train, probe = image_grounding.split(VQA_RAD)
    train_images = {q.images[0] for q in train}
    probe_images = {q.images[0] for q in probe}
    assert not train_images & probe_images
    assert 0.15 < len(probe_images) / len(train_images | probe_images) < 0.25
    assert {q.answer for q in probe} == {"yes", "no"}
    assert sum(q.answer == "yes" for q in probe) * 2 == len(probe)
    assert image_grounding.split(VQA_RAD)[1] == probe  # the same split every run


def test_controls_are_paired_by_question(image_grounding):
    right = {"image": [True, True, True, False, True, True],
             "shuffled": [False, True, False, True, False, False],
             "no_image": [True, True, True, False, True, True]}
    table = image_grounding.score(right)
    assert table["n"] == 6 and table["image"]["accuracy"] == pytest.approx(5 / 6)
    assert table["shuffled"]["image_minus_this"] == pytest.approx((4 - 1) / 6)  # 4 only-image, 1 only-shuffled
    assert table["shuffled"]["mcnemar_p"] == pytest.approx(0.375)  # two-sided binomial, 1 of 5 discordant
    assert table["no_image"]["image_minus_this"] == 0 and table["no_image"]["mcnemar_p"] == 1.0
    low, high = table["image"]["ci95"]
    assert low < 5 / 6 < high
