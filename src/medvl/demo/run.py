"""The demo's steps, each resumable: a finished step leaves `.steps/<name>.json` and is skipped.

Everything is written under `output_dir` (one demo at a time: `run_demo` holds its `RunLock`):
`curate/`, `data/`, `model-init/`, `align/`, `instruct/`, `finetune/` (the final model),
`eval/<protocol>-<system>/`, and `report.html`. The visual prior (a
distilled ViT tower) lives in medvl's cache, keyed by its settings, so a second demo reuses it.
Training stages run a fixed number of epochs, saving a resume checkpoint every `save_every_steps`;
once a stage is done, its resume checkpoints and the weights of the stage before it are deleted
(only the next step needs them), which keeps a finished demo's folder to the final model, its logs
and the evaluation outputs. A killed demo (its process group, or the main process alone: the demo
runs in one process) resumes where it stopped when run again: finished steps are skipped, a
training stage resumes from its last checkpoint, an evaluation asks only the unanswered questions,
and the temporary files of writes it was killed in are deleted (tests/demo/test_demo_kill.py).
"""

from __future__ import annotations

import json
import logging
import shlex
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from rich.console import Console
from rich.markup import escape
from transformers import TrainerCallback

from medvl.demo.config import DemoConfig, StageBudget, repo_data
from medvl.errors import UserError
from medvl.io.files import atomic_write_json, no_empty_folder_on_failure, remove_partial_writes
from medvl.io.jsonl import write_jsonl
from medvl.io.process import LOCK_NAME, RunLock

if TYPE_CHECKING:
    from medvl.train.config import TrainConfig

__all__ = ["run_demo", "EVAL_RUNS", "TRAIN_STAGES", "build", "data_source", "finetune_data", "train_stage",
           "stage_config", "visual_prior"]

log = logging.getLogger("medvl.demo")
console = Console(stderr=True)
TRAIN_STAGES = ("align", "instruct", "finetune")
# (protocol, system): the model; the majority answer; the same model without the image (question-only)
# and with each question shown another test item's image (shuffled: a seeded derangement)
EVAL_RUNS = [(protocol, system) for protocol in ("open_closed", "choice")
             for system in ("model", "majority", "question_only", "shuffled")]
USE_IMAGES: dict[str, bool | str] = {"model": True, "majority": True, "question_only": False, "shuffled": "shuffled"}


class WallClockCap(TrainerCallback):
    """Stops training (and saves) once `minutes` of wall time have passed: the explicit `max_minutes` option."""

    def __init__(self, minutes: float):
        self.seconds = minutes * 60
        self.start = time.monotonic()

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.start = time.monotonic()

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if time.monotonic() - self.start > self.seconds:
            control.should_training_stop = True


class StepEstimate(TrainerCallback):
    """Prints a stage's step budget as it starts and, after a few steps, how long the rest should take."""

    def __init__(self, stage: str, after: int = 5):
        self.stage, self.after = stage, after
        self.first: tuple[int, float] | None = None

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        console.print(f"[bold]demo[/]: {self.stage}: {state.max_steps} optimizer steps "
                      f"({args.num_train_epochs:g} epochs, batch {args.per_device_train_batch_size})")

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.first is None:
            self.first = (state.global_step, time.monotonic())
        elif state.global_step == self.first[0] + self.after < state.max_steps:
            per_step = (time.monotonic() - self.first[1]) / self.after
            left = (state.max_steps - state.global_step) * per_step
            console.print(f"[bold]demo[/]: {self.stage}: {per_step:.2f} s/step here, about {left / 60:.1f} min "
                          f"for the remaining {state.max_steps - state.global_step} steps")


def run_demo(config: DemoConfig, fresh: bool = False) -> Path:
    """Run (or resume; `fresh`: start over) the demo in `config.output_dir`, holding its `RunLock`:
    a second demo on the folder is refused while this one lives. Curation, training and evaluation
    lock their own folders, but a second demo would write `model-init/` and prune weights under
    this one, and `fresh` would delete its folder."""
    out = Path(config.output_dir)
    with no_empty_folder_on_failure(out), RunLock(out, what="demo"):  # a wrong --vqa-rad leaves no folder
        if fresh:
            _empty(out)
        for partial in remove_partial_writes(out):  # left by a killed demo: none can be writing now
            console.print(f"[dim]demo: removed {escape(str(partial))}, a write a killed run left unfinished[/]")
        return _run_steps(config, out)


def _empty(out: Path) -> None:
    """Delete everything in `out` but its lock file (deleting that would let a second demo in)."""
    for path in out.iterdir():
        if path.name == LOCK_NAME:
            continue
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()


def _run_steps(config: DemoConfig, out: Path) -> Path:
    from medvl.benchmarks import load_benchmark

    vqa_rad = Path(config.vqa_rad) if config.vqa_rad else repo_data("vqa-rad", "--vqa-rad")
    load_benchmark("vqa_rad", vqa_rad, split="test")  # a wrong --vqa-rad fails now, not after the curate step
    summaries: dict[str, dict[str, Any]] = {}
    steps: list[tuple[str, Callable[[], dict[str, Any]]]] = [
        ("curate", lambda: curate(config, out)),
        ("data", lambda: finetune_data(vqa_rad, out / "data", concepts=config.concepts, seed=config.seed)),
        ("prior", lambda: visual_prior(config, vqa_rad)),
        ("build", lambda: build(config, out / "model-init", summaries["prior"].get("folder"))),
        ("align", lambda: train_stage(config, "align", out / "model-init", [_curated(out, "concept_alignment")],
                                      config.align, out / "align")),
        ("instruct", lambda: train_stage(config, "instruct", out / "align", _instruct_sources(out),
                                         config.instruct, out / "instruct")),
        ("finetune", lambda: train_stage(config, "finetune", out / "instruct",
                                         [data_source(out / "data" / "vqa_rad_train.jsonl")],
                                         config.finetune, out / "finetune")),
        *[(f"eval-{p}-{s}", lambda p=p, s=s: evaluate(config, vqa_rad, out, p, s)) for p, s in EVAL_RUNS],
    ]
    started = time.monotonic()
    for name, fn in steps:
        summaries[name] = _run_step(out, name, fn)
        prune(out)
    from medvl.demo.report import write_report

    minutes = (time.monotonic() - started) / 60
    report = write_report(config, out, summaries, minutes=minutes)
    model = shlex.quote(str(out / "finetune"))
    console.print(f"\n[bold green]done[/] in {minutes:.1f} min — report: {escape(str(report))}")
    console.print(f"chat:  medvl chat {model}\nserve: medvl serve {model}  (OpenAI API on 127.0.0.1:8000)\n"
                  f"vLLM:  vllm serve {model}", markup=False, highlight=False, soft_wrap=True)
    return report


def prune(out: Path) -> None:
    """Delete what no remaining step needs: a finished stage's resume checkpoints, and a stage's
    weights once the stage after it has finished. Safe to call after every step (idempotent)."""
    inputs = {"align": "model-init", "instruct": "align", "finetune": "instruct"}
    for stage, previous in inputs.items():
        if not (out / ".steps" / f"{stage}.json").is_file():
            continue
        for checkpoint in (out / stage).glob("checkpoint-*"):
            shutil.rmtree(checkpoint, ignore_errors=True)
        for weights in (out / previous).glob("*.safetensors*"):
            weights.unlink()


def _run_step(out: Path, name: str, fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    marker = out / ".steps" / f"{name}.json"
    if marker.is_file():
        console.print(f"[dim]demo: {name} already done (resuming)[/]")
        return json.loads(marker.read_text())
    console.print(f"[bold]demo[/]: {name} ...")
    start = time.monotonic()
    summary = {**fn(), "seconds": round(time.monotonic() - start, 1)}
    atomic_write_json(marker, summary)
    console.print(f"[bold]demo[/]: {name} done in {summary['seconds']:.0f}s")
    return summary


def curate(config: DemoConfig, out: Path) -> dict[str, Any]:
    from medvl.curate.config import CurateConfig
    from medvl.curate.pipeline import run_curation

    figures = Path(config.figures) if config.figures else repo_data("figures-sample", "--figures")
    if (figures / "sample.jsonl").is_file():
        source = {"format": "pmc_jsonl", "path": str((figures / "sample.jsonl").resolve()), "name": figures.name}
    elif (figures / "figures.jsonl").is_file():
        source = {"format": "pairs", "path": str((figures / "figures.jsonl").resolve()), "id_key": "id",
                  "name": figures.name}
    elif figures.is_file():
        source = {"format": "pairs", "path": str(figures.resolve()), "name": figures.stem}
    else:
        raise UserError(f"{figures}: expected a PMC-style folder (sample.jsonl), a folder with figures.jsonl, "
                        "or an image/caption JSONL file")
    generate: dict[str, Any] = {"concept": {"enabled": True}}
    if config.reformat_llm is not None:
        generate["reformat"] = {"enabled": True, "llm": config.reformat_llm.model_dump()}
    curate_config = CurateConfig.model_validate({
        "sources": [source], "generate": generate, "engine": {"executor": "local", "tasks": 1},
    })
    report = run_curation(curate_config, out / "curate")
    return {"figures": str(figures), "report": report}


def finetune_data(vqa_rad: Path, data_dir: Path, concepts: bool = False, seed: int = 0) -> dict[str, Any]:
    """VQA-RAD train split as conversations, phrased as the evaluation asks: short-answer prompts for
    every question, plus the lettered multiple-choice form of each yes/no question; `concepts` adds
    the balanced organ/modality/plane questions derived from the same split (medvl.train.concepts)."""
    from medvl.benchmarks import closed_as_choice, default_prompt, load_benchmark
    from medvl.train.concepts import concept_items

    train = load_benchmark("vqa_rad", vqa_rad, split="train")
    extra, stats = concept_items(train.items, "vqa_rad", seed=seed) if concepts else ([], None)
    items = [*train.items, *extra]
    records = [item.to_record(default_prompt(item, "short"), item.answer.strip()) for item in items]
    choice_items, _ = closed_as_choice(items)
    records += [item.to_record(default_prompt(item), item.answer_letter, id_suffix="-choice") for item in choice_items]
    write_jsonl(data_dir / "vqa_rad_train.jsonl", records)
    return {"train_questions": len(train.items), "concept_questions": len(extra), "records": len(records),
            "choice_records": len(choice_items), "missing_images": len(train.missing_images),
            "test_overlap": split_overlap(train, vqa_rad), **({"concepts": stats.to_json()} if stats else {})}


def split_overlap(train: Any, vqa_rad: Path) -> dict[str, int]:
    """How much of VQA-RAD test the train split shows: the test images that are train images too (the same
    files: the splits share images by design) and the test questions asked on them."""
    from medvl.benchmarks import load_benchmark

    test = load_benchmark("vqa_rad", vqa_rad, split="test")
    train_images = {path for item in train.items for path in item.images}
    test_images = {path for item in test.items for path in item.images}
    return {"test_images": len(test_images), "shared_images": len(test_images & train_images),
            "test_questions": len(test.items),
            "questions_on_shared_images": sum(1 for item in test.items if set(item.images) & train_images)}


def visual_prior(config: DemoConfig, vqa_rad: Path) -> dict[str, Any]:
    """Distil the teacher into the demo's tower on the VQA-RAD train-split images (cached by settings)."""
    if config.model.vision.path is not None:
        return {"skipped": f"model.vision.path is set: the pretrained tower {config.model.vision.path} is used"}
    if not config.prior.enabled:
        return {"skipped": "prior.enabled=false: the tower starts from random weights"}
    from medvl.benchmarks import load_benchmark
    from medvl.model.prior import PriorConfig, cached_prior

    if not isinstance(config.model.vision_feature_layer, int):
        raise UserError("the demo's prior matches one tower layer: set model.vision_feature_layer to an integer")
    train_images = sorted({path for item in load_benchmark("vqa_rad", vqa_rad, split="train").items
                           for path in item.images})
    settings = config.prior
    prior_config = PriorConfig(
        teacher=settings.teacher, tower=config.model.vision, feature_layer=config.model.vision_feature_layer,
        images=[*train_images, *settings.extra_images], views_per_image=settings.views_per_image,
        epochs=settings.epochs, batch_size=settings.batch_size, lr=settings.lr, seed=config.seed)
    console.print(f"[bold]demo[/]: prior: {settings.teacher} → a {config.model.vision.num_layers}-layer ViT, "
                  f"{len(prior_config.images)} image sources × {settings.views_per_image} views, "
                  f"{settings.epochs} epochs")
    folder, cached = cached_prior(prior_config, progress=lambda line: console.print(f"[dim]{line}[/]"))
    if cached:
        console.print(f"[bold]demo[/]: prior: reusing the cached tower {folder}")
    record = json.loads((folder / "prior.json").read_text())
    return {"folder": str(folder), "cached": cached, "teacher": settings.teacher, "images": len(record["images"]),
            "unreadable_skipped": len(record.get("skipped", [])),  # towers cached before it was recorded: none
            "views": record["views"], "steps": record["steps"], "final_loss": record["final_loss"],
            "teacher_seconds": record["teacher_seconds"], "student_seconds": record["student_seconds"]}


def build(config: DemoConfig, folder: Path, tower: str | None) -> dict[str, Any]:
    from medvl.model.build import build_model
    from medvl.model.checkpoint import save_model

    spec = config.model if tower is None else config.model.model_copy(
        update={"vision": config.model.vision.model_copy(update={"path": tower})})
    model, processor = build_model(spec, "model")
    save_model(model, processor, folder)
    counts = {name: sum(p.numel() for p in module.parameters()) for name, module in
              (("vision", model.model.vision_tower), ("projector", model.model.multi_modal_projector),
               ("llm", model.model.language_model))}
    return {"parameters": counts, "image_tokens": model.config.image_seq_length}


def data_source(path: Path, image_root: Path | None = None) -> dict[str, Any]:
    """A training data source (`medvl.train.config.SourceConfig` fields) for `train_stage`: a LLaVA
    JSON/JSONL file and the folder its relative image paths are resolved against."""
    return {"path": str(path), **({"image_root": str(image_root)} if image_root else {})}


def _curated(out: Path, name: str) -> dict[str, Any]:
    return data_source(out / "curate" / f"{name}.jsonl", out / "curate" / "images")


def _instruct_sources(out: Path) -> list[dict[str, Any]]:
    """Instruction data from curation (PubMedVision's two sets when an LLM made them), else the
    concept-alignment records again."""
    sources = [_curated(out, name) for name in ("alignment", "instruction")
               if (out / "curate" / f"{name}.jsonl").is_file() and (out / "curate" / f"{name}.jsonl").stat().st_size]
    return sources or [_curated(out, "concept_alignment")]


def train_stage(config: DemoConfig, stage: str, start: Path, sources: list[dict[str, Any]], budget: StageBudget,
                folder: Path) -> dict[str, Any]:
    from medvl.train.runner import run_training

    train_config = stage_config(config, stage, start, sources, budget, folder)
    callbacks: list[TrainerCallback] = [StepEstimate(stage)]
    if budget.max_minutes is not None:
        callbacks.append(WallClockCap(budget.max_minutes))
    result = run_training(train_config, callbacks=callbacks)
    return {"stage": stage, "steps": result.global_step, "final_loss": result.final_loss,
            "samples_per_epoch": result.samples_per_epoch, "epochs": budget.epochs,
            "max_minutes": budget.max_minutes, "data": result.data.to_json()["totals"]}


def stage_config(config: DemoConfig, stage: str, start: Path, sources: list[dict[str, Any]], budget: StageBudget,
                 folder: Path) -> TrainConfig:
    """The `medvl train` config of one demo stage: `budget`'s settings on `sources`."""
    from medvl.train.config import TrainConfig

    return TrainConfig.model_validate({
        "stage": stage,
        "model": {"path": str(start)},
        "trainable": {"vision": budget.train_vision, "embeddings": budget.train_embeddings},
        "data": {"sources": sources, "max_length": config.max_length, "seed": config.seed},
        "optim": {"lr": budget.lr, "projector_lr": budget.projector_lr, "epochs": budget.epochs,
                  "batch_size": budget.batch_size, "scheduler": "constant_with_warmup", "warmup_ratio": 0.05},
        "precision": config.precision,
        "save": {"every_steps": config.save_every_steps, "keep": 1},
        "logging": {"every_steps": 2, "report_to": ["tensorboard"]},
        "output_dir": str(folder),
        "seed": config.seed,
    })


def evaluate(config: DemoConfig, vqa_rad: Path, out: Path, protocol: str, system: str) -> dict[str, Any]:
    from medvl.eval.config import EvalConfig
    from medvl.eval.runner import run_eval

    run_dir = out / "eval" / f"{protocol}-{system}"
    eval_config = EvalConfig.model_validate({
        "benchmark": {"name": "vqa_rad", "root": str(vqa_rad), "split": "test", "limit": config.eval_limit,
                      "protocol": "choice" if protocol == "choice" else "native"},
        "backend": {"kind": "majority"} if system == "majority" else {"kind": "local", "model": str(out / "finetune")},
        "use_images": USE_IMAGES[system],
        "shuffle_seed": config.seed,
        "generation": {"max_new_tokens": config.eval_max_new_tokens, "batch_size": config.eval_batch_size},
        "extra_scorers": ["llava_med_run_eval_batch"] if protocol == "open_closed" else ["huatuo_match_choice3"],
        "output_dir": str(run_dir),
    })
    run_eval(eval_config)
    scores = json.loads((run_dir / "scores.json").read_text())
    return {"protocol": protocol, "system": system, "run_dir": str(run_dir), "scores": scores["scores"],
            "compat": scores.get("compat", {}), "answered": scores.get("answered")}
