"""`medvl eval ...`: run, rescore, compare, inspect benchmarks, and LLM-judge answers.

    medvl eval run configs/eval/vqa_rad.yaml backend.model=runs/model output_dir=runs/eval/rad
    medvl launch accelerate launch -m medvl.cli eval run configs/eval/vqa_rad.yaml ...   # data parallel
    medvl eval score runs/eval/rad/predictions.jsonl --scorer llava_med_run_eval
    medvl eval compare runs/eval/rad runs/eval/rad-question-only runs/eval/rad-majority
    medvl eval inspect slake ../shared/data/slake-questions --split validate
    medvl eval judge-open runs/eval/rad --config configs/eval/judge.yaml
    medvl eval judge-chat llava_med_eval_qa50_qa.jsonl answers.jsonl --config configs/eval/judge.yaml
"""

from __future__ import annotations

import json
from pathlib import Path

import typer

eval_app = typer.Typer(name="eval", help="Evaluate models on medical VQA benchmarks.", no_args_is_help=True)


@eval_app.command("run")
def run(
    config: Path = typer.Argument(..., help="eval config YAML (see configs/eval/)"),
    overrides: list[str] | None = typer.Argument(None, help="key=value overrides, e.g. benchmark.limit=20"),
) -> None:
    """Answer a benchmark with a backend, score it, write predictions, scores, report and plots."""
    from medvl.io.process import die_with_launcher

    die_with_launcher()  # first: a launched worker must not outlive its launcher, even while importing torch
    from accelerate import PartialState

    from medvl.config import load_config
    from medvl.eval.config import EvalConfig
    from medvl.eval.render import headline
    from medvl.eval.runner import run_eval

    settings = load_config(EvalConfig, config, overrides or [])
    out = run_eval(settings)
    if PartialState().is_main_process:
        typer.echo(headline(json.loads((out / "scores.json").read_text(encoding="utf-8"))))
        written = "report.md, predictions.jsonl, scores.json, plots/" if settings.report else \
            "predictions.jsonl, scores.json; report=false: no report.md or plots/"
        typer.echo(f"run folder: {out} ({written})")


@eval_app.command("score")
def score(
    predictions: Path = typer.Argument(..., help="a predictions.jsonl (or its run folder)"),
    scorer: str = typer.Option("medvl", help="a scorer name (see `medvl eval list`)"),
    candidates: Path | None = typer.Option(None, help="llava_med_run_eval: candidate answers (candidate.json format)"),
    out: Path | None = typer.Option(None, help="write scores.<scorer>.json and predictions.<scorer>.jsonl here"),
) -> None:
    """Rescore a predictions file with any scorer, without a model."""
    from medvl.eval.report import rescore

    typer.echo(json.dumps(rescore(predictions, scorer, candidates, out), indent=2, ensure_ascii=False))


@eval_app.command("compare")
def compare(
    runs: list[Path] = typer.Argument(..., help="run folders (each with scores.json and predictions.jsonl)"),
    out: Path | None = typer.Option(None, help="also write the tables to this markdown file"),
    common_items: bool = typer.Option(False, help="pair runs over different item sets on their shared items"),
) -> None:
    """Runs side by side with 95% intervals, then each run paired against the first: differences with a paired
    bootstrap interval and, for accuracies, an exact McNemar p-value (image reliance for real vs shuffled)."""
    from medvl.eval.compare import compare_runs
    from medvl.io.files import atomic_write_text

    table = compare_runs(runs, common_items=common_items)
    if out:
        atomic_write_text(out, table)
    typer.echo(table)


@eval_app.command("list")
def list_names() -> None:
    """Benchmark loaders and scorers by name."""
    from medvl.benchmarks import BENCHMARKS
    from medvl.eval.scorers import SCORERS

    typer.echo("benchmarks: " + ", ".join(BENCHMARKS))
    typer.echo("scorers:    " + ", ".join(SCORERS))


@eval_app.command("inspect")
def inspect_benchmark(
    name: str = typer.Argument(..., help="benchmark name (see `medvl eval list`)"),
    root: Path = typer.Argument(..., help="the release's folder (or file)"),
    split: str = typer.Option("test"),
    option: list[str] | None = typer.Option(None, help="loader option key=value (YAML value), repeatable"),
) -> None:
    """Load a benchmark and report its size, answer types, missing images and unreadable rows."""
    from medvl.benchmarks import BenchmarkError, load_benchmark
    from medvl.config import ConfigError, parse_value

    options = {}
    for item in option or []:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--option {item!r}: give key=value (e.g. --option lang=en)")
        options[key.strip()] = parse_value(raw, f"--option {item}")
    data = load_benchmark(name, root, split, **options)
    typer.echo(data.summary())
    if not data.items:  # every row unreadable: the summary says why, and a script must not read it as fine
        raise BenchmarkError(f"{name} [{split}]: no usable question in {root}: all {len(data.rejects)} rows "
                             "were rejected (reasons above)")


def _judge_config(config: Path, overrides: list[str] | None, folder: Path):
    """The judge config, its replies cached in `folder`/llm-cache unless `llm.cache_dir` is set: a judge
    stopped midway (killed, an endpoint gone) and run again pays only for the replies it had not got.
    `folder` (the outputs' folder) is made first, so a bad output path fails before any request."""
    from medvl.config import load_config
    from medvl.eval.judge import JudgeConfig
    from medvl.io.files import ensure_folder

    judge = load_config(JudgeConfig, config, overrides or [])
    ensure_folder(folder)
    return judge.model_copy(update={"llm": judge.llm.cached_in(folder / "llm-cache")})


@eval_app.command("judge-open")
def judge_open_command(
    predictions: Path = typer.Argument(..., help="a predictions.jsonl (or its run folder)"),
    config: Path = typer.Option(..., help="judge config YAML (llm: base_url, model, ...)"),
    out: Path | None = typer.Option(
        None, help="folder for judge_open.jsonl, judge_open.json and llm-cache/ (default: beside the predictions)"),
    overrides: list[str] | None = typer.Argument(None, help="key=value overrides of the judge config"),
) -> None:
    """Ask an LLM whether each open answer matches its reference."""
    from medvl.eval.judge import judge_open, open_records
    from medvl.io.files import atomic_write_json
    from medvl.io.jsonl import read_records, write_jsonl

    path = predictions / "predictions.jsonl" if predictions.is_dir() else predictions
    folder = out or path.parent
    opened = open_records(read_records(path), path)
    rows, summary = judge_open(opened, _judge_config(config, overrides, folder))
    write_jsonl(folder / "judge_open.jsonl", rows)
    atomic_write_json(folder / "judge_open.json", summary)
    typer.echo(json.dumps(summary, indent=2))
    _nothing_judged(summary["judged"], summary["failed"], summary["malformed"], folder / "judge_open.jsonl")


@eval_app.command("judge-chat")
def judge_chat_command(
    questions: Path = typer.Argument(..., help="LLaVA-Med chat questions (llava_med_eval_qa50_qa.jsonl format)"),
    answers: Path = typer.Argument(..., help="model answers JSONL: question_id, text"),
    config: Path = typer.Option(..., help="judge config YAML (llm: ..., both_orders: true)"),
    out: Path = typer.Option(..., help="folder for judge_chat.jsonl, judge_chat.json and llm-cache/"),
    overrides: list[str] | None = typer.Argument(None, help="key=value overrides of the judge config"),
) -> None:
    """LLaVA-Med's GPT-4 chat evaluation: relative scores, both answer orders."""
    from medvl.eval.judge import judge_chat, read_chat_answers, read_chat_questions
    from medvl.io.files import atomic_write_json
    from medvl.io.jsonl import write_jsonl

    asked = read_chat_questions(questions)
    rows, summary = judge_chat(asked, read_chat_answers(answers), _judge_config(config, overrides, out), str(answers))
    write_jsonl(out / "judge_chat.jsonl", rows)
    atomic_write_json(out / "judge_chat.json", summary)
    overall = summary["overall"]
    typer.echo(json.dumps(overall, indent=2))
    if summary["unanswered"]["n"]:
        typer.echo(f"{summary['unanswered']['n']} of {len(asked)} questions have no answer in {answers} and were "
                   f"not judged (listed in {out / 'judge_chat.json'})", err=True)
    orders = [order for order in ("reference_first", "model_first") if order in overall]
    _nothing_judged(sum(overall[o]["scored"] for o in orders), sum(overall[o]["failed"] for o in orders),
                    sum(overall[o]["malformed"] for o in orders), out / "judge_chat.jsonl")


def _nothing_judged(judged: int, failed: int, malformed: int, rows: Path) -> None:
    """A judge that judged nothing ends in one line and exit 2 (its files are written); replies it did get
    are cached, so running it again pays only for the rest."""
    from medvl.eval.report import NothingScored

    if not judged:
        raise NothingScored(f"the judge judged nothing: {failed} requests failed, {malformed} replies had no "
                            f"verdict (each with its error or raw reply in {rows}); fix the endpoint or the "
                            "judge model and run the same command again")


def register(app: typer.Typer) -> None:
    app.add_typer(eval_app, name="eval")
