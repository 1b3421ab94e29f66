"""Intervals and paired tests: hand-computed values, determinism, and item-by-item run comparison."""

from __future__ import annotations

import math

import pytest

from medvl.eval.compare import ItemSetMismatch, compare_records
from medvl.eval.stats import bootstrap_mean_interval, mcnemar_exact, paired_bootstrap_difference, wilson_interval


def test_mcnemar_exact_on_a_hand_computed_table():
    # paired 2x2 table: both right 40, A only 1, B only 7, both wrong 12. Under H0 the 8 discordant
    # pairs split as Binomial(8, 1/2): P(X <= 1) = (1 + 8) / 256, two-sided p = 18/256
    assert mcnemar_exact(1, 7) == pytest.approx(18 / 256, abs=1e-12)
    assert mcnemar_exact(7, 1) == pytest.approx(18 / 256, abs=1e-12)
    # 10 vs 0: 2 * (1/2)^10
    assert mcnemar_exact(10, 0) == pytest.approx(2 / 1024, abs=1e-12)
    assert mcnemar_exact(3, 3) == 1.0 and mcnemar_exact(0, 0) == 1.0


def test_wilson_interval_by_hand():
    # 147 of 272 (LLaVA-Med v1.0.0's closed accuracy on the issue's predictions)
    p, n, z = 147 / 272, 272, 1.959963984540054
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    low, high = wilson_interval(147, 272)
    assert (low, high) == (pytest.approx(centre - half, abs=1e-9), pytest.approx(centre + half, abs=1e-9))
    assert wilson_interval(0, 10)[0] == 0.0 and wilson_interval(10, 10)[1] == pytest.approx(1.0)
    assert wilson_interval(0, 0) is None


def test_bootstrap_is_seeded_and_brackets_the_mean():
    values = [(i * 37 % 101) / 100 for i in range(80)]
    low, high = bootstrap_mean_interval(values)
    assert low < sum(values) / len(values) < high and 0.0 <= low and high <= 1.0
    assert bootstrap_mean_interval(values) == (low, high)  # the same values always give the same interval
    assert bootstrap_mean_interval(values, seed=1) != (low, high)
    assert bootstrap_mean_interval([]) is None and bootstrap_mean_interval([0.3, 0.3]) == (0.3, 0.3)
    difference, (d_low, d_high) = paired_bootstrap_difference([1.0, 1.0, 0.0, 1.0] * 20, [0.0, 1.0, 0.0, 0.0] * 20)
    assert difference == pytest.approx(0.5) and 0.3 < d_low < 0.5 < d_high < 0.7
    with pytest.raises(ValueError, match="equal lengths"):
        paired_bootstrap_difference([1.0], [])


def record(item_id, kind, answer, correct, recall=None, scorer="medvl"):
    metrics = {"token_recall": recall, "token_f1": recall} if recall is not None else {}
    return {"id": item_id, "answer_type": kind, "answer": answer, "correct": correct, "metrics": metrics,
            "scorer": scorer}


def two_runs():
    # closed yes/no: A right on 0-8, B right on 0-1 and 9 -> A only 7, B only 1 (the McNemar table above)
    a = [record(str(i), "closed", "yes", i < 9) for i in range(10)]
    b = [record(str(i), "closed", "yes", i in (0, 1, 9)) for i in range(10)]
    a += [record(f"o{i}", "open", "left lung", i == 0, recall=1.0 if i < 3 else 0.5) for i in range(6)]
    b += [record(f"o{i}", "open", "left lung", False, recall=0.5) for i in range(6)]
    return a, b


def test_compare_records_pairs_by_id():
    a, b = two_runs()
    comparison = compare_records(a, list(reversed(b)))  # order does not matter, ids do
    found = {d.metric: d for d in comparison.differences}
    closed = found["closed accuracy"]
    assert (closed.n, closed.a, closed.b, closed.a_only, closed.b_only) == (10, 0.9, 0.3, 7, 1)
    assert closed.p_value == pytest.approx(18 / 256) and not closed.significant  # p = 0.07
    assert found["yes/no accuracy"].p_value == closed.p_value
    recall = found["open token_recall"]
    assert recall.kind == "mean" and recall.difference == pytest.approx(0.25) and recall.p_value is None
    assert recall.interval[0] > 0 and recall.significant
    assert found["open exact match"].a_only == 1 and found["overall accuracy"].n == 16
    assert comparison.to_dict()["differences"][0]["significant"] is False


def test_compare_records_refuses_different_items_unless_asked():
    a, b = two_runs()
    with pytest.raises(ItemSetMismatch, match="1 only in the first"):
        compare_records(a, b[1:])
    partial = compare_records(a, b[1:], common_items=True)
    assert partial.paired == 15 and partial.only_a == ["0"]
    changed = [dict(r, answer="no") if r["id"] == "3" else r for r in b]
    with pytest.raises(ItemSetMismatch, match="not the same benchmark"):
        compare_records(a, changed, common_items=True)
    with pytest.raises(ItemSetMismatch, match="different scorers"):
        compare_records(a, [dict(r, scorer="llava_med_run_eval") for r in b])
