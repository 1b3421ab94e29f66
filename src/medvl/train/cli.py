"""`medvl train` and `medvl data ...`: train a stage, validate a dataset, convert a benchmark split.

    medvl train configs/train/llava_med_stage2.yaml [key=value ...]
    medvl launch accelerate launch --config_file configs/accelerate/zero3.yaml -m medvl.cli train CONFIG [key=value ...]
    medvl data check CONFIG.yaml [key=value ...]          # the config's sources, as training sees them
    medvl data check DATA.jsonl --image-root IMAGES --model MODEL_DIR [--max-length 2048]
    medvl data check DATA.jsonl --against vqa_rad=../shared/data/vqa-rad [--against slake@test=ROOT]
    medvl data convert vqa_rad ../shared/data/vqa-rad --split train --out vqa_rad_train.jsonl [--concepts]
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import typer

if TYPE_CHECKING:
    from rich.console import Console

    from medvl.benchmarks.contamination import ReferenceItem
    from medvl.train.sources import LoadedSource
    from medvl.train.validate import CheckReport

data_app = typer.Typer(name="data", help="Validate and convert training data.", no_args_is_help=True)


def register(app: typer.Typer) -> None:
    app.command("train")(train)
    app.add_typer(data_app, name="data")


def train(
    config: Path = typer.Argument(..., help="training config YAML (see configs/train/)"),
    overrides: Optional[list[str]] = typer.Argument(None, help="key=value overrides, e.g. optim.lr=1e-4"),
) -> None:
    """Train one stage (align / instruct / finetune); resumes from the run's last checkpoint."""
    from medvl.io.process import die_with_launcher

    die_with_launcher()  # first: a launched worker must not outlive its launcher, even while importing torch
    from medvl.config import load_config
    from medvl.train.config import TrainConfig
    from medvl.train.runner import run_training

    result = run_training(load_config(TrainConfig, config, overrides or []))
    from accelerate import PartialState

    if not PartialState().is_main_process:
        return
    if result.already_finished:
        typer.echo(f"nothing to do: {result.output_dir} already finished at step {result.global_step} "
                   "(train_summary.json); raise optim.max_steps / optim.epochs to train on")
    else:
        loss = f"{result.final_loss:.4f}" if result.final_loss is not None else "n/a"
        typer.echo(f"trained {result.global_step} steps (last logged loss {loss}); "
                   f"{result.data.valid} usable records, {result.data.rejected} rejected"
                   + (f", {result.data.warned} kept with warnings" if result.data.warned else ""))
        typer.echo(f"model: {result.output_dir} (metrics.jsonl, loss.png, data_check/)")


@data_app.command("check")
def check(
    target: Path = typer.Argument(..., help="a training config (.yaml) or a LLaVA JSON/JSONL file"),
    overrides: Optional[list[str]] = typer.Argument(None, help="config overrides (key=value)"),
    image_root: Optional[Path] = typer.Option(None, help="data file form: folder of relative image paths"),
    model: Optional[Path] = typer.Option(None, help="data file form: model folder (tokenizer, template) "
                                                     "for the token-length checks"),
    max_length: int = typer.Option(2048, help="data file form: tokens per sample incl. image tokens"),
    out: Optional[Path] = typer.Option(None, help="report folder (default: the config's output_dir/data_check; "
                                                  "a data file's STEM.check beside it)"),
    against: Optional[list[str]] = typer.Option(
        None, "--against", help="NAME\\[@SPLIT]=ROOT, repeatable (split: test): warn about records that show this "
                                "benchmark's images or repeat its questions (as medvl curate decontaminate finds them)"),
) -> None:
    """Validate every record (structure, images, token length); write data_check.json and rejects.jsonl.
    A source with no usable record is an error (exit 2) after the report is written."""
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    from medvl.benchmarks.contamination import benchmark_reference, parse_against
    from medvl.train.validate import REJECTS_NAME, WARNINGS_NAME, count_text, require_usable

    reference = benchmark_reference(parse_against(against)) if against else None  # a bad root fails first
    report, folder, note, sources = _run_check(target, overrides or [], image_root, model, max_length, out,
                                               reference)
    table = Table(title=Text(f"data check: {target}"))
    for column in ("source", "rows", "usable", "rejected", "reasons", "warnings", "tokens mean/p95/max"):
        table.add_column(column)
    for source in report.sources:
        summary = source.summary()
        tokens = summary["tokens"]
        table.add_row(summary["name"], str(summary["rows"]), str(summary["valid"]), str(summary["rejected"]),
                      count_text(source.rejects), count_text(source.warnings),
                      f"{tokens['mean']}/{tokens['p95']}/{tokens['max']}" if tokens and tokens["max"] else "-")
    console = Console()
    console.print(table)
    if note:
        console.print(note)
    if report.benchmark_overlap is not None:
        _warn_overlap(console, sources, report.benchmark_overlap, against or [])
    # a path is printed as it is: not rich markup (`runs/[v2]` lost its `[v2]`), not wrapped at a space
    warned = f"; warnings: {folder / WARNINGS_NAME}" if report.warned else ""
    console.print(f"report: {folder / 'data_check.json'}; rejects: {folder / REJECTS_NAME}{warned}",
                  markup=False, highlight=False, soft_wrap=True)
    require_usable(report, sources)


def _warn_overlap(console: Console, sources: list[LoadedSource], overlap: dict[str, Any], against: list[str]) -> None:
    """Print the overlap warning (or that there is none) for the counts the report holds."""
    from medvl.train.overlap import overlap_warnings, removal_commands

    lines = overlap_warnings(overlap)
    if not lines:
        console.print(f"no overlap with {', '.join(overlap['benchmarks'])}")
        return
    console.print("[bold yellow]warning:[/] the training data overlaps benchmark data", highlight=False)
    for line in [*lines, "remove those records with:", *removal_commands(sources, against)]:
        console.print(f"  {line}", highlight=False, markup=False, soft_wrap=True)


def _run_check(target: Path, overrides: list[str], image_root: Optional[Path], model: Optional[Path],
               max_length: int, out: Optional[Path], reference: Optional[list[ReferenceItem]]):
    """Check the records; with `reference`, the report (written once) counts the usable ones that overlap it.

    The check holds the `RunLock` of the folder it writes into: with a config and no `--out`, the run's
    `output_dir` (a training run of that config writes the same `data_check` folder and holds that lock)."""
    from medvl.io.process import RunLock
    from medvl.train.config import DataConfig, ModelSource, SourceConfig
    from medvl.train.encode import ChatEncoder
    from medvl.train.modeling import load_processor
    from medvl.train.sources import load_source
    from medvl.train.validate import check_sources

    note = ""
    if target.suffix in (".yaml", ".yml"):
        from medvl.config import load_config
        from medvl.train.config import TrainConfig

        config = load_config(TrainConfig, target, overrides)
        data, source = config.data, config.model
        folder = out or Path(config.output_dir) / "data_check"
        owner = Path(config.output_dir) if out is None else folder
    else:
        data = DataConfig(sources=[SourceConfig(path=str(target), image_root=str(image_root) if image_root else None)],
                          max_length=max_length)
        source = ModelSource(path=str(model)) if model else None
        folder = out or target.with_name(target.stem + ".check")
        owner = folder
        if source is None:
            note = "no --model given: structure and images checked, token lengths not"
    encoder = None
    if source is not None:
        encoder = ChatEncoder(load_processor(source), data.max_length, last_turn_only=data.last_turn_only,
                              overlong=data.overlong)
    sources = [load_source(s) for s in data.sources]

    def add_overlap(report: CheckReport) -> None:  # only passed on when there is a reference
        from medvl.train.overlap import benchmark_overlap

        report.benchmark_overlap = benchmark_overlap(sources, report, reference)

    with RunLock(owner, what="training run or data check"):  # a run of the config writes the same folder
        report = check_sources(sources, encoder, data, folder, reuse=False,
                               annotate=add_overlap if reference is not None else None)
    return report, folder, note, sources


@data_app.command("convert")
def convert(
    benchmark: str = typer.Argument(..., help="vqa_rad | slake | pathvqa | pmc_vqa | ... (medvl.benchmarks)"),
    root: Path = typer.Argument(..., help="the benchmark's release folder"),
    out: Path = typer.Option(..., help="output LLaVA JSONL"),
    split: str = typer.Option("train", help="split to convert"),
    options: bool = typer.Option(True, "--options/--no-options", help="candidate answers in closed prompts"),
    concepts: bool = typer.Option(False, help="add balanced questions about each image's organ, modality and "
                                              "plane, derived from the same split's labels (medvl.train.concepts)"),
    seed: int = typer.Option(0, help="seed of the concept questions' wording and contrasts"),
) -> None:
    """Turn a benchmark split into conversations for downstream fine-tuning (LLaVA-Med style prompts)."""
    from medvl.train.convert import convert_benchmark

    result = convert_benchmark(benchmark, root, out, split=split, with_options=options, concepts=concepts, seed=seed)
    typer.echo(result.summary())
