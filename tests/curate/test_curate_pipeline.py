"""The whole pipeline: shipped sample config on real PubMed figures, independence from the number of
tasks, and config changes that re-run exactly the stages they affect."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

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


def test_relative_paths_come_from_the_config_file_or_from_the_working_directory_for_overrides(
        tmp_path: Path, monkeypatch):
    """A path written in the file is the file's folder's; one typed in an override (`medvl curate run
    configs/curate/pubmedvision.yaml filter.image.classifier=runs/med-classifier`) is the shell's."""
    configs, work = tmp_path / "my configs" / "é 图像", tmp_path / "work"
    configs.mkdir(parents=True)
    work.mkdir()
    (configs / "c.yaml").write_text("sources: [{format: pairs, path: ../figures.jsonl}]\n"
                                    "filter: {text: {vocabulary: terms.txt}}\noutput_dir: out/\n")
    monkeypatch.chdir(work)
    from_file = load_curate_config(configs / "c.yaml")
    assert Path(from_file.sources[0].path) == configs.parent / "figures.jsonl"
    assert Path(from_file.filter["text"].vocabulary) == configs / "terms.txt"
    overridden = load_curate_config(configs / "c.yaml", ["filter.image.classifier=runs/clf",
                                                         "sources=[{format: pairs, path: mine.jsonl}]"])
    assert Path(overridden.sources[0].path) == work / "mine.jsonl"
    assert Path(overridden.filter["image"].classifier) == work / "runs" / "clf"
    assert Path(overridden.filter["text"].vocabulary) == configs / "terms.txt"
    assert Path(overridden.output_dir) == configs / "out"


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


def test_datatrove_lines_stay_in_the_task_logs(corpus, curate_config, tmp_path, capfd, monkeypatch):
    """medvl prints its own progress and report; datatrove's pipeline listing and per-step stats go to each
    task's log file only (MEDVL_LOG=DEBUG brings them back)."""
    monkeypatch.delenv("MEDVL_LOG", raising=False)
    run_curation(curate_config(corpus), tmp_path / "out")
    console = capfd.readouterr().err
    assert "Launching pipeline" not in console and "Stats" not in console, console[-2000:]
    logs = [path.read_text() for path in (tmp_path / "out" / "_work" / "logs").rglob("task_*.log")]
    assert logs and all("Launching pipeline" in log and "Stats" in log for log in logs)
    monkeypatch.setenv("MEDVL_LOG", "DEBUG")
    run_curation(curate_config(corpus, "generate.concept.cutoff_words=20"), tmp_path / "out")
    assert "Stats" in capfd.readouterr().err


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


def test_slurm_without_a_partition_is_refused_with_the_config(corpus, tmp_path, medvl):
    """It was a ValueError traceback when the first stage's executor was built, after the output folder was made."""
    config = tmp_path / "curate.yaml"
    config.write_text(f"sources: [{{format: pmc_jsonl, path: '{corpus / 'figures.jsonl'}'}}]\nengine: {{executor: slurm}}\n")
    outcome = medvl("curate", "run", config, "--out", tmp_path / "out")
    assert outcome.code == 2 and "Traceback" not in outcome.err, outcome.err
    assert outcome.err.strip() == (f"error: invalid config ({config}): engine: engine.executor=slurm needs "
                                   "engine.slurm.partition: the partition to submit the stages to (sinfo lists them)")
    assert not (tmp_path / "out").exists()


def test_a_stage_that_leaves_nothing_fails_loudly_unless_allowed(corpus, curate_config, tmp_path):
    from medvl.curate.pipeline import CurateEmpty

    # configs/curate/llava_med.yaml on data without its five domains selected 0 records and exited 0
    config = curate_config(corpus, "sample.by=domain", "sample.classes=[chest_xray,ct_scan,gross,histology,mri]")
    with pytest.raises(CurateEmpty, match=r"stage sample left 0 records .*radiology.*--allow-empty"):
        run_curation(config, tmp_path / "out")
    report = run_curation(config, tmp_path / "out", allow_empty=True)
    assert report["funnel"]["selected"] == 0
    nothing = curate_config(corpus, "filter.text.min_medical_terms=50")
    with pytest.raises(CurateEmpty, match=r"stage prepare left 0 records .*text filter/too_few_medical_terms"):
        run_curation(nothing, tmp_path / "out2")


def test_what_prepare_left_comes_from_its_stats_not_from_re_reading_the_records(
        corpus, curate_config, tmp_path, monkeypatch):
    from medvl.curate.pipeline import _left_after
    from medvl.curate.store import RunDirs

    config = curate_config(corpus)
    run_curation(config, tmp_path / "out")
    dirs = RunDirs((tmp_path / "out").resolve())
    prepared = sum(len(path.read_text().splitlines()) for path in dirs.prepared.glob("*.jsonl"))
    read: list[Path] = []
    for name in ("read_bytes", "read_text", "open"):
        def recorded(self, *args, _original=getattr(Path, name), **kwargs):
            read.append(self)
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(Path, name, recorded)
    left, why = _left_after(dirs, "prepare", config)
    assert left == prepared > 0 and "text filter/too_few_medical_terms" in why
    assert not [path for path in read if dirs.prepared in path.parents or dirs.rejects in path.parents]


def test_changing_eps_reruns_dedup_without_re_embedding(corpus, curate_config, tmp_path):
    config = curate_config(corpus)
    changed = curate_config(corpus, "dedup.semantic.eps=0.3", "dedup.semantic.verify=false")
    before, after = stage_fingerprints(config), stage_fingerprints(changed)
    assert before["prepare"] == after["prepare"] and before["dedup"] != after["dedup"]
    other_model = curate_config(corpus, "dedup.semantic.model=/nowhere/model")
    assert stage_fingerprints(other_model)["prepare"] != before["prepare"]
    out = tmp_path / "out"
    run_curation(config, out, until="dedup")
    embeddings = (out / "_work" / "prepared" / "emb-00000.f16").stat().st_mtime_ns
    run_curation(changed, out, until="dedup")
    assert (out / "_work" / "prepared" / "emb-00000.f16").stat().st_mtime_ns == embeddings


def test_licence_subset_with_counts_and_provenance_on_every_record(corpus, curate_config, tmp_path):
    lines = (corpus / "figures.jsonl").read_text().splitlines()
    lines = [line.replace('"cc-by"', '"cc-by-nc-nd"') if '"pdf_hash": "p5"' in line or '"pdf_hash": "p6"' in line else line for line in lines]
    (corpus / "figures.jsonl").write_text("\n".join(lines) + "\n")
    report = run_curation(curate_config(corpus, "filter.licence.allow=[CC-BY, CC0]"), tmp_path / "out")
    assert report["rejects"]["licence/licence_not_allowed"] == 2
    assert report["licence"]["input"]["LicenseRef-CC-BY-NC-ND"] == 2
    assert "LicenseRef-CC-BY-NC-ND" not in report["licence"]["selected"]
    assert report["licence"]["generated"] == {"LicenseRef-CC-BY": report["generated"]["concept"]}
    records = [json.loads(line) for line in (tmp_path / "out" / "concept_alignment.jsonl").read_text().splitlines()]
    assert records and all(
        r["licence"] == "LicenseRef-CC-BY" and r["source"] == "synth" and r["figure_id"] and "pmcid" in r for r in records
    )
    assert "Records per licence (SPDX)" in (tmp_path / "out" / "report.md").read_text()


def test_a_folder_in_use_is_refused_and_free_again_after_the_run(corpus, curate_config, tmp_path):
    from medvl.io.process import LOCK_NAME, FolderInUse, RunLock

    out = tmp_path / "out"
    holder = f"in use by another curation run \\(pid {os.getpid()}"
    with RunLock(out, "curation run"), pytest.raises(FolderInUse, match=holder):
        run_curation(curate_config(corpus), out)
    assert not (out / "_work").exists()  # refused before writing anything
    run_curation(curate_config(corpus), out)
    assert not (out / LOCK_NAME).exists()
