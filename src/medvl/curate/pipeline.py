"""`run_curation`: the stages of `medvl curate run` as datatrove pipelines on a datatrove executor.

    prepare  (N tasks)  read → ingest check → filters (licence, text, medical text, image; the
                        registry `medvl.curate.filters.FILTERS`) → caption embeddings → shard
    dedup    (1 task)   exact / near image / semantic over all shards (signatures only)   [gather]
    decontaminate (1)   records vs benchmark items (only when decontaminate.enabled)      [gather]
    sample   (1 task)   class-balanced, capped, seeded selection                          [gather]
    generate (N tasks)  concept alignment, reformatting, self-instruct → durable lines per shard
    finalize (1 task)   release files in input order, rejects.jsonl, report

Before any stage (and before the output folder is made): `--until`, the sources and the models the
active filters name (`medvl.curate.filters.check_filters`) are checked, each problem one `UserError`.

Executors: `local` (datatrove `LocalPipelineExecutor`, `engine.workers` processes), `ray`
(`RayPipelineExecutor` on the cluster `ray.init` reaches: `engine.ray.address`, or a cluster the
caller already started), `slurm` (`SlurmPipelineExecutor`, stages chained with `depends`; the
command returns after submitting).

Resume: datatrove marks each finished task in `_work/logs/<stage>/completions/`; a re-run skips
finished tasks, and an unfinished generation task skips the records it already wrote. Each stage
records a fingerprint of the config it depends on (cumulative over the stages before it): when
it changed, that stage and every later one are cleared and re-run, earlier ones are reused (the
LLM cache keeps every reply, so re-generation does not pay twice for an unchanged request). Only what
a stage computes is in its fingerprint: the caption embedder's model is prepare's, semantic eps is
dedup's, so changing eps re-runs dedup without re-embedding.

Kills: the output folder takes one run at a time (a `RunLock` naming the owner's pid); the local
executor's task processes die with the main process (`medvl.curate.executor`), so a SIGKILL of the
main process alone leaves nothing running that the next run would duplicate. On Ray, the tasks die
with the driver where it runs on their machine (`RayExecutor`), and the local cluster that
`medvl.curate.executor.ensure_ray` starts dies with it; a cluster at `engine.ray.address` is never touched.

A stage that leaves no record stops the run with `CurateEmpty` (a `UserError`: exit 2) naming the
stage and its reject reasons (prepare: the inputs it read), unless `allow_empty` (then a loud warning).
An empty prepare stage leaves nothing a later run would trust: every stage is cleared (its completions
would skip the inputs once they are fixed), and an output folder this run made is removed.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from medvl.config import dump_config
from medvl.curate.config import CurateConfig
from medvl.curate.store import CurateIncomplete, RunDirs
from medvl.errors import UserError
from medvl.io.files import atomic_write_text
from medvl.llm.config import LLMConfig

__all__ = ["STAGES", "run_curation", "build_stages", "stage_fingerprints", "CurateIncomplete", "CurateEmpty"]

log = logging.getLogger("medvl.curate")

STAGES = ("prepare", "dedup", "decontaminate", "sample", "generate", "finalize")


class CurateEmpty(UserError, RuntimeError):
    """A stage left no record; the message names the stage, its rejects and `--allow-empty`."""


@dataclass
class Stage:
    name: str
    steps: list[Any]
    tasks: int
    always_run: bool = False


def stage_fingerprints(config: CurateConfig, reference_digest: str = "") -> dict[str, str]:
    """Per stage, a hash of the config it depends on, cumulative over the stages before it."""

    def generate_part() -> dict[str, Any]:
        data = config.generate.model_dump(mode="json", exclude={"window"})
        for kind in ("reformat", "self_instruct"):
            if data[kind].get("llm"):
                runtime = LLMConfig.runtime_fields()  # speed, retries, cache, cost: never a reply
                data[kind]["llm"] = {k: v for k, v in data[kind]["llm"].items() if k not in runtime}
        return data | {"image_mode": config.image_mode}

    semantic = config.dedup.semantic
    parts = {
        "prepare": config.model_dump(mode="json", include={"sources", "limit", "filter"})
        | {
            "tasks": config.engine.tasks,
            "signatures": config.needs_image_signatures,
            "embedder": [semantic.model, semantic.batch_size] if _semantic(config) else None,
        },
        "dedup": config.dedup.model_dump(mode="json"),
        "decontaminate": config.decontaminate.model_dump(mode="json") | {"reference": reference_digest},
        "sample": config.sample.model_dump(mode="json"),
        "generate": generate_part(),
        "finalize": {},
    }
    digest = hashlib.sha256()
    out = {}
    for stage in STAGES:
        digest.update(json.dumps(parts[stage], sort_keys=True).encode())
        out[stage] = digest.copy().hexdigest()[:16]
    return out


def _semantic(config: CurateConfig) -> bool:
    return config.dedup.enabled and config.dedup.semantic.enabled


def build_stages(config: CurateConfig, dirs: RunDirs) -> list[Stage]:
    from datatrove.pipeline.writers.jsonl import JsonlWriter

    from medvl.curate.decontaminate_step import DecontaminateStep
    from medvl.curate.dedup import DedupStep
    from medvl.curate.embed import CaptionEmbedder
    from medvl.curate.filters import IngestCheck, RejectWriter, build_filters
    from medvl.curate.finalize import FinalizeStep
    from medvl.curate.generate_step import GenerateStep
    from medvl.curate.ingest import SourceReader
    from medvl.curate.sampling import SampleStep

    tasks = config.engine.tasks
    rejects = str(dirs.rejects)
    prepare: list[Any] = [
        SourceReader(config.sources, config.limit),
        IngestCheck(RejectWriter(rejects, "ingest")),
        *build_filters(config, rejects),
    ]
    if _semantic(config):
        semantic = config.dedup.semantic
        prepare.append(CaptionEmbedder(semantic.model, semantic.batch_size, dirs))
    prepare.append(JsonlWriter(str(dirs.prepared), output_filename="${rank}.jsonl", compression=None))
    dedup_config = (
        config.dedup
        if config.dedup.enabled
        else config.dedup.model_copy(
            update={
                "exact_image": False,
                "exact_caption": False,
                "near_image": config.dedup.near_image.model_copy(update={"enabled": False}),
                "semantic": config.dedup.semantic.model_copy(update={"enabled": False}),
            }
        )
    )
    return [
        Stage("prepare", prepare, tasks),
        Stage("dedup", [DedupStep(dirs, tasks, dedup_config)], 1),
        Stage("decontaminate", [DecontaminateStep(dirs, tasks, config.decontaminate)], 1),
        Stage("sample", [SampleStep(dirs, tasks, config.sample)], 1),
        Stage("generate", [GenerateStep(dirs, config.generate, config.image_mode)], tasks),
        Stage("finalize", [FinalizeStep(dirs, tasks, config)], 1, always_run=True),
    ]


def _clear(dirs: RunDirs, stage: str) -> None:
    """Remove what `stage` wrote (its completions too), so it runs again from scratch."""
    shutil.rmtree(dirs.logs(stage), ignore_errors=True)
    from medvl.curate.filters import FILTERS

    for path in dirs.stage_outputs(stage, FILTERS):
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)


def _executor(config: CurateConfig, stage: Stage, dirs: RunDirs, depends: Any = None) -> Any:
    engine = config.engine
    logging_dir = str(dirs.logs(stage.name))
    skip = not stage.always_run
    common = {"tasks": stage.tasks, "logging_dir": logging_dir, "skip_completed": skip}
    if engine.executor == "local":
        from medvl.curate.executor import LocalExecutor

        return LocalExecutor(stage.steps, workers=min(engine.workers, stage.tasks), **common)
    if engine.executor == "ray":
        from medvl.curate.executor import RayExecutor

        return RayExecutor(
            stage.steps,
            workers=min(engine.workers, stage.tasks),
            cpus_per_task=engine.ray.cpus_per_task,
            mem_per_cpu_gb=engine.ray.mem_per_cpu_gb,
            **common,
        )
    from datatrove.executor.slurm import SlurmPipelineExecutor

    slurm = engine.slurm  # a partition is set: `EngineConfig` checks it
    return SlurmPipelineExecutor(
        stage.steps,
        time=slurm.time,
        partition=slurm.partition,
        cpus_per_task=slurm.cpus_per_task,
        mem_per_cpu_gb=slurm.mem_per_cpu_gb,
        workers=engine.workers,
        job_name=f"medvl-curate-{stage.name}",
        venv_path=slurm.venv_path,
        sbatch_args=dict(slurm.sbatch_args) or None,
        depends=depends,
        **common,
    )


def _left_after(dirs: RunDirs, stage: str, config: CurateConfig) -> tuple[int | None, str]:
    """(records left after `stage`, what explains it) — None where the stage does not filter."""

    def read(name: str) -> dict[str, Any] | None:
        path = dirs.work / name
        return json.loads(path.read_text(encoding="utf-8")) if path.exists() else None

    if stage == "prepare":  # its tasks' stats: what each step dropped and why, what the writer (last) wrote
        from medvl.curate.report import stage_stats

        steps = stage_stats(dirs, "prepare")
        if not steps:
            return None, ""
        inputs = ", ".join(f"sources[{i}].path {source.path} (format {source.format})"
                           for i, source in enumerate(config.sources))
        read_in = steps.get("ingest", {}).get("read", 0)
        if not read_in:
            return 0, f"no input read from {inputs}: put the inputs there or fix the path"
        reasons = {f"{step}/{metric.removeprefix('dropped_')}": n for step, metrics in steps.items()
                   for metric, n in metrics.items() if metric.startswith("dropped_")}
        top = dict(sorted(reasons.items(), key=lambda kv: -kv[1])[:6])
        return list(steps.values())[-1].get("total", 0), f"{read_in} read from {inputs}; rejects: {top}"
    if stage in ("dedup", "decontaminate"):
        counts = read(f"{stage}.json")
        return (None, "") if counts is None else (counts["kept"], f"{counts['seen']} records in")
    if stage == "sample":
        counts = read("sample.json") or {}
        return sum(counts.get("selected", {}).values()), (
            f"sampling by {counts.get('by')}: classes available {counts.get('available')}; "
            "check sample.classes against them"
        )
    return None, ""


def _check_not_empty(config: CurateConfig, dirs: RunDirs, stage: str, allow_empty: bool, fresh: bool) -> None:
    """Raise `CurateEmpty` when `stage` left no record. After prepare, clear every stage first: a later
    run would skip prepare's finished tasks, and read no input again once the inputs are fixed; in a
    `fresh` output folder (made by this run) remove all it wrote."""
    left, why = _left_after(dirs, stage, config)
    if left != 0:
        return
    message = f"stage {stage} left 0 records ({why})"
    if allow_empty:
        log.warning("%s; continuing because of --allow-empty", message.upper())
        return
    if stage == "prepare" and fresh:
        _remove_all_but_the_lock(dirs.out)
    elif stage == "prepare":
        for name in STAGES:
            _clear(dirs, name)
    raise CurateEmpty(f"{message}; fix the config, or pass --allow-empty to go on with nothing")


def _remove_all_but_the_lock(folder: Path) -> None:
    """Empty `folder` but for the run's lock file (removed when the lock is released)."""
    from medvl.io.process import LOCK_NAME

    for path in folder.iterdir():
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.name != LOCK_NAME:
            path.unlink()


def run_curation(
    config: CurateConfig,
    out_dir: str | Path,
    *,
    until: str | None = None,
    on_stage: Callable[[str, str], None] | None = None,
    allow_empty: bool = False,
    reference: list[Any] | None = None,
) -> dict[str, Any] | None:
    """Run (or resume) every stage up to `until`; return the report (None when submitted to Slurm).

    `reference`: the benchmark items (`medvl.benchmarks.contamination.ReferenceItem`) the decontaminate
    stage checks against; required when `decontaminate.enabled`. The output folder is locked for the
    whole run (`medvl.io.process.RunLock`): a second run on it is refused while this one lives.
    What the config names is checked first (`_check_settings`), before the lock creates the output folder.
    """
    from medvl.io.process import RunLock

    _check_settings(config, until, reference)
    dirs = RunDirs(Path(out_dir).resolve())
    made = not dirs.out.exists()
    fresh = made or (dirs.out.is_dir() and not any(dirs.out.iterdir()))
    try:
        with RunLock(dirs.out, "curation run"):
            return _run_stages(config, dirs, until, on_stage, allow_empty, reference, fresh)
    except CurateEmpty:
        if made:  # empty again once the lock is gone, unless a later stage's work stayed
            with contextlib.suppress(OSError):
                dirs.out.rmdir()
        raise


def _check_settings(config: CurateConfig, until: str | None, reference: list[Any] | None) -> None:
    """What the config and the arguments name, checked before anything is written or any stage runs:
    `--until`, the sources (`check_sources`), each active filter's models (`check_filters`: a prepare
    task would meet them only after the output was started, under datatrove's own error log) and the
    benchmark items decontamination needs."""
    from medvl.curate.filters import check_filters
    from medvl.curate.ingest import check_sources

    if until is not None and until not in STAGES:
        raise UserError(f"--until {until}: not a stage; choose one of {', '.join(STAGES)}")
    check_sources(config.sources)
    check_filters(config)
    if config.decontaminate.enabled and reference is None:
        raise UserError(
            "decontaminate.enabled needs the benchmark items: run it through `medvl curate run` "
            "(it loads decontaminate.benchmarks), or pass reference= to run_curation"
        )


def _run_stages(
    config: CurateConfig,
    dirs: RunDirs,
    until: str | None,
    on_stage: Callable[[str, str], None] | None,
    allow_empty: bool,
    reference: list[Any] | None,
    fresh: bool,
) -> dict[str, Any] | None:
    dirs.work.mkdir(parents=True, exist_ok=True)
    dump_config(config, dirs.out / "config.yaml")
    digest = ""
    if reference is not None and config.decontaminate.enabled:
        from medvl.curate.decontaminate_step import write_reference

        write_reference(dirs.decontaminate_reference, reference)
        digest = hashlib.sha256(dirs.decontaminate_reference.read_bytes()).hexdigest()[:16]
    fingerprints = stage_fingerprints(config, digest)
    stages = build_stages(config, dirs)
    stale = False
    for stage in STAGES:
        marker = dirs.logs(stage) / "fingerprint.txt"
        stale = stale or (marker.exists() and marker.read_text().strip() != fingerprints[stage])
        if stale:
            log.info("config of stage %s changed since the last run: clearing it", stage)
            _clear(dirs, stage)
    if config.engine.executor == "ray":
        from medvl.curate.executor import ensure_ray

        ensure_ray(config.engine.ray.address)
    previous = None
    for stage in stages:
        dirs.logs(stage.name).mkdir(parents=True, exist_ok=True)
        atomic_write_text(dirs.logs(stage.name) / "fingerprint.txt", fingerprints[stage.name])
        executor = _executor(config, stage, dirs, depends=previous)
        if config.engine.executor == "slurm":
            previous = executor
        else:
            if on_stage:
                on_stage(stage.name, "start")
            executor.run()
            incomplete = [] if stage.always_run else executor.get_incomplete_ranks()
            if incomplete:
                raise CurateIncomplete(
                    f"stage {stage.name}: tasks {incomplete[:10]} did not finish; "
                    f"see {dirs.logs(stage.name) / 'logs'} and run again to resume"
                )
            if on_stage:
                on_stage(stage.name, "done")
            _check_not_empty(config, dirs, stage.name, allow_empty, fresh)
        if stage.name == until:
            break
    if config.engine.executor == "slurm":
        previous.run()
        return None
    from medvl.curate.report import load_report

    return load_report(dirs.out) if until in (None, "finalize") else None
