"""How a run's scores are shown: the console line (`headline`) and `report.md` (`render_report`).

Every headline number is printed with its 95% interval (`[low, high]`, in percent) and the number
of items it rests on; the line and the report say which interval method applies, how many items
were skipped (and why) and how many were answered without their image.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["headline", "image_description", "percent", "percent_interval", "render_report", "with_interval"]

MEDVL_HEADLINE = [("closed acc", "closed", "accuracy"), ("open EM", "open", "exact_match"),
                  ("open recall", "open", "token_recall"), ("choice acc", "choice", "accuracy"),
                  ("unparsed", "choice", "parse_failure_rate")]


def percent(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.1f}"


def percent_interval(interval: Sequence[float] | None) -> str:
    return "–" if interval is None else f"[{100 * interval[0]:.1f}, {100 * interval[1]:.1f}]"


def with_interval(summary: dict[str, Any], key: str) -> str:
    """`summary[key]` in percent with its `key_ci` interval when it has one, e.g. "54.0 [48.1, 59.8]"."""
    value = summary.get(key)
    if value is None or f"{key}_ci" not in summary:
        return percent(value)
    return f"{percent(value)} {percent_interval(summary[f'{key}_ci'])}"


def image_description(scores: dict[str, Any]) -> str:
    shown = scores["use_images"]
    if shown == "shuffled":
        return (f"shuffled (each item shown another item's image: seeded derangement, seed "
                f"{scores.get('shuffle_seed', 0)})")
    return "yes" if shown else "no (question-only)"


def _counts(scores: dict[str, Any]) -> str:
    rejected = ", ".join(f"{reason} {n}" for reason, n in scores["rejected"].items()) or "none"
    return (f"answered {scores['answered']} of {scores['items']}, skipped {scores['skipped']} ({rejected}), "
            f"text-only {scores['text_only']}")


def _headline_numbers(scores: dict[str, Any]) -> list[tuple[str, dict[str, Any], str]]:
    """(label, summary, key) of every headline score of the run's scorer."""
    main = scores["scores"]
    if scores["scorer"] == "medvl":
        return [(label, main[group], key) for label, group, key in MEDVL_HEADLINE if group in main]
    return [(key, main, key) for key in main if f"{key}_ci" in main and main[key] is not None]


def headline(scores: dict[str, Any]) -> str:
    """The console line: each headline score with its interval and n, then the item counts."""
    parts = []
    for label, summary, key in _headline_numbers(scores):
        sized = f"{key}_ci" in summary and "n" in summary
        parts.append(f"{label} {with_interval(summary, key)}" + (f" n={summary['n']}" if sized else ""))
    return (f"{scores['benchmark']} [{scores['split']}] {scores['backend']}: {', '.join(parts) or 'nothing scored'}; "
            f"{_counts(scores)} (95% intervals: Wilson for accuracies, bootstrap for means)")


def _metric_rows(main: dict[str, Any]) -> list[tuple[str, dict[str, Any], str, Any]]:
    """(label, summary, key, n) of the medvl scorer's report table."""
    rows: list[tuple[str, dict[str, Any], str, Any]] = []
    if "closed" in main:
        c = main["closed"]
        rows += [("closed accuracy", c, "accuracy", c["n"]), ("  yes/no accuracy", c, "yes_no_accuracy", c["yes_no_n"]),
                 ("  yes/no answered with neither", c, "yes_no_unanswered_rate", c["yes_no_n"]),
                 ("  other closed accuracy", c, "other_accuracy", c["other_n"])]
    if "open" in main:
        o = main["open"]
        rows += [(f"open {name.replace('_', ' ')}", o, name, o["n"])
                 for name in ("exact_match", "token_recall", "token_precision", "token_f1")]
    if "choice" in main:
        c = main["choice"]
        rows += [("choice accuracy", c, "accuracy", c["n"]), ("  parse-failure rate", c, "parse_failure_rate", c["n"])]
    return rows + [("overall accuracy (open by exact match)", main, "overall_accuracy", main.get("items"))]


def render_report(scores: dict[str, Any], records: list[dict[str, Any]], out: Path) -> str:
    from medvl.eval.plots import plot_breakdown, plot_confusion

    main = scores["scores"]
    methods = scores["interval_methods"]
    lines = [f"# Evaluation: {scores['benchmark']} [{scores['split']}]", "",
             (f"- backend: `{scores['backend']}`; images: {image_description(scores)}; prompt style: "
              f"{scores['prompt_style']}; scorer: `{scores['scorer']}`"),
             f"- items: {scores['items']}; {_counts(scores)} (skipped items: rejects.jsonl)",
             (f"- intervals: {methods['confidence']:.0%}; accuracies: {methods['accuracy']}; means: "
              f"{methods['mean']}"), ""]
    if scores["scorer"] == "medvl":
        lines += ["## Scores", "", "| metric | % | 95% interval | n |", "|---|---|---|---|"]
        lines += [f"| {name} | {percent(summary[key])} | {percent_interval(summary.get(f'{key}_ci'))} | {n} |"
                  for name, summary, key, n in _metric_rows(main)]
    else:
        lines += ["## Scores", "", *_key_values(main)]
    if scores["use_images"] == "shuffled":
        lines += ["", "Image reliance = real − shuffled: `medvl eval compare REAL_RUN THIS_RUN` pairs this run with "
                  "a run on the real images and tests the difference."]
    for name, summary in scores["compat"].items():
        lines += ["", f"### Compatibility scorer `{name}`", "", *_key_values(summary)]
    for key, rows in scores["breakdowns"].items():
        if len(rows) < 2 and key != "answer_type":
            continue
        lines += ["", f"## By {key.replace('_', ' ')}", "", "| category | n | accuracy % | token recall % |",
                  "|---|---|---|---|"]
        lines += [f"| {r['category']} | {r['n']} | {percent(r['accuracy'])} | {percent(r['token_recall'])} |"
                  for r in rows]
        if len(rows) >= 2:
            plot = plot_breakdown(key, rows, out / "plots" / f"accuracy_by_{key}.png")
            lines += ["", f"![accuracy by {key}](plots/{plot.name})"]
    confusion = scores["yes_no_confusion"]
    if any(confusion.values()):
        lines += ["", "## Yes/no confusion", "", "| reference \\ prediction starts with | yes | no | neither |",
                  "|---|---|---|---|"]
        lines += [f"| {k} | " + " | ".join(str(confusion[k].get(c, 0)) for c in ("yes", "no", "neither")) + " |"
                  for k in ("yes", "no")]
        plot = plot_confusion(confusion, out / "plots" / "yes_no_confusion.png")
        lines += ["", f"![yes/no confusion](plots/{plot.name})"]
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
    """A compatibility summary as a table: each number in percent with its interval (the `_ci` keys)."""
    lines = ["| key | value | 95% interval |", "|---|---|---|"]
    for key, value in summary.items():
        if key.endswith("_ci"):
            continue
        shown = f"{100 * value:.2f}" if isinstance(value, float) else _cell(json.dumps(value, ensure_ascii=False))
        interval = percent_interval(summary[f"{key}_ci"]) if summary.get(f"{key}_ci") else ""
        lines.append(f"| {key} | {shown} | {interval} |")
    return lines
