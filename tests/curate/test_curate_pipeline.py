"""The whole pipeline: shipped sample config on real PubMed figures, independence from the number of
tasks, and config changes that re-run exactly the stages they affect."""

from __future__ import annotations

import json
from pathlib import Path

from medvl.curate.config import load_curate_config
from medvl.curate.pipeline import run_curation, stage_fingerprints
from medvl.records import record_problems

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "curate"
RELEASE = (
    "alignment.jsonl",
    "instruction.jsonl",
    "concept_alignment.jsonl",
    "self_instruct.jsonl",
    "rejects.jsonl",
)


def release(out: Path) -> dict[str, str]:
    return {name: (out / name).read_text() for name in RELEASE}


def test_sample_config_on_shared_pmc_figures(shared_dir: Path, tmp_path: Path):
    config = load_curate_config(CONFIGS / "sample.yaml")
    assert (
        Path(config.sources[0].path)
        == (shared_dir / "data" / "pmc-figures-sample" / "sample.jsonl").resolve()
    )
    report = run_curation(config, tmp_path / "out")
    out = tmp_path / "out"
    assert report["funnel"]["read"] == 10
    assert report["rejects"] == {"image/image_too_small": 2}  # 684x260 and 734x328 are under 336 px
    concept = [json.loads(line) for line in (out / "concept_alignment.jsonl").read_text().splitlines()]
    assert len(concept) == report["generated"]["concept"] == report["funnel"]["dedup"]
    assert all(record_problems(r) == [] and (out / "images" / r["image"][0]).is_file() for r in concept)
    assert not any(r["conversations"][1]["value"].startswith("Figure") for r in concept)
    assert (out / "alignment.jsonl").read_text() == ""
    skipped = {s["step"] for s in report["skipped"]}
    assert {"medical-image classifier", "generate reformat", "generate self_instruct"} <= skipped
    assert "configs/curate/pubmedvision.yaml" in (out / "report.md").read_text()
    assert (out / "report.png").stat().st_size > 10_000
    assert sum(report["modality"]["input"].values()) == 10


def test_outputs_do_not_depend_on_the_number_of_tasks(corpus, curate_config, tmp_path):
    outputs = []
    for tasks in (1, 3):
        config = curate_config(
            corpus, f"engine.tasks={tasks}", "sample.by=modality", "sample.cap_per_class=2"
        )
        run_curation(config, tmp_path / f"out{tasks}")
        outputs.append(release(tmp_path / f"out{tasks}"))
    assert outputs[0] == outputs[1]
    assert outputs[0]["concept_alignment.jsonl"].count("\n") >= 5


def test_config_changes_rerun_only_the_affected_stages(corpus, curate_config, tmp_path):
    out = tmp_path / "out"
    config = curate_config(corpus)
    run_curation(config, out)
    before = release(out)
    prepared = (out / "_work" / "prepared" / "00000.jsonl").stat().st_mtime_ns
    run_curation(config, out)  # nothing changed: every task is skipped, the release files are the same
    assert release(out) == before
    assert (out / "_work" / "prepared" / "00000.jsonl").stat().st_mtime_ns == prepared
    changed = curate_config(corpus, "generate.concept.cutoff_words=5")
    assert stage_fingerprints(changed)["sample"] == stage_fingerprints(config)["sample"]
    assert stage_fingerprints(changed)["generate"] != stage_fingerprints(config)["generate"]
    run_curation(changed, out)
    assert (out / "_work" / "prepared" / "00000.jsonl").stat().st_mtime_ns == prepared
    kinds = [json.loads(line)["kind"] for line in (out / "concept_alignment.jsonl").read_text().splitlines()]
    assert set(kinds) == {"detailed"}
    stricter = curate_config(corpus, "filter.text.min_medical_terms=6")
    report = run_curation(stricter, out)
    assert report["rejects"]["text/too_few_medical_terms"] > 1


def test_slurm_stages_are_chained_array_jobs(corpus, curate_config, tmp_path):
    """Only constructed (no Slurm here): each stage depends on the previous one, sharded as configured."""
    from medvl.curate.pipeline import _executor, build_stages
    from medvl.curate.store import RunDirs

    config = curate_config(corpus, "engine.executor=slurm", "engine.tasks=8", "engine.slurm.partition=cpu")
    dirs = RunDirs(tmp_path / "out")
    previous = None
    for stage in build_stages(config, dirs):
        previous = _executor(config, stage, dirs, depends=previous)
        assert previous.job_name == f"medvl-curate-{stage.name}" and previous.partition == "cpu"
    assert previous.world_size == 1 and previous.depends.world_size == 8  # finalize <- generate (8 tasks)
