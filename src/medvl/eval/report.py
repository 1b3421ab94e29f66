"""Scores, breakdowns and the markdown report of a run; rescoring a predictions file; comparing runs.

- `finalize_run`: score the merged predictions with the run's scorer (and the compatibility
  scorers it asks for), write the scores into `predictions.jsonl`, and write `scores.json`,
  `rejects.jsonl`, `report.md` and `plots/`.
- `rescore`: score any predictions file with any scorer, no model needed (`medvl eval score`).
- `compare_runs`: a markdown table of several runs side by side (`medvl eval compare`).

Breakdowns group items by answer type and by whichever of question type, organ, modality,
dataset, subject and language the benchmark provides; accuracy counts each item's `correct`
under the run's scorer (open items: exact match), and open items also report token recall.
"""

from __future__ import annotations

import json
import logging
from collections import Counter, defaultdict
from collections.abc import Sequence
from pathlib import Path
from statistics import fmean
from typing import TYPE_CHECKING, Any

from medvl.eval.benchmarks.base import yes_no_answer
from medvl.eval.metrics import leading_yes_no
from medvl.eval.scorers import ScoreResult, score_records
from medvl.io.files import atomic_write_json, atomic_write_text
from medvl.io.jsonl import iter_jsonl, read_records, write_jsonl

if TYPE_CHECKING:
    from medvl.eval.benchmarks.base import BenchmarkData
    from medvl.eval.runner import EvalConfig

__all__ = [
    "apply_scores",
    "breakdowns",
    "compare_runs",
    "finalize_run",
    "headline",
    "load_candidates",
    "render_report",
    "rescore",
    "yes_no_confusion",
]

log = logging.getLogger(__name__)
BREAKDOWN_KEYS = ("question_type", "organ", "modality", "dataset", "subject", "lang")


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


def load_candidates(path: str | Path | None) -> list[str] | None:
    """Candidate open answers from LLaVA-Med's `candidate.json` format (`{"0": [...]}`) or a JSON list."""
    if path is None or not Path(path).is_file():
        return None
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    return [str(a) for a in (data.get("0", []) if isinstance(data, dict) else data)]


def _train_candidates(config: EvalConfig, out: Path) -> list[str] | None:
    """Open answers of the train split, saved as `candidates.json` (LLaVA-Med's format)."""
    from medvl.eval.benchmarks import BenchmarkError, load_benchmark

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
    scorers = [config.scorer, *config.extra_scorers]
    candidates = _train_candidates(config, out) if "llava_med_run_eval" in scorers else None
    main = score_records(records, config.scorer, candidates)
    write_jsonl(out / "predictions.jsonl", apply_scores(records, main))
    rejects = _collect_rejects(out, rejected)
    scores = {
        "benchmark": data.name, "split": data.split, "root": data.root, "backend": config.backend.label(),
        "use_images": config.use_images, "prompt_style": config.prompt.style,
        "items": len(data.items[: config.benchmark.limit] if config.benchmark.limit else data.items),
        "answered": len(records), "rejected": dict(Counter(r["reason"] for r in rejects)),
        "scorer": config.scorer, "scores": main.summary,
        "compat": {name: score_records(records, name, candidates).summary for name in config.extra_scorers},
        "breakdowns": breakdowns(records), "yes_no_confusion": yes_no_confusion(records),
        "generation": config.generation.model_dump(), "throughput": throughput, "notes": list(notes),
    }
    atomic_write_json(out / "scores.json", scores)
    if config.report:
        atomic_write_text(out / "report.md", render_report(scores, records, out))
    log.info("%s: %s", out, headline(scores))
    return scores


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


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.1f}"


def headline(scores: dict[str, Any]) -> str:
    main = scores["scores"]
    parts = [f"{scores['benchmark']} [{scores['split']}] {scores['backend']}"]
    if "closed" in main:
        parts.append(f"closed acc {_pct(main['closed']['accuracy'])}")
    if "open" in main:
        parts.append(f"open EM {_pct(main['open']['exact_match'])} / recall {_pct(main['open']['token_recall'])}")
    if "choice" in main:
        parts.append(f"choice acc {_pct(main['choice']['accuracy'])} "
                     f"(unparsed {_pct(main['choice']['parse_failure_rate'])})")
    return ", ".join(parts)


def _metric_rows(main: dict[str, Any]) -> list[tuple[str, float | None, Any]]:
    rows: list[tuple[str, float | None, Any]] = []
    if "closed" in main:
        c = main["closed"]
        rows += [("closed accuracy", c["accuracy"], c["n"]), ("  yes/no accuracy", c["yes_no_accuracy"], c["yes_no_n"]),
                 ("  yes/no answered with neither", c["yes_no_unanswered_rate"], c["yes_no_n"]),
                 ("  other closed accuracy", c["other_accuracy"], c["other_n"])]
    if "open" in main:
        o = main["open"]
        rows += [(f"open {name.replace('_', ' ')}", o[name], o["n"])
                 for name in ("exact_match", "token_recall", "token_precision", "token_f1")]
    if "choice" in main:
        c = main["choice"]
        rows += [("choice accuracy", c["accuracy"], c["n"]), ("  parse-failure rate", c["parse_failure_rate"], c["n"])]
    return rows + [("overall accuracy (open by exact match)", main.get("overall_accuracy"), main.get("items"))]


def render_report(scores: dict[str, Any], records: list[dict[str, Any]], out: Path) -> str:
    from medvl.eval.plots import plot_breakdown, plot_confusion

    main = scores["scores"]
    images = "yes" if scores["use_images"] else "no (question-only)"
    lines = [f"# Evaluation: {scores['benchmark']} [{scores['split']}]", "",
             (f"- backend: `{scores['backend']}`; images: {images}; prompt style: {scores['prompt_style']}; "
              f"scorer: `{scores['scorer']}`"),
             (f"- items: {scores['items']}, answered: {scores['answered']}, "
              f"rejected: {scores['rejected'] or 'none'} (see rejects.jsonl)"), ""]
    if scores["scorer"] == "medvl":
        lines += ["## Scores", "", "| metric | % | n |", "|---|---|---|"]
        lines += [f"| {name} | {_pct(value)} | {n} |" for name, value, n in _metric_rows(main)]
    else:
        lines += ["## Scores", "", *_key_values(main)]
    for name, summary in scores["compat"].items():
        lines += ["", f"### Compatibility scorer `{name}`", "", *_key_values(summary)]
    for key, rows in scores["breakdowns"].items():
        if len(rows) < 2 and key != "answer_type":
            continue
        lines += ["", f"## By {key.replace('_', ' ')}", "", "| category | n | accuracy % | token recall % |",
                  "|---|---|---|---|"]
        lines += [f"| {r['category']} | {r['n']} | {_pct(r['accuracy'])} | {_pct(r['token_recall'])} |" for r in rows]
        if len(rows) >= 2:
            plot = plot_breakdown(key, rows, out / "plots" / f"accuracy_by_{key}.png")
            lines += ["", f"![accuracy by {key}](plots/{plot.name})"]
    confusion = scores["yes_no_confusion"]
    if any(confusion.values()):
        lines += ["", "## Yes/no confusion", "", "| reference \\ prediction starts with | yes | no | neither |",
                  "|---|---|---|---|"]
        lines += [f"| {k} | " + " | ".join(str(confusion[k].get(c, 0)) for c in ("yes", "no", "neither")) + " |"
                  for k in ("yes", "no")]
        lines += ["", f"![yes/no confusion](plots/{plot_confusion(confusion, out / 'plots' / 'yes_no_confusion.png').name})"]
    wrong = [r for r in records if r.get("correct") is False][:10]
    if wrong:
        lines += ["", "## First wrong answers", "", "| id | question | reference | output |", "|---|---|---|---|"]
        lines += [f"| {r['id']} | {_cell(r['question'])} | {_cell(r['answer'])} | {_cell(r.get('output') or '')} |"
                  for r in wrong]
    if scores["notes"]:
        lines += ["", "## Notes", "", *[f"- {note}" for note in scores["notes"]]]
    return "\n".join(lines) + "\n"


def _cell(text: Any, width: int = 80) -> str:
    text = " ".join(str(text).split()).replace("|", "\\|")
    return text if len(text) <= width else text[: width - 1] + "…"


def _key_values(summary: dict[str, Any]) -> list[str]:
    lines = ["| key | value |", "|---|---|"]
    for key, value in summary.items():
        shown = f"{100 * value:.2f}" if isinstance(value, float) else _cell(json.dumps(value, ensure_ascii=False))
        lines.append(f"| {key} | {shown} |")
    return lines


def rescore(predictions: str | Path, scorer: str = "medvl", candidates: str | Path | None = None,
            out: str | Path | None = None) -> dict[str, Any]:
    """Score a predictions file with any scorer; write `scores.<scorer>.json` (and scored predictions) to `out`."""
    path = Path(predictions)
    if path.is_dir():
        path = path / "predictions.jsonl"
    records = read_records(path)
    result = score_records(records, scorer, load_candidates(candidates or path.with_name("candidates.json")))
    summary = {**result.summary, "source": str(path)}
    if out is not None:
        out = Path(out)
        atomic_write_json(out / f"scores.{scorer}.json", summary)
        write_jsonl(out / f"predictions.{scorer}.jsonl", apply_scores(records, result))
    return summary


def compare_runs(run_dirs: Sequence[str | Path]) -> str:
    """A markdown table of the headline numbers of several runs."""
    header = ["run", "benchmark", "backend", "images", "n", "closed acc", "yes/no acc", "open EM", "open recall",
              "open F1", "choice acc", "unparsed", "overall"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for run in map(Path, run_dirs):
        scores = json.loads((run / "scores.json").read_text(encoding="utf-8"))
        main = scores["scores"]
        closed, opened, choice = main.get("closed", {}), main.get("open", {}), main.get("choice", {})
        cells = [run.name, f"{scores['benchmark']} [{scores['split']}]", scores["backend"],
                 "yes" if scores["use_images"] else "no", str(scores["answered"]),
                 _pct(closed.get("accuracy")), _pct(closed.get("yes_no_accuracy")), _pct(opened.get("exact_match")),
                 _pct(opened.get("token_recall")), _pct(opened.get("token_f1")), _pct(choice.get("accuracy")),
                 _pct(choice.get("parse_failure_rate")), _pct(main.get("overall_accuracy"))]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
