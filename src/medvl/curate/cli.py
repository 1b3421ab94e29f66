"""`medvl curate ...`: run / estimate / report a curation, label images, train the filters, decontaminate.

medvl curate run CONFIG [key=value ...] [--out DIR] [--until STAGE] [--allow-empty]
medvl curate estimate CONFIG [key=value ...] [--out DIR]
medvl curate report OUT_DIR
medvl curate label IMAGES... --model M --base-url URL [--llm LLM.yaml] [--n 10000] --out labels.jsonl
medvl curate train-classifier LABELS... --out DIR [--encoder builtin|hf:DIR|medvl:DIR]
medvl curate train-text-filter [LABELS...] --out DIR [--target-recall 0.98]
medvl curate decontaminate TRAIN.jsonl... --against NAME[@SPLIT]=ROOT ... --out DIR

Benchmark items for decontamination come through `medvl.benchmarks.contamination.benchmark_reference`
(the registry's loaders), the matcher `medvl data check --against` shares.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import List, Optional

import typer

curate_app = typer.Typer(
    help="Build PubMedVision / LLaVA-Med style training data from figure-caption pairs.", no_args_is_help=True
)

STAGE_HELP = "stop after this stage: prepare, dedup, decontaminate, sample, generate, finalize"


def _load(config: Path, overrides: Optional[List[str]], out: Optional[Path]):
    from medvl.curate.config import load_curate_config

    cfg = load_curate_config(config, overrides or [])
    target = out or (Path(cfg.output_dir) if cfg.output_dir else None)
    if target is None:
        raise typer.BadParameter("give --out DIR or set output_dir in the config", param_hint="--out")
    return cfg, target


@curate_app.command("run")
def run(
    config: Path = typer.Argument(..., help="curate config YAML (see configs/curate/)"),
    overrides: Optional[List[str]] = typer.Argument(None, help="key=value overrides, e.g. engine.tasks=8"),
    out: Optional[Path] = typer.Option(
        None, "--out", help="output folder (default: output_dir of the config)"
    ),
    until: Optional[str] = typer.Option(None, help=STAGE_HELP),
    allow_empty: bool = typer.Option(False, "--allow-empty", help="go on (with a warning) when a stage leaves 0 records"),
) -> None:
    """Run (or resume) the curation: filters, dedup, sampling, generation, release files and report."""
    from rich.console import Console

    from medvl.benchmarks.contamination import benchmark_reference
    from medvl.curate.pipeline import run_curation
    from medvl.curate.report import render_markdown

    console = Console(stderr=True)
    cfg, target = _load(config, overrides, out)
    started: dict[str, float] = {}

    def on_stage(stage: str, event: str) -> None:
        if event == "start":
            started[stage] = time.perf_counter()
            console.print(f"[bold]curate[/]: {stage} ...")
        else:
            console.print(f"[bold]curate[/]: {stage} done in {time.perf_counter() - started[stage]:.1f}s")

    reference = None
    if cfg.decontaminate.enabled:
        benchmarks = [(b.name, b.root, b.split, b.options) for b in cfg.decontaminate.benchmarks]
        if not benchmarks:
            raise typer.BadParameter("decontaminate.enabled needs decontaminate.benchmarks", param_hint="CONFIG")
        reference = benchmark_reference(benchmarks)
    report = run_curation(  # an incomplete run: CurateIncomplete, exit 3 (run the same command again)
        cfg, target, until=until, on_stage=on_stage, allow_empty=allow_empty, reference=reference
    )
    if report is None:
        typer.echo(f"stages run up to {until or 'submission'}; outputs in {target}")
        return
    typer.echo(render_markdown(report).split("![")[0].rstrip())
    typer.echo(f"\noutputs in {target} (report.md, report.png, rejects.jsonl)")


@curate_app.command("estimate")
def estimate(
    config: Path = typer.Argument(..., help="curate config YAML"),
    overrides: Optional[List[str]] = typer.Argument(None, help="key=value overrides"),
    out: Optional[Path] = typer.Option(
        None, "--out", help="output folder (the CPU stages run or resume there)"
    ),
) -> None:
    """Dry run: LLM requests, tokens and cost the generation would need (cached requests cost nothing)."""
    from medvl.curate.estimate import estimate_generation

    cfg, target = _load(config, overrides, out)
    result = estimate_generation(cfg, target)
    typer.echo(f"{result['records']} records reach generation")
    if not result["llm"]:
        typer.echo("no LLM generator is enabled: nothing to send")
    for kind, item in result["llm"].items():
        typer.echo(
            f"{kind} ({item['model']}): {item['n_requests']} requests, {item['n_cached']} cached, "
            f"{item['n_to_send']} to send; ~{item['prompt_tokens']} prompt tokens + at most "
            f"{item['max_completion_tokens']} completion tokens; at most ~${item['cost_usd']:.4f}"
        )


@curate_app.command("report")
def report(out_dir: Path = typer.Argument(..., help="output folder of a finished run")) -> None:
    """Print the report of a run (report.md; the plot is report.png next to it)."""
    from medvl.curate.report import load_report, render_markdown

    try:
        typer.echo(render_markdown(load_report(out_dir)).split("![")[0].rstrip())
    except FileNotFoundError as exc:
        raise typer.BadParameter(str(exc), param_hint="OUT_DIR") from None


@curate_app.command("label")
def label(
    images: List[Path] = typer.Argument(..., help="image files or folders (searched recursively)"),
    out: Path = typer.Option(..., "--out", help="labels JSONL (appended; rejects go to <out>.rejects.jsonl)"),
    model: Optional[str] = typer.Option(None, help="model name (overrides --llm)"),
    base_url: Optional[str] = typer.Option(None, help="OpenAI-compatible endpoint (overrides --llm)"),
    llm: Optional[Path] = typer.Option(
        None, help="LLMConfig YAML (base_url, model, limits, prices, cache_dir)"
    ),
    n: Optional[int] = typer.Option(None, min=1, help="label a seeded random sample of this many images"),
    seed: int = typer.Option(0, help="sampling seed"),
    max_side: int = typer.Option(768, min=1, help="images are downscaled to this before upload"),
) -> None:
    """Label images medical / non-medical with an MLLM (the labels train the image classifier)."""
    from medvl.config import load_config
    from medvl.curate.label import LABELS, LabelsError, collect_images, label_images, rejects_path
    from medvl.llm.config import LLMConfig

    flags = {"model": model, "base_url": base_url}  # as given, never parsed as YAML
    llm_config = load_config(LLMConfig, llm, values={k: v for k, v in flags.items() if v is not None})
    chosen = collect_images(images, n, seed)
    counts = label_images(chosen, llm_config, out, max_side=max_side)
    summary = ", ".join(f"{k}: {v}" for k, v in sorted(counts.items()))
    if not counts["already_done"] and not any(counts[label] for label in LABELS):
        raise LabelsError(f"no image was labelled ({summary}); the reasons are in {rejects_path(out)}")
    typer.echo(f"{summary} -> {out}")


@curate_app.command("train-classifier")
def train_classifier_command(
    labels: List[Path] = typer.Argument(..., help="label JSONL files (from `label`, or hand-written)"),
    out: Path = typer.Option(..., "--out", help="classifier folder (set filter.image.classifier to it)"),
    encoder: str = typer.Option(
        "builtin", help="builtin | hf:<local HF vision model folder> | medvl:<model dir>"
    ),
    val_fraction: float = typer.Option(0.2, help="held-out share for the validation accuracy"),
    threshold: float = typer.Option(0.5, help="p(medical) below which the filter rejects"),
    seed: int = typer.Option(0),
) -> None:
    """Fit a linear probe on image embeddings; report validation accuracy; save probe + metadata."""
    from medvl.curate.classifier import train_classifier
    from medvl.curate.label import read_labels
    from medvl.io.files import no_empty_folder_on_failure

    with no_empty_folder_on_failure(out):  # a bad --encoder, or one class only, leaves no empty --out behind
        result = train_classifier(
            read_labels(labels), out, encoder=encoder, val_fraction=val_fraction, threshold=threshold, seed=seed
        )
    typer.echo(result.summary())
    for path, reason in result.skipped[:10]:
        typer.echo(f"  skipped {path}: {reason}")


@curate_app.command("train-text-filter")
def train_text_filter_command(
    labels: Optional[List[Path]] = typer.Argument(
        None, help="labelled captions JSONL (text, label, optional split=test); default: the shipped set"
    ),
    out: Path = typer.Option(..., "--out", help="folder for text_filter.json (set filter.medical_text.model to it)"),
    target_recall: float = typer.Option(0.98, help="operating point: recall reached in cross-validation"),
    features: str = typer.Option(
        "lm+embedding+vocabulary",
        help="'lm+embedding+vocabulary' (an LM's hidden state, the embedding, the medical-term count, the "
             "length), 'embedding+vocabulary' or 'embedding'"
    ),
    vocabulary: Optional[Path] = typer.Option(None, help="term file for the vocabulary features (default: shipped)"),
    encoder: Optional[str] = typer.Option(None, help="sentence-transformers folder (default: all-MiniLM-L6-v2)"),
    lm: str = typer.Option("offline:smollm2", help="causal LM folder for the 'lm+' features (default: SmolLM2-135M)"),
    lm_layer: int = typer.Option(8, min=1, help="the LM's decoder layer whose hidden state is averaged"),
    c: Optional[float] = typer.Option(None, help="inverse regularisation strength (default: chosen by cross-validation)"),
) -> None:
    """Fit the learned medical-text filter; print cross-validated and held-out precision/recall."""
    from medvl.curate.text_probe import load_labelled, train_text_probe
    from medvl.io.files import no_empty_folder_on_failure

    with no_empty_folder_on_failure(out):  # a bad --encoder or --lm leaves no empty --out behind
        result = train_text_probe(load_labelled(labels or []), out, encoder=encoder, features=features,
                                  vocabulary=str(vocabulary) if vocabulary else None, lm=lm, lm_layer=lm_layer,
                                  target_recall=target_recall, c=c)
    typer.echo(f"text filter saved to {out}: {result['n_train']} training / {result['n_held_out']} held-out captions, "
               f"features {result['features']}, C {result['C']}, threshold {result['threshold']:.3f}")
    for part in ("cross_validated", "held_out"):
        if part in result:
            q = result[part]
            typer.echo(f"  {part}: precision {q['precision']} {q['precision_ci95']}, recall {q['recall']} "
                       f"{q['recall_ci95']} (tp {q['tp']}, fp {q['fp']}, fn {q['fn']})")


@curate_app.command("decontaminate")
def decontaminate_command(
    train: List[Path] = typer.Argument(..., help="LLaVA-format training files (JSONL or JSON array)"),
    against: List[str] = typer.Option(..., "--against", help="NAME\\[@SPLIT]=ROOT, repeatable (split: test)"),
    out: Path = typer.Option(..., "--out", help="folder: cleaned files, removed.jsonl, seen_items.json, report"),
    image_root: Optional[Path] = typer.Option(None, help="folder of the records' image paths (default: each file's)",
                                              exists=True, file_okay=False),
    min_inliers: int = typer.Option(50, help="keypoint matches that confirm a near-duplicate image"),
    ngram: int = typer.Option(8, help="word n-gram length for question/answer overlap"),
    min_text_overlap: float = typer.Option(0.5, help="share of a benchmark item's n-grams that counts as seen"),
) -> None:
    """Remove training records that show benchmark images or repeat benchmark questions; report per benchmark."""
    from medvl.benchmarks.contamination import Decontaminator, benchmark_reference, parse_against
    from medvl.benchmarks.near_images import NearImageConfig
    from medvl.curate.decontaminate import decontaminate_files
    from medvl.errors import UserError

    missing = [str(p) for p in train if not p.is_file()]
    if missing:
        raise UserError(f"training file(s) not found: {', '.join(missing)}")
    reference = benchmark_reference(parse_against(against))
    checker = Decontaminator(
        reference,
        ngram=ngram,
        min_text_overlap=min_text_overlap,
        image_matcher=NearImageConfig(min_inliers=min_inliers).matcher(),
    )
    summary = decontaminate_files(list(train), image_root, checker, out)
    if summary["training_records"] == 0:
        raise UserError(f"no training record could be read from {', '.join(map(str, train))}: see {out / 'removed.jsonl'}")
    typer.echo(f"{summary['training_records']} training records checked, {summary['removed']} removed "
               f"({summary['unreadable_lines']} unreadable lines, {summary['training_images_missing']} images missing)")
    for name, row in summary["benchmarks"].items():
        typer.echo(f"  {name}: {row['items_seen']} of {row['items']} items seen in training ({row['items_seen_pct']}%; "
                   f"{row['items_seen_by_image']} by image, {row['items_seen_by_text']} by text), "
                   f"{row['benchmark_images_matched']} benchmark images matched, {row['training_records_removed']} records removed")
    typer.echo(f"outputs in {out} (report.html, removed.jsonl, seen_items.json)")


def register(app: typer.Typer) -> None:
    app.add_typer(curate_app, name="curate")
