"""`run_curation`: the stages of `medvl curate run` as datatrove pipelines on a datatrove executor.

    prepare  (N tasks)  read → ingest check → text filter → image filter → caption embeddings → shard
    dedup    (1 task)   exact / pHash / SemDeDup over all shards (signatures only)   [gather]
    sample   (1 task)   class-balanced, capped, seeded selection                      [gather]
    generate (N tasks)  concept alignment, reformatting, self-instruct → durable lines per shard
    finalize (1 task)   release files in input order, rejects.jsonl, report

Executors: `local` (datatrove `LocalPipelineExecutor`, `engine.workers` processes), `ray`
(`RayPipelineExecutor` on the cluster `ray.init` reaches: `engine.ray.address`, or a cluster the
caller already started), `slurm` (`SlurmPipelineExecutor`, stages chained with `depends`; the
command returns after submitting).

Resume: datatrove marks each finished task in `_work/logs/<stage>/completions/`; a re-run skips
finished tasks, and an unfinished generation task skips the records it already wrote. Each stage
records a fingerprint of the config it depends on (cumulative over the stages before it): when
it changed, that stage and every later one are cleared and re-run, earlier ones are reused (the
LLM cache keeps every reply, so re-generation does not pay twice for an unchanged request).
"""

from __future__ import annotations

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
from medvl.io.files import atomic_write_text

__all__ = ["STAGES", "run_curation", "build_stages", "stage_fingerprints", "CurateIncomplete"]

log = logging.getLogger("medvl.curate")

STAGES = ("prepare", "dedup", "sample", "generate", "finalize")
# LLM settings that change speed or cost accounting, never a reply: not part of the fingerprint.
_LLM_RUNTIME_KEYS = {
    "max_concurrency",
    "requests_per_minute",
    "tokens_per_minute",
    "timeout_s",
    "max_retries",
    "backoff_initial_s",
    "backoff_max_s",
    "bad_response_retries",
    "cache_dir",
    "price_input_per_mtok",
    "price_output_per_mtok",
    "image_token_estimate",
    "api_key_env",
}


@dataclass
class Stage:
    name: str
    steps: list[Any]
    tasks: int
    always_run: bool = False


def stage_fingerprints(config: CurateConfig) -> dict[str, str]:
    """Per stage, a hash of the config it depends on, cumulative over the stages before it."""

    def generate_part() -> dict[str, Any]:
        data = config.generate.model_dump(mode="json", exclude={"window"})
        for kind in ("reformat", "self_instruct"):
            if data[kind].get("llm"):
                data[kind]["llm"] = {k: v for k, v in data[kind]["llm"].items() if k not in _LLM_RUNTIME_KEYS}
        return data | {"image_mode": config.image_mode}

    parts = {
        "prepare": config.model_dump(mode="json", include={"sources", "limit", "text_filter", "image_filter"})
        | {
            "tasks": config.engine.tasks,
            "phash": config.dedup.enabled and config.dedup.phash.enabled,
            "semantic": config.dedup.semantic.model_dump(mode="json") if _semantic(config) else None,
        },
        "dedup": config.dedup.model_dump(mode="json"),
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

    from medvl.curate.dedup import CaptionEmbedder, DedupStep
    from medvl.curate.filters import ImageFilter, IngestCheck, RejectWriter, TextFilter
    from medvl.curate.finalize import FinalizeStep
    from medvl.curate.generate_step import GenerateStep
    from medvl.curate.ingest import SourceReader
    from medvl.curate.sampling import SampleStep

    tasks = config.engine.tasks
    rejects = str(dirs.rejects)
    prepare: list[Any] = [
        SourceReader(config.sources, config.limit),
        IngestCheck(RejectWriter(rejects, "ingest")),
    ]
    if config.text_filter.enabled:
        prepare.append(TextFilter(config.text_filter, RejectWriter(rejects, "text")))
    if config.image_filter.enabled:
        phash = config.dedup.enabled and config.dedup.phash.enabled
        prepare.append(ImageFilter(config.image_filter, phash, RejectWriter(rejects, "image")))
    if _semantic(config):
        prepare.append(CaptionEmbedder(config.dedup.semantic, dirs))
    prepare.append(JsonlWriter(str(dirs.prepared), output_filename="${rank}.jsonl", compression=None))
    dedup_config = (
        config.dedup
        if config.dedup.enabled
        else config.dedup.model_copy(
            update={
                "exact_image": False,
                "exact_caption": False,
                "phash": config.dedup.phash.model_copy(update={"enabled": False}),
                "semantic": config.dedup.semantic.model_copy(update={"enabled": False}),
            }
        )
    )
    return [
        Stage("prepare", prepare, tasks),
        Stage("dedup", [DedupStep(dirs, tasks, dedup_config)], 1),
        Stage("sample", [SampleStep(dirs, tasks, config.sample)], 1),
        Stage("generate", [GenerateStep(dirs, config.generate, config.image_mode)], tasks),
        Stage("finalize", [FinalizeStep(dirs, tasks, config)], 1, always_run=True),
    ]


def _clear(dirs: RunDirs, stage: str) -> None:
    """Remove what `stage` wrote (its completions too), so it runs again from scratch."""
    shutil.rmtree(dirs.logs(stage), ignore_errors=True)
    targets: dict[str, list[Path]] = {
        "prepare": [
            dirs.prepared,
            *dirs.rejects.glob("ingest-*"),
            *dirs.rejects.glob("text-*"),
            *dirs.rejects.glob("image-*"),
        ],
        "dedup": [*dirs.rejects.glob("dedup-*"), dirs.work / "dedup.json"],
        "sample": [dirs.selected, dirs.work / "sample.json"],
        "generate": [dirs.generated, dirs.images],
        "finalize": [],
    }
    for path in targets[stage]:
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
        from datatrove.executor import LocalPipelineExecutor

        return LocalPipelineExecutor(stage.steps, workers=min(engine.workers, stage.tasks), **common)
    if engine.executor == "ray":
        from datatrove.executor.ray import RayPipelineExecutor

        return RayPipelineExecutor(
            stage.steps,
            workers=min(engine.workers, stage.tasks),
            cpus_per_task=engine.ray.cpus_per_task,
            mem_per_cpu_gb=engine.ray.mem_per_cpu_gb,
            **common,
        )
    from datatrove.executor.slurm import SlurmPipelineExecutor

    slurm = engine.slurm
    if slurm.partition is None:
        raise ValueError("engine.executor=slurm needs engine.slurm.partition")
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


def _ensure_ray(config: CurateConfig) -> None:
    import ray

    if not ray.is_initialized():
        ray.init(address=config.engine.ray.address, include_dashboard=False, log_to_driver=False)


def run_curation(
    config: CurateConfig,
    out_dir: str | Path,
    *,
    until: str | None = None,
    on_stage: Callable[[str, str], None] | None = None,
) -> dict[str, Any] | None:
    """Run (or resume) every stage up to `until`; return the report (None when submitted to Slurm)."""
    dirs = RunDirs(Path(out_dir).resolve())
    dirs.work.mkdir(parents=True, exist_ok=True)
    dump_config(config, dirs.out / "config.yaml")
    fingerprints = stage_fingerprints(config)
    stages = build_stages(config, dirs)
    if until is not None and until not in STAGES:
        raise ValueError(f"until must be one of {STAGES}, got {until!r}")
    stale = False
    for stage in STAGES:
        marker = dirs.logs(stage) / "fingerprint.txt"
        stale = stale or (marker.exists() and marker.read_text().strip() != fingerprints[stage])
        if stale:
            log.info("config of stage %s changed since the last run: clearing it", stage)
            _clear(dirs, stage)
    if config.engine.executor == "ray":
        _ensure_ray(config)
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
        if stage.name == until:
            break
    if config.engine.executor == "slurm":
        previous.run()
        return None
    from medvl.curate.report import load_report

    return load_report(dirs.out) if until in (None, "finalize") else None
