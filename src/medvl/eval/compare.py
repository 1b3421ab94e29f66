"""Runs side by side, and item-by-item paired tests between runs over the same questions.

- `compare_records(a, b)`: pairs two runs' prediction records by item id and, for each headline
  metric both runs have, reports A, B, A − B with a 95% paired bootstrap interval, plus the exact
  McNemar p-value for accuracies (from the discordant pairs). Runs whose item sets differ are
  refused (`ItemSetMismatch`) unless `common_items=True`, which pairs the shared items and says
  how many were left out; the same id with a different reference answer is always refused.
- `compare_runs(folders)`: `medvl eval compare` — a table of the runs' headline numbers with their
  intervals, then the paired differences of every other run against the first. When one run of a
  pair shows real images and the other shuffled ones (`use_images: shuffled`), the difference is
  reported as image reliance = real − shuffled. Its two halves serve callers that also use the
  comparisons themselves (the demo report), so each is computed once: `pair_runs(runs)` pairs
  every other run with the first, `render_runs(runs, pairings)` writes the markdown.

Scores come from the records as the run's scorer left them (`correct`, `metrics`); both runs must
have been scored by the same scorer (rescore one with `medvl eval score` otherwise).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from medvl.benchmarks.base import yes_no_answer
from medvl.errors import UserError
from medvl.eval.render import percent, percent_interval, with_interval
from medvl.eval.stats import CONFIDENCE, METHODS, mcnemar_exact, paired_bootstrap_difference

__all__ = ["ItemSetMismatch", "PairedDifference", "Pairing", "RecordComparison", "Run", "compare_records",
           "compare_runs", "load_run", "pair_runs", "render_runs"]

Record = dict[str, Any]
MEAN_METRICS = ("token_recall", "token_f1", "recall", "f1")  # per-item means compared by paired bootstrap
GROUPS: dict[str, Callable[[Record], bool]] = {
    "closed": lambda r: r.get("answer_type") == "closed",
    "yes/no": lambda r: r.get("answer_type") == "closed" and yes_no_answer(str(r.get("answer", ""))) is not None,
    "open": lambda r: r.get("answer_type") == "open",
    "choice": lambda r: r.get("answer_type") == "choice",
    "overall": lambda r: True,
}


class ItemSetMismatch(UserError, ValueError):
    """Two runs that do not answer the same questions cannot be compared item by item."""


@dataclass(frozen=True)
class PairedDifference:
    """One metric of two runs over the same items: A, B, A − B and how sure that difference is."""

    metric: str
    kind: Literal["accuracy", "mean"]
    n: int
    a: float
    b: float
    difference: float
    interval: tuple[float, float]
    p_value: float | None = None  # exact McNemar (accuracies)
    a_only: int | None = None  # items right under A only (accuracies)
    b_only: int | None = None

    @property
    def significant(self) -> bool:
        """p < 0.05 for an accuracy; the interval excludes 0 for a mean."""
        if self.p_value is not None:
            return self.p_value < 1 - CONFIDENCE
        return self.interval[0] > 0 or self.interval[1] < 0

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "significant": self.significant}


@dataclass
class RecordComparison:
    paired: int
    only_a: list[str] = field(default_factory=list)
    only_b: list[str] = field(default_factory=list)
    differences: list[PairedDifference] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"paired": self.paired, "only_a": len(self.only_a), "only_b": len(self.only_b),
                "methods": METHODS, "differences": [d.to_dict() for d in self.differences]}


def compare_records(a: Sequence[Record], b: Sequence[Record], common_items: bool = False) -> RecordComparison:
    """Pair `a` and `b` by id and test every headline metric both have (see the module docstring)."""
    by_id_a, by_id_b = {str(r["id"]): r for r in a}, {str(r["id"]): r for r in b}
    only_a = sorted(set(by_id_a) - set(by_id_b))
    only_b = sorted(set(by_id_b) - set(by_id_a))
    if (only_a or only_b) and not common_items:
        raise ItemSetMismatch(f"the runs answer different items ({len(only_a)} only in the first, e.g. "
                              f"{only_a[:3]}; {len(only_b)} only in the second, e.g. {only_b[:3]}); rerun both on "
                              "the same items, or compare on the shared ones (--common-items)")
    ids = [i for i in by_id_a if i in by_id_b]
    changed = [i for i in ids if str(by_id_a[i].get("answer")) != str(by_id_b[i].get("answer"))]
    if changed:
        raise ItemSetMismatch(f"item {changed[0]!r} has reference {by_id_a[changed[0]].get('answer')!r} in one run "
                              f"and {by_id_b[changed[0]].get('answer')!r} in the other: not the same benchmark")
    scorers = {r.get("scorer") for r in [*a, *b]} - {None}
    if len(scorers) > 1:
        raise ItemSetMismatch(f"the runs were scored by different scorers ({', '.join(sorted(scorers))}); rescore "
                              "one with `medvl eval score RUN --scorer NAME`")
    pairs = [(by_id_a[i], by_id_b[i]) for i in ids]
    differences = []
    for group, member in GROUPS.items():
        chosen = [(x, y) for x, y in pairs if member(x)]
        label = "open exact match" if group == "open" and scorers == {"medvl"} else f"{group} accuracy"
        differences += _accuracy_difference(label, chosen)
        if group == "open":
            differences += [d for name in MEAN_METRICS for d in _mean_difference(f"open {name}", name, chosen)]
    return RecordComparison(len(pairs), only_a, only_b, differences)


def _accuracy_difference(label: str, pairs: list[tuple[Record, Record]]) -> list[PairedDifference]:
    scored = [(bool(x["correct"]), bool(y["correct"])) for x, y in pairs
              if x.get("correct") is not None and y.get("correct") is not None]
    if not scored:
        return []
    a_only = sum(x and not y for x, y in scored)
    b_only = sum(y and not x for x, y in scored)
    return [_paired(label, "accuracy", [float(x) for x, _ in scored], [float(y) for _, y in scored],
                    p_value=mcnemar_exact(a_only, b_only), a_only=a_only, b_only=b_only)]


def _mean_difference(label: str, name: str, pairs: list[tuple[Record, Record]]) -> list[PairedDifference]:
    values = [((x.get("metrics") or {}).get(name), (y.get("metrics") or {}).get(name)) for x, y in pairs]
    if not values or any(u is None or v is None for u, v in values):
        return []
    return [_paired(label, "mean", [float(u) for u, _ in values], [float(v) for _, v in values])]


def _paired(label: str, kind: Literal["accuracy", "mean"], a: list[float], b: list[float],
            **test: Any) -> PairedDifference:
    difference, interval = paired_bootstrap_difference(a, b) or (0.0, (0.0, 0.0))  # a and b are never empty here
    return PairedDifference(label, kind, len(a), sum(a) / len(a), sum(b) / len(b), difference, interval, **test)


# --- run folders --------------------------------------------------------------------------------

TABLE = [("closed acc", ("closed", "accuracy")), ("yes/no acc", ("closed", "yes_no_accuracy")),
         ("open EM", ("open", "exact_match")), ("open recall", ("open", "token_recall")),
         ("open F1", ("open", "token_f1")), ("choice acc", ("choice", "accuracy")), ("overall", (None, "overall_accuracy"))]


@dataclass
class Run:
    folder: Path
    scores: dict[str, Any]
    records: list[Record]

    @property
    def images(self) -> str:
        shown = self.scores.get("use_images")
        return "shuffled" if shown == "shuffled" else "yes" if shown else "no"


SCORES_KEYS = ("benchmark", "split", "backend", "answered", "scores")  # what the table reads from scores.json


def load_run(folder: Path) -> Run:
    """A finished run folder; an unfinished one, a damaged scores.json or predictions.jsonl is one
    `UserError` line saying how to get a finished run (rerunning the same `eval run` resumes it)."""
    from medvl.io.jsonl import read_json_file, read_records

    scores_file, predictions = folder / "scores.json", folder / "predictions.jsonl"
    rerun = f"run the same `medvl eval run` (its config: {folder / 'config.yaml'}) again"
    if absent := [file.name for file in (scores_file, predictions) if not file.is_file()]:
        if (folder / "config.yaml").is_file():
            parts = len(list(folder.glob("predictions.part-*.jsonl")))
            raise UserError(f"{folder}: an unfinished run (no {' or '.join(absent)}; {parts} part file(s) of "
                            f"answers); {rerun} to finish it, then compare")
        raise UserError(f"{folder}: not a run folder (scores.json and predictions.jsonl expected; `medvl eval run` "
                        "writes them)")
    anew = f"{rerun} to write it anew (answers already given are not asked again)"
    scores = read_json_file(scores_file, "the scores.json of `medvl eval run`", anew)
    absent = [key for key in SCORES_KEYS if key not in scores] if isinstance(scores, dict) else list(SCORES_KEYS)
    if absent:
        raise UserError(f"{scores_file}: no {', '.join(map(repr, absent))}: not the scores.json of `medvl eval run` "
                        f"(a `medvl eval score --out` file is scores.SCORER.json); {anew}")
    return Run(folder, scores, read_records(predictions))


@dataclass
class Pairing:
    """Two runs paired item by item (`a` shows real images where the other shows shuffled ones), or why not."""

    title: str
    a: Run
    b: Run
    comparison: RecordComparison | None
    not_paired: str = ""


def compare_runs(run_dirs: Sequence[str | Path], common_items: bool = False) -> str:
    """Markdown: the runs' headline numbers with intervals, then each run paired against the first."""
    folders = [Path(folder) for folder in run_dirs]
    resolved = [folder.resolve() for folder in folders]
    if twice := next((f for f, r in zip(folders, resolved) if resolved.count(r) > 1), None):
        raise UserError(f"{twice} is given more than once: a run compared with itself differs by nothing; "
                        "name each run folder once")
    runs = [load_run(folder) for folder in folders]
    return render_runs(runs, pair_runs(runs, common_items))


def pair_runs(runs: Sequence[Run], common_items: bool = False) -> list[Pairing]:
    """Every run after the first paired with the first, in order."""
    return [_pair(runs[0], other, common_items) for other in runs[1:]]


def render_runs(runs: Sequence[Run], pairings: Sequence[Pairing]) -> str:
    """The markdown of `compare_runs` from its runs and their `pair_runs`."""
    header = ["run", "benchmark", "backend", "images", "answered", *(name for name, _ in TABLE)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for run in runs:
        main = run.scores["scores"]
        cells = [run.folder.name, f"{run.scores['benchmark']} [{run.scores['split']}]", run.scores["backend"],
                 run.images, str(run.scores["answered"]),
                 *(with_interval(main.get(group, {}) if group else main, key) for _, (group, key) in TABLE)]
        lines.append("| " + " | ".join(cells) + " |")
    for pairing in pairings:
        lines += ["", *_paired_section(pairing)]
    lines += ["", f"Intervals are {CONFIDENCE:.0%}: accuracies {METHODS['accuracy']}, means {METHODS['mean']}; "
              f"paired accuracies: {METHODS['paired accuracy']}; paired means: {METHODS['paired mean']}."]
    return "\n".join(lines) + "\n"


def _pair(first: Run, second: Run, common_items: bool) -> Pairing:
    a, b = first, second
    title = f"{a.folder.name} − {b.folder.name}"
    if {a.images, b.images} == {"yes", "shuffled"}:
        a, b = (first, second) if first.images == "yes" else (second, first)
        title = f"image reliance = real − shuffled ({a.folder.name} − {b.folder.name})"
    if (a.scores["benchmark"], a.scores["split"]) != (b.scores["benchmark"], b.scores["split"]):
        return Pairing(title, a, b, None, "the runs are on different benchmarks or splits")
    try:
        return Pairing(title, a, b, compare_records(a.records, b.records, common_items))
    except ItemSetMismatch as exc:
        return Pairing(title, a, b, None, str(exc))


def _paired_section(pairing: Pairing) -> list[str]:
    title, comparison = pairing.title, pairing.comparison
    if comparison is None:
        return [f"### {title}", "", f"NOT PAIRED: {pairing.not_paired}."]
    left_out = len(comparison.only_a) + len(comparison.only_b)
    note = f" ({left_out} items answered by only one run left out)" if left_out else ""
    lines = [f"### {title}", "", f"{comparison.paired} paired items{note}.", "",
             "| metric | n | A | B | A − B | 95% CI | McNemar p | right only in A / B | verdict |",
             "|---|---|---|---|---|---|---|---|---|"]
    for d in comparison.differences:
        p = "–" if d.p_value is None else f"{d.p_value:.3g}"
        discordant = "–" if d.a_only is None else f"{d.a_only} / {d.b_only}"
        verdict = "significant" if d.significant else "not significant"
        lines.append(f"| {d.metric} | {d.n} | {percent(d.a)} | {percent(d.b)} | {100 * d.difference:+.1f} | "
                     f"{percent_interval(d.interval)} | {p} | {discordant} | {verdict} |")
    return lines
