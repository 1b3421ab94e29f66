"""Scorers by name: turn prediction records (item fields + raw `output`) into per-item and summary scores.

| name                       | what it computes                                                          |
|----------------------------|---------------------------------------------------------------------------|
| `medvl` (default)          | closed accuracy (strict leading yes/no), open exact match, token recall/precision/F1, choice accuracy with parse-failure rate |
| `llava_med_run_eval`       | LLaVA-Med v1.0.0 `run_eval.py`: closed needs a "yes"/"no" substring and the reference as a substring (anything else is a miss), open "accuracy" by candidate arg-max, "exact match score", count-inflated recall/precision/F1, BLEU |
| `llava_med_run_eval_pre_b9a98a7` | the same before LLaVA-Med commit b9a98a7: a closed miss with "yes"/"no" present is dropped from the denominator |
| `llava_med_run_eval_batch` | LLaVA-Med v1.0.0 `run_eval_batch.py`: closed and open are plain substring tests, plus the same open metrics and closed recall |
| `huatuo_match_choice3`     | HuatuoGPT-Vision `score_mix_llava`: choice items only, `match_choice3` extraction, per-dataset accuracy and "The total score for multiple-choice questions" |

Every scorer returns one `ItemScore` per record (`correct` is None where the scorer does not score
the item, with the reason in `method`) and a JSON-able summary whose values are fractions (0–1),
or null where nothing was scored.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from statistics import fmean
from typing import Any

from medvl.benchmarks.base import LETTERS, option_letter, yes_no_answer
from medvl.errors import UserError
from medvl.eval.choice import extract_choice
from medvl.eval.compat import (
    BLEU_WEIGHTS,
    llava_med_bleu,
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
    token_precision,
    token_recall,
)
from medvl.eval.stats import bootstrap_mean_interval, wilson_interval

__all__ = ["NEEDS_CANDIDATES", "SCORERS", "ItemScore", "ScoreResult", "UnknownScorer", "answer_letter",
           "score_records"]


class UnknownScorer(UserError, ValueError):
    """A scorer name that is not in `SCORERS`."""


@dataclass
class ItemScore:
    parsed: str | None
    correct: bool | None
    method: str = ""
    metrics: dict[str, float] = field(default_factory=dict)


@dataclass
class ScoreResult:
    scorer: str
    items: list[ItemScore]
    summary: dict[str, Any]


def answer_letter(record: dict[str, Any]) -> str | None:
    return option_letter(record.get("answer", ""), record.get("options") or [])


def _mean(values: Sequence[float]) -> float | None:
    return fmean(values) if values else None


def _rate(name: str, scores: Sequence[ItemScore]) -> dict[str, Any]:
    """`name`: the accuracy over the scored items, `name_ci`: its Wilson interval (both None when none)."""
    counted = [bool(s.correct) for s in scores if s.correct is not None]
    return {name: _mean([float(c) for c in counted]), f"{name}_ci": wilson_interval(sum(counted), len(counted))}


def _average(name: str, values: Sequence[float]) -> dict[str, Any]:
    """`name`: the mean, `name_ci`: its bootstrap interval (both None when there are no values)."""
    return {name: _mean(values), f"{name}_ci": bootstrap_mean_interval(values)}


def _output(record: dict[str, Any]) -> str:
    return record.get("output") or ""


# --- medvl -------------------------------------------------------------------------------------

OPEN_METRICS = ("exact_match", "token_recall", "token_precision", "token_f1")


def _medvl_item(record: dict[str, Any]) -> ItemScore:
    output, reference, kind = _output(record), str(record["answer"]), record["answer_type"]
    if record.get("error"):  # a failed request is a wrong answer, with zero overlap on open items
        return ItemScore(None, False, "error", dict.fromkeys(OPEN_METRICS, 0.0) if kind == "open" else {})
    if kind == "choice":
        parse = extract_choice(output, record.get("options") or [])
        return ItemScore(parse.letter, parse.letter is not None and parse.letter == answer_letter(record), parse.method)
    if kind == "closed":
        yes_no = yes_no_answer(reference) is not None
        parsed = leading_yes_no(output) if yes_no else normalize_answer(output)
        return ItemScore(parsed, closed_correct(output, reference), "yes_no" if yes_no else "closed_other")
    metrics = {"exact_match": float(exact_match(output, reference)), "token_recall": token_recall(output, reference),
               "token_precision": token_precision(output, reference), "token_f1": token_f1(output, reference)}
    return ItemScore(normalize_answer(output), bool(metrics["exact_match"]), "open", metrics)


def _medvl(records: list[dict[str, Any]], candidates: Sequence[str] | None) -> ScoreResult:
    items = [_medvl_item(r) for r in records]
    by_method: dict[str, list[ItemScore]] = defaultdict(list)
    by_type: dict[str, list[ItemScore]] = defaultdict(list)
    for record, score in zip(records, items):
        by_type[record["answer_type"]].append(score)
        by_method[score.method].append(score)
        if record["answer_type"] == "closed":
            by_type["yes_no" if yes_no_answer(str(record["answer"])) else "closed_other"].append(score)
    summary: dict[str, Any] = {"scorer": "medvl", "items": len(items), "errors": len(by_method["error"]),
                               **_rate("overall_accuracy", items)}
    if by_type["closed"]:
        yes_no, other = by_type["yes_no"], by_type["closed_other"]
        summary["closed"] = {
            "n": len(by_type["closed"]), **_rate("accuracy", by_type["closed"]),
            "yes_no_n": len(yes_no), **_rate("yes_no_accuracy", yes_no),
            "yes_no_unanswered_rate": _mean([float(s.parsed is None) for s in yes_no]),
            "other_n": len(other), **_rate("other_accuracy", other),
        }
    if by_type["open"]:
        opened = by_type["open"]
        summary["open"] = {"n": len(opened), **_rate("exact_match", opened), **{
            key: value for name in OPEN_METRICS[1:] for key, value in
            _average(name, [s.metrics[name] for s in opened]).items()}}
    if by_type["choice"]:
        methods = Counter(s.method for s in by_type["choice"])
        summary["choice"] = {"n": len(by_type["choice"]), **_rate("accuracy", by_type["choice"]),
                             "parse_failure_rate": (methods["none"] + methods["error"]) / len(by_type["choice"]),
                             "parse_methods": dict(methods)}
    return ScoreResult("medvl", items, summary)


# --- LLaVA-Med ---------------------------------------------------------------------------------

LLAVA_MED_RULES = {
    "llava_med_run_eval": "LLaVA-Med v1.0.0 llava/eval/run_eval.py (after b9a98a7: a closed prediction with "
                          "yes/no but not the answer is a miss)",
    "llava_med_run_eval_pre_b9a98a7": "LLaVA-Med run_eval.py before b9a98a7 'fix closed accuracy calculation "
                                      "(#35)': such a miss is dropped from the denominator",
    "llava_med_run_eval_batch": "LLaVA-Med v1.0.0 llava/eval/run_eval_batch.py (substring tests)",
}
NEEDS_CANDIDATES = {"llava_med_run_eval", "llava_med_run_eval_pre_b9a98a7"}  # open accuracy by candidate arg-max
OPEN_KEYS = (("exact match score", "exact_match_score"), ("f1 score", "f1"), ("precision", "precision"),
             ("recall", "recall"), *((name, name) for name in BLEU_WEIGHTS))


def _llava_med_closed(name: str, record: dict[str, Any], pred: str, gt: str) -> ItemScore:
    """One closed item under the named LLaVA-Med script's rule (normalised texts `pred`, `gt`)."""
    has_yes_no, hit = "yes" in pred or "no" in pred, gt in pred
    if name == "llava_med_run_eval_batch":
        return ItemScore(pred, hit, "closed", {"recall": llava_med_recall(_output(record), str(record["answer"]))})
    if name == "llava_med_run_eval_pre_b9a98a7" and has_yes_no and not hit:
        return ItemScore(pred, None, "dropped")
    return ItemScore(pred, has_yes_no and hit, "closed")


def _llava_med_open(name: str, record: dict[str, Any], pred: str, gt: str,
                    candidates: Sequence[str] | None) -> ItemScore:
    output, reference = _output(record), str(record["answer"])
    f1, precision, recall = llava_med_f1(output, reference)
    metrics = {"f1": f1, "precision": precision, "recall": recall,
               "exact_match_score": llava_med_exact_match_score(output, reference), **llava_med_bleu(output, reference)}
    if name == "llava_med_run_eval_batch":
        correct: bool | None = gt in pred
    else:
        correct = bool(llava_med_candidate_hit(output, reference, candidates)) if candidates else None
    return ItemScore(pred, correct, "open", metrics)


def _llava_med(name: str) -> Callable[[list[dict[str, Any]], Sequence[str] | None], ScoreResult]:
    def score(records: list[dict[str, Any]], candidates: Sequence[str] | None) -> ScoreResult:
        items: list[ItemScore] = []
        for record in records:
            pred = llava_med_normalize_word(_output(record).lower())
            gt = llava_med_normalize_word(str(record["answer"]).lower())
            if record["answer_type"] == "closed":
                items.append(_llava_med_closed(name, record, pred, gt))
            elif record["answer_type"] == "open":
                items.append(_llava_med_open(name, record, pred, gt, candidates))
            else:
                items.append(ItemScore(None, None, "not_scored"))
        opened = [s for r, s in zip(records, items) if r["answer_type"] == "open"]
        closed = [s for s in items if s.method in ("closed", "dropped")]
        summary: dict[str, Any] = {
            "scorer": name, "rule": LLAVA_MED_RULES[name], "num_open": len(opened), "num_closed": len(closed),
            **{key: value for label, metric in OPEN_KEYS
               for key, value in _average(label, [s.metrics[metric] for s in opened]).items()},
            **_rate("open accuracy", opened), **_rate("yes/no accuracy", closed),
            "not_scored": sum(s.method == "not_scored" for s in items),
        }
        if name == "llava_med_run_eval_pre_b9a98a7":
            summary["closed_dropped"] = sum(s.method == "dropped" for s in closed)
        if name == "llava_med_run_eval_batch":
            summary.update(_average("recall_closed", [s.metrics["recall"] for s in closed]))
        elif opened and not candidates:
            summary["open accuracy note"] = "no candidate answers (LLaVA-Med's candidate.json is unreleased)"
        return ScoreResult(name, items, summary)

    return score


# --- HuatuoGPT-Vision --------------------------------------------------------------------------

def _huatuo(records: list[dict[str, Any]], candidates: Sequence[str] | None) -> ScoreResult:
    items: list[ItemScore] = []
    seen: set[str] = set()
    per_dataset: dict[str, list[ItemScore]] = defaultdict(list)
    per_subset: dict[str, list[ItemScore]] = defaultdict(list)
    would_crash = []
    for record in records:
        meta = record.get("meta") or {}
        options = record.get("options") or []
        if meta.get("question_type") == "open" or not options or record["id"] in seen:
            items.append(ItemScore(None, None, "skipped"))
            continue
        seen.add(record["id"])
        letter, stage = match_choice3(_output(record), dict(zip(LETTERS, options)))
        label = answer_letter(record)
        if stage > 1 or (label is None and record["answer"] != "?"):
            would_crash.append(record["id"])  # the reference passes the whole record as `options` → error
        items.append(ItemScore(letter, label is not None and letter == label, f"stage{stage}"))
        dataset = meta.get("dataset") or record.get("benchmark", "")
        per_dataset[dataset].append(items[-1])
        if meta.get("subset"):
            per_subset[f"{dataset}_{meta['subset']}"].append(items[-1])
    scored = [s for values in per_dataset.values() for s in values]
    summary: dict[str, Any] = {
        "scorer": "huatuo_match_choice3",
        **{k: v for name, group in per_dataset.items() for k, v in _rate(name, group).items()},
        **_rate("The total score for multiple-choice questions", scored),
        **{k: v for name, group in per_subset.items() for k, v in _rate(name, group).items()},
        "question_number": len(scored), "skipped": sum(s.method == "skipped" for s in items),
        "reference_would_crash": len(would_crash), "reference_would_crash_ids": would_crash[:50],
    }
    return ScoreResult("huatuo_match_choice3", items, summary)


SCORERS: dict[str, Callable[[list[dict[str, Any]], Sequence[str] | None], ScoreResult]] = {
    "medvl": _medvl,
    **{name: _llava_med(name) for name in LLAVA_MED_RULES},
    "huatuo_match_choice3": _huatuo,
}


def score_records(records: list[dict[str, Any]], scorer: str = "medvl",
                  candidates: Sequence[str] | None = None) -> ScoreResult:
    """Score prediction records with the named scorer; `candidates` feeds llava_med_run_eval's open accuracy."""
    if scorer not in SCORERS:
        raise UnknownScorer(f"unknown scorer {scorer!r}; known: {', '.join(SCORERS)}")
    return SCORERS[scorer](records, candidates)
