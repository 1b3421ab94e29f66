"""medvl's metrics and choice extraction, the reference re-implementations, and the scorers, on tricky strings."""

from __future__ import annotations

import pytest

from medvl.benchmarks.prompts import CHOICE_INSTRUCTION, choice_prompt
from medvl.eval.choice import extract_choice
from medvl.eval.compat import (
    llava_med_candidate_hit,
    llava_med_exact_match_score,
    llava_med_f1,
    llava_med_normalize_word,
    llava_med_recall,
    match_choice3,
)
from medvl.eval.metrics import (
    closed_correct,
    exact_match,
    leading_yes_no,
    normalize_answer,
    token_f1,
    token_recall,
)
from medvl.eval.scorers import score_records


@pytest.mark.parametrize("prediction, expected", [
    ("No", True), ("no.", True), ("**No**", True), ("No, the lungs are clear.", True), ("Answer: no", True),
    ("normal", False), ("not", False), ("node", False), ("Nothing abnormal", False), ("There is no mass", False),
    ("Yes", False), ("", False),
])
def test_closed_yes_no_is_strict(prediction, expected):
    assert closed_correct(prediction, "No") is expected


def test_closed_yes_no_leading_word_and_chinese():
    assert leading_yes_no("Yes, there is a large effusion.") == "yes"
    assert leading_yes_no("The answer is yes") == "yes"
    assert closed_correct("是的，肺部有病变", "包含") and closed_correct("不是", "没有")
    assert not closed_correct("是的", "不是")


def test_closed_non_yes_no_answers():
    assert closed_correct("CT", "CT") and closed_correct("CT scan of the abdomen", "ct")
    assert closed_correct("The answer is left.", "Left")
    assert not closed_correct("It is not a CT", "CT")  # the answer must lead, not merely appear


def test_open_metrics():
    assert normalize_answer("The X-ray shows two masses!") == "x ray shows 2 masses"
    assert exact_match("Left lung.", "left lung") and not exact_match("the left lung base", "left lung")
    assert token_recall("left left left", "left lung") == 0.5  # repeats do not inflate (LLaVA-Med: 0.75)
    assert token_recall("the left lung base", "left lung") == 1.0
    assert token_f1("left lung base", "left lung") == pytest.approx(0.8)
    assert token_recall("", "left lung") == 0.0 and token_f1("", "left lung") == 0.0
    assert token_recall("右肺上叶", "右肺") == 1.0  # Chinese split into characters


OPTIONS = ["Pneumonia", "No pneumonia", "Pleural effusion", "Normal"]


@pytest.mark.parametrize("output, letter, method", [
    ("B", "B", "letter"), ("(B)", "B", "letter"), ("**C**", "C", "letter"), ("B.", "B", "letter"),
    ("答案是B", "B", "letter"), ("The answer is (D).", "D", "letter"), ("C) Pleural effusion", "C", "letter"),
    ("Because of the consolidation", None, "none"),  # letters inside words never count
    ("The answer is a mass", None, "none"),  # article, not option A
    ("E", None, "none"),  # beyond the four options
    ("There is no pneumonia", "B", "text"),  # overlapping options: the longer match wins
    ("pneumonia", "A", "text"),
    ("normal or pneumonia", None, "none"),  # two unrelated matches are ambiguous
    ("Pleural efusion", "C", "similarity"),
    ("", None, "none"),
])
def test_extract_choice(output, letter, method):
    parse = extract_choice(output, OPTIONS)
    assert (parse.letter, parse.method) == (letter, method)


def test_choice_prompt_is_huatuo_format():
    assert choice_prompt("Which?", ["x", "y"]) == f"Which?\nA. x\nB. y\n{CHOICE_INSTRUCTION}"
    assert CHOICE_INSTRUCTION == "Answer with the option's letter from the given choices directly."


def test_llava_med_normalisation_quirks():
    assert llava_med_normalize_word("Yes, there is a mass (left).") == "yes there is mass left"
    assert llava_med_normalize_word("x-ray") == "x ray" and llava_med_normalize_word("x - ray") == "x ray"
    assert llava_med_normalize_word("two lesions") == "2 lesions" and llava_med_normalize_word("dont") == "don't"
    many = " ".join(["a."] * 40)
    assert llava_med_normalize_word(many + " b.").count(".") == 9  # only 32 periods stripped


def test_llava_med_metric_quirks():
    assert llava_med_recall("left left left", "left lung") == pytest.approx(0.75)
    assert llava_med_f1("left lung", "left lung") == (1.0, 1.0, 1.0)
    assert llava_med_exact_match_score("the left lung is fine", "left lung") == 0.5  # not exact match
    assert llava_med_candidate_hit("in the left lung", "left lung", ["right lung", "left lung", "lung"]) == 1.0
    assert llava_med_candidate_hit("in the left lung", "left lung", ["lung", "left lung"]) == 0.0  # first max wins


def test_match_choice3_reproduces_reference_behaviour():
    options = {"A": "Pneumonia", "B": "Normal"}
    assert match_choice3("I think the answer is B", options) == ("I", 1)  # "I" is a letter a–n
    assert match_choice3("答案是B", options) == ("B", 1)
    assert match_choice3("pneumonia, not normal", options) == ("B", 2)  # the last-occurring option text
    assert match_choice3("b", options) == ("b", 1)  # lower case: scored wrong against "B"
    assert match_choice3("", options)[1] == 3  # always answers something


def record(answer, output, kind, options=(), **meta):
    return {"id": str(len(output) + hash(answer) % 1000), "answer": answer, "output": output, "answer_type": kind,
            "options": list(options), "meta": meta, "benchmark": "fixture"}


def test_scorers_disagree_where_the_reference_is_lenient():
    records = [record("no", "normal", "closed"), record("no", "yes, but not much", "closed"),
               record("no", "Yes", "closed"), record("yes", "Yes.", "closed"),
               record("left lung", "left left left", "open")]
    for i, r in enumerate(records):
        r["id"] = str(i)
    medvl = score_records(records, "medvl")
    assert [s.correct for s in medvl.items] == [False, False, False, True, False]
    assert medvl.summary["closed"]["yes_no_accuracy"] == pytest.approx(1 / 4)
    assert medvl.summary["closed"]["yes_no_unanswered_rate"] == pytest.approx(1 / 4)
    assert medvl.summary["open"]["token_recall"] == 0.5
    run_eval = score_records(records, "llava_med_run_eval", candidates=["left lung", "right lung"])
    # "no" inside "normal" and "not" counts as no; the plain miss ("Yes" for "no") is a miss (v1.0.0)
    assert [s.correct for s in run_eval.items] == [True, True, False, True, True]
    assert run_eval.summary["yes/no accuracy"] == 0.75
    assert run_eval.summary["recall"] == pytest.approx(0.75)
    batch = score_records(records, "llava_med_run_eval_batch")
    assert [s.correct for s in batch.items] == [True, True, False, True, False]


def test_choice_scorers_and_parse_failures():
    options = ["CT", "MRI", "X-ray"]
    records = [record("MRI", "B", "choice", options, dataset="D1"), record("MRI", "I'd say MRI", "choice", options,
               dataset="D1"), record("CT", "no idea", "choice", options, dataset="D2"),
               record("CT", "", "choice", options, dataset="D2", question_type="open")]
    for i, r in enumerate(records):
        r["id"] = str(i)
    medvl = score_records(records, "medvl")
    assert [s.correct for s in medvl.items] == [True, True, False, False]
    assert medvl.summary["choice"]["parse_failure_rate"] == 0.5
    huatuo = score_records(records, "huatuo_match_choice3")
    assert [s.correct for s in huatuo.items] == [True, False, False, None]  # "I'd" → letter I; open skipped
    assert huatuo.summary["D1"] == 0.5 and huatuo.summary["question_number"] == 3
    assert huatuo.summary["reference_would_crash"] == 1  # "no idea" needs stage 2+, which crashes the reference
    with pytest.raises(ValueError, match="unknown scorer"):
        score_records(records, "vqa")
