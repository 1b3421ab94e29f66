"""LLaVA-Med compatibility scorers against hand-checked predictions, to 1e-6.

Each expected number below was worked out by hand from LLaVA-Med v1.0.0's `run_eval.py` /
`run_eval_batch.py` rules (normalize_word, calculate_exactmatch, calculate_f1score,
calculate_appearance_with_normalization, nltk sentence_bleu); the comments show the working.
"""

from __future__ import annotations

import math

import pytest

from medvl.eval.compat import llava_med_bleu
from medvl.eval.scorers import score_records

CANDIDATES = ["right lung", "left lung", "lung"]


def records() -> list[dict]:
    rows = [
        # closed: (reference, output) -> normalised prediction; v1.0.0 / pre-fix / batch
        ("no", "normal", "closed"),  # "normal": has "no", "no" in it -> hit / hit / hit
        ("no", "Yes, but not much", "closed"),  # "yes but not much": "no" inside "not" -> hit everywhere
        ("no", "Yes", "closed"),  # "yes": has yes, no "no" -> miss / dropped / miss
        ("yes", "Yes.", "closed"),  # "yes" -> hit
        ("left", "the right side", "closed"),  # "right side": neither yes nor no -> miss / miss / miss
        ("CT", "It is a CT scan, not MRI", "closed"),  # "it is ct scan not mri" -> hit everywhere
        # open
        ("left lung", "left left left", "open"),
        ("left lung base", "In the left lung.", "open"),  # -> "in left lung"
        ("CT", "B", "choice"),  # not scored by LLaVA-Med's scripts
    ]
    return [{"id": str(i), "answer": answer, "output": output, "answer_type": kind, "question": "?",
             "options": ["MRI", "CT"] if kind == "choice" else [], "meta": {}}
            for i, (answer, output, kind) in enumerate(rows)]


# open item 1: pred {left: 3}, ref {left, lung}: tp 3, fp 0, fn 1 -> P 1, R 3/4, F1 6/7;
#   exact match score 1 distinct ref word / 3 pred words; BLEU p1 = 1/3 (clipped), p2 = p3 = 0, BP 1;
#   candidate scores 0/2, 1/2, 0/1 -> "left lung" == reference -> hit.
# open item 2: pred {in, left, lung}, ref {left, lung, base}: tp 2, fp 1, fn 1 -> P = R = F1 = 2/3;
#   exact match score 2/3; BLEU p1 2/3, p2 1/2 ((left lung) matches), p3 0, BP 1;
#   candidate scores 1/2, 2/2, 1/1 -> first maximum "left lung" != "left lung base" -> miss.
OPEN = {"num_open": 2, "exact match score": (1 / 3 + 2 / 3) / 2, "f1 score": (6 / 7 + 2 / 3) / 2,
        "precision": (1 + 2 / 3) / 2, "recall": (3 / 4 + 2 / 3) / 2, "bleu_score": 0.0,
        "bleu_score_1": (1 / 3 + 2 / 3) / 2, "bleu_score_2": (0 + 1 / 2) / 2, "bleu_score_3": 0.0, "not_scored": 1}


def check(summary: dict, expected: dict) -> None:
    for key, value in expected.items():
        assert summary[key] == pytest.approx(value, abs=1e-6), key


def test_run_eval_v1_0_0_counts_a_yes_no_miss():
    result = score_records(records(), "llava_med_run_eval", candidates=CANDIDATES)
    assert [s.correct for s in result.items] == [True, True, False, True, False, True, True, False, None]
    check(result.summary, {**OPEN, "num_closed": 6, "yes/no accuracy": 4 / 6, "open accuracy": 1 / 2})
    assert "b9a98a7" in result.summary["rule"] and "closed_dropped" not in result.summary


def test_run_eval_before_b9a98a7_drops_the_miss():
    result = score_records(records(), "llava_med_run_eval_pre_b9a98a7", candidates=CANDIDATES)
    assert [s.correct for s in result.items][:6] == [True, True, None, True, False, True]
    check(result.summary, {**OPEN, "num_closed": 6, "yes/no accuracy": 4 / 5, "closed_dropped": 1})


def test_run_eval_batch_substring_rules_and_closed_recall():
    result = score_records(records(), "llava_med_run_eval_batch")
    assert [s.correct for s in result.items] == [True, True, False, True, False, True, False, False, None]
    # closed recall: only "yes"/"yes" and "ct" inside "it is ct scan not mri" share a word -> 2 of 6 items
    check(result.summary, {**OPEN, "num_closed": 6, "yes/no accuracy": 4 / 6, "open accuracy": 0.0,
                           "recall_closed": 2 / 6})


def test_nothing_scored_is_null_not_zero():
    only_choice = [r for r in records() if r["answer_type"] == "choice"]
    for name in ("llava_med_run_eval", "llava_med_run_eval_pre_b9a98a7", "llava_med_run_eval_batch"):
        summary = score_records(only_choice, name).summary
        assert summary["num_closed"] == summary["num_open"] == 0
        assert summary["yes/no accuracy"] is None and summary["recall"] is None and summary["bleu_score_1"] is None
    open_only = [r for r in records() if r["answer_type"] == "open"]
    summary = score_records(open_only, "llava_med_run_eval").summary
    assert summary["open accuracy"] is None and "candidate.json" in summary["open accuracy note"]


def test_bleu_sees_once_normalised_lower_case_words():
    # "left lung" vs "left lung base": p1 = p2 = 1, brevity penalty exp(1 - 3/2)
    bleu = llava_med_bleu("Left lung", "left lung base")
    assert bleu["bleu_score_1"] == pytest.approx(math.exp(-0.5), abs=1e-9)
    assert bleu["bleu_score_2"] == pytest.approx(math.exp(-0.5), abs=1e-9)
    assert bleu["bleu_score_3"] < 1e-300 and bleu["bleu_score"] < 1e-100  # no trigram: nltk's unsmoothed floor
    # the article and the period go, the case goes, so the three words match exactly; four-grams do not exist
    same = llava_med_bleu("The left lung base.", "left lung base")
    assert [same[k] for k in ("bleu_score_1", "bleu_score_2", "bleu_score_3")] == [1.0, 1.0, 1.0]
    assert llava_med_bleu("v w x y z", "V W X Y Z")["bleu_score"] == pytest.approx(1.0)
    assert llava_med_bleu("", "left lung") == dict.fromkeys(same, 0.0)
