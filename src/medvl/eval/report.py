"""Scores, breakdowns and the markdown report of a run; rescoring a predictions file; comparing runs.

- `finalize_run`: score the merged predictions with the run's scorer (and the compatibility
  scorers it asks for), write the scores into `predictions.jsonl`, and write `scores.json`,
  `rejects.jsonl`, `report.md` and `plots/`.
- `rescore`: score any predictions file with any scorer, no model needed (`medvl eval score`).
- `render.headline` / `render.render_report` show the result: every headline score with its 95%
  interval, and the counts of skipped and text-only items.

Every headline number carries its interval (`<name>_ci` beside `<name>` in scores.json; Wilson
for accuracies, bootstrap for means: `interval_methods` says which). Breakdowns group items by
answer type and by whichever of question type, organ, modality, dataset, subject and language the
benchmark provides; accuracy counts each item's `correct` under the run's scorer (open items:
exact match), and open items also report token recall. A run in which the scorer scored nothing
(every item skipped, every request failed, or a scorer that does not score this benchmark's items)
still writes its folder, then raises `NothingScored`.
"""

from __future__ import annotations

import logging
from collections import Counter, defaultdict
from collections.abc import Sequence
from pathlib import Path
from statistics import fmean
from typing import TYPE_CHECKING, Any

from medvl.benchmarks.base import yes_no_answer
from medvl.errors import UserError
from medvl.eval.metrics import leading_yes_no
from medvl.eval.render import headline, render_report
from medvl.eval.scorers import NEEDS_CANDIDATES, ScoreResult, score_records
from medvl.eval.stats import METHODS
from medvl.io.files import atomic_write_json, atomic_write_text
from medvl.io.jsonl import JsonlLineError, iter_jsonl, read_json_file, read_records, write_jsonl

if TYPE_CHECKING:
    from medvl.benchmarks.base import BenchmarkData
    from medvl.eval.config import EvalConfig

__all__ = [
    "NothingScored",
    "apply_scores",
    "breakdowns",
    "finalize_run",
    "load_candidates",
    "nothing_scored",
    "rescore",
    "yes_no_confusion",
]

log = logging.getLogger(__name__)
BREAKDOWN_KEYS = ("question_type", "organ", "modality", "dataset", "subject", "lang")


class NothingScored(UserError, RuntimeError):
    """A run or rescore in which the scorer scored no item; the message says why."""


def apply_scores(records: list[dict[str, Any]], result: ScoreResult) -> list[dict[str, Any]]:
    """Copy each item's score (scorer, parsed, correct, parse_method, metrics) into its record."""
    for record, score in zip(records, result.items):
        record.update(scorer=result.scorer, parsed=score.parsed, correct=score.correct, parse_method=score.method,
                      metrics=score.metrics)
    return records


def _group(records: list[dict[str, Any]], key: str) -> list[dict[str, Any]]:
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for record in records:
        value = record.get("answer_type") if key == "answer_type" else (record.get("meta") or {}).get(key)
        if value not in (None, ""):
            groups[str(value)].append(record)
    rows = []
    for category, members in groups.items():
        scored = [float(r["correct"]) for r in members if r.get("correct") is not None]
        recalls = [r["metrics"]["token_recall"] for r in members if "token_recall" in (r.get("metrics") or {})]
        rows.append({"category": category, "n": len(members), "accuracy": fmean(scored) if scored else None,
                     "token_recall": fmean(recalls) if recalls else None})
    return sorted(rows, key=lambda r: (-r["n"], r["category"]))


def breakdowns(records: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    result = {"answer_type": _group(records, "answer_type")}
    for key in BREAKDOWN_KEYS:
        rows = _group(records, key)
        if rows:
            result[key] = rows
    return result


def yes_no_confusion(records: list[dict[str, Any]]) -> dict[str, dict[str, int]]:
    """Counts of (reference yes/no) × (prediction's leading yes / no / neither) over yes/no items."""
    table: dict[str, Counter[str]] = {"yes": Counter(), "no": Counter()}
    for record in records:
        expected = yes_no_answer(str(record.get("answer", ""))) if record.get("answer_type") == "closed" else None
        if expected:
            table[expected][leading_yes_no(record.get("output") or "") or "neither"] += 1
    return {k: dict(v) for k, v in table.items()}


CANDIDATES_FORMAT = 'LLaVA-Med\'s candidate.json ({"0": [answer, ...]}) or a JSON list of answers'


def load_candidates(path: str | Path) -> list[str]:
    """Candidate open answers from LLaVA-Med's `candidate.json` format (`{"0": [...]}`) or a JSON list."""
    data = read_json_file(path, CANDIDATES_FORMAT, "give the candidates.json an `eval run` wrote, or such a file")
    answers = data.get("0") if isinstance(data, dict) else data
    if not isinstance(answers, list):
        raise UserError(f"{path}: a JSON {type(data).__name__} without a list of answers; expected {CANDIDATES_FORMAT}")
    return [str(a) for a in answers]


def _train_candidates(config: EvalConfig, out: Path) -> list[str] | None:
    """Open answers of the train split, saved as `candidates.json` (LLaVA-Med's format)."""
    from medvl.benchmarks import BenchmarkError, load_benchmark

    bench = config.benchmark
    try:
        train = load_benchmark(bench.name, bench.root, "train", **bench.options)
    except BenchmarkError:
        return None
    answers = sorted({item.answer for item in train.items if item.answer_type == "open"})
    atomic_write_json(out / "candidates.json", {"0": answers})
    return answers


def finalize_run(out: Path, records: list[dict[str, Any]], config: EvalConfig, data: BenchmarkData,
                 rejected: list[dict[str, str]], notes: Sequence[str], throughput: dict[str, Any]) -> dict[str, Any]:
    """Score, write scores.json, predictions.jsonl, rejects.jsonl and report.md; `NothingScored` when
    the scorer scored nothing (the folder is written first, so the user can see why)."""
    scorers = [config.scorer, *config.extra_scorers]
    candidates = _train_candidates(config, out) if NEEDS_CANDIDATES & set(scorers) else None
    main = score_records(records, config.scorer, candidates)
    write_jsonl(out / "predictions.jsonl", apply_scores(records, main))
    rejects = _collect_rejects(out, rejected)
    items = len(data.items[: config.benchmark.limit] if config.benchmark.limit else data.items)
    scores = {
        "benchmark": data.name, "split": data.split, "root": data.root, "backend": config.backend.label(),
        "use_images": config.use_images, "shuffle_seed": config.shuffle_seed, "prompt_style": config.prompt.style,
        "items": items, "answered": len(records), "skipped": items - len(records),
        "rejected": dict(Counter(r["reason"] for r in rejects)),
        "text_only": sum(not r.get("use_images") for r in records) if config.use_images else 0,
        "scored": sum(s.correct is not None for s in main.items), "errors": sum(bool(r.get("error")) for r in records),
        "scorer": config.scorer, "interval_methods": METHODS, "scores": main.summary,
        "compat": {name: score_records(records, name, candidates).summary for name in config.extra_scorers},
        "breakdowns": breakdowns(records), "yes_no_confusion": yes_no_confusion(records),
        "generation": config.generation.model_dump(), "throughput": throughput, "notes": list(notes),
    }
    atomic_write_json(out / "scores.json", scores)
    if config.report:
        atomic_write_text(out / "report.md", render_report(scores, records, out))
    log.debug("%s: %s", out, headline(scores))  # `medvl eval run` prints it; the demo's report has it
    problem = nothing_scored(scores, records)
    if problem:
        raise NothingScored(f"{out}: {problem}")
    return scores


def nothing_scored(scores: dict[str, Any], records: list[dict[str, Any]]) -> str | None:
    """Why a run scored nothing (no item answered, every request failed, or the scorer scores none of the
    items), or None when something was scored."""
    if not records:
        rejected = ", ".join(f"{reason} {n}" for reason, n in scores["rejected"].items()) or "none recorded"
        return (f"no item was answered: {scores['skipped']} of {scores['items']} skipped ({rejected}); "
                "see rejects.jsonl (missing images: fix the image folder or set missing_images=text_only)")
    if scores["errors"] == len(records):
        first = next(r["error"] for r in records if r.get("error"))
        return f"every one of the {len(records)} requests failed; the first error: {first}"
    if scores["scored"] == 0:
        kinds = ", ".join(sorted({str(r.get("answer_type")) for r in records}))
        return f"the scorer {scores['scorer']} scores none of the {len(records)} answered items ({kinds} questions)"
    return None


def _collect_rejects(out: Path, rejected: list[dict[str, str]]) -> list[dict[str, str]]:
    """Loader/missing-image rejects plus the runtime ones from `rejects.part-*.jsonl`, one per (id, reason)."""
    found = list(rejected)
    for part in sorted(out.glob("rejects.part-*.jsonl")):
        found += [r for _, r in iter_jsonl(part) if isinstance(r, dict)]
        part.unlink()
    unique = {(r["id"], r["reason"]): {"id": r["id"], "stage": r.get("stage", ""), "reason": r["reason"],
                                       "detail": r.get("detail", "")} for r in found}
    write_jsonl(out / "rejects.jsonl", unique.values())
    return list(unique.values())


def rescore(predictions: str | Path, scorer: str = "medvl", candidates: str | Path | None = None,
            out: str | Path | None = None) -> dict[str, Any]:
    """Score a predictions file with any scorer; write `scores.<scorer>.json` (and scored predictions) to `out`."""
    path = Path(predictions)
    if path.is_dir():
        path = path / "predictions.jsonl"
    if not path.is_file():
        raise UserError(f"{path}: no predictions file here (give a run folder or its predictions.jsonl)")
    try:
        records = read_records(path)
    except JsonlLineError as exc:
        raise UserError(f"{exc}; fix or remove that line") from exc
    for number, record in enumerate(records, start=1):
        absent = [key for key in ("id", "answer", "answer_type") if key not in record]
        if absent:
            raise UserError(f"{path}: record {number} has no {', '.join(map(repr, absent))}: not a predictions file "
                            "(give the predictions.jsonl that `medvl eval run` wrote)")
    if candidates is None and path.with_name("candidates.json").is_file():
        candidates = path.with_name("candidates.json")  # the run's own (`eval run` writes it beside its predictions)
    result = score_records(records, scorer, load_candidates(candidates) if candidates is not None else None)
    summary = {**result.summary, "source": str(path), "interval_methods": METHODS}
    if out is not None:
        out = Path(out)
        atomic_write_json(out / f"scores.{scorer}.json", summary)
        write_jsonl(out / f"predictions.{scorer}.jsonl", apply_scores(records, result))
    if not any(s.correct is not None for s in result.items):
        kinds = ", ".join(sorted({str(r.get("answer_type")) for r in records})) or "no"
        raise NothingScored(f"{path}: the scorer {scorer} scores none of its {len(records)} items ({kinds} questions)")
    return summary
