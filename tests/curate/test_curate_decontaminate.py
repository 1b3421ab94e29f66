"""Decontamination: VQA-RAD's own train split against its test split (they share 202 images by
design), text overlap, the report files, and the optional stage of `medvl curate run`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from medvl.cli import build_app
from medvl.benchmarks.contamination import Decontaminator, ReferenceItem, TrainingSample, ngrams
from medvl.curate.pipeline import run_curation

VQA_RAD = Path(__file__).resolve().parents[2] / "data" / "vqa-rad"
TEST_PHRASES = ("test_freeform", "test_para")


def _vqa_rad_rows() -> list[dict]:
    return json.loads((VQA_RAD / "VQA_RAD Dataset Public.json").read_text())


def test_text_overlap_needs_long_enough_shared_ngrams():
    item = ReferenceItem("b", "test", "1", (), "What is the abnormality seen in the left lower lobe of the lung", "pneumonia")
    checker = Decontaminator([item], ngram=8, min_text_overlap=0.5, check_images=False)
    copied = TrainingSample("t1", [], ["Q: what is the abnormality seen in the LEFT lower lobe of the lung? A: pneumonia"])
    other = TrainingSample("t2", [], ["What is the abnormality seen in the right kidney?"])
    found = checker.check(copied)
    assert [(c.kind, c.item_ids, c.overlap) for c in found] == [("text", ["1"], round(6 / 7, 4))]  # "A:" breaks one
    assert checker.check(other) == []
    short = ReferenceItem("b", "test", "2", (), "Is this an MRI?", "yes")
    assert ngrams(f"{short.question} {short.answer}", 8) == set()  # short questions: by image only


def test_vqa_rad_train_split_against_its_test_split(tmp_path: Path):
    """The demo fine-tunes on VQA-RAD train: decontamination finds the test images it shares."""
    runner = CliRunner()
    train = tmp_path / "vqa_rad_train.jsonl"
    converted = runner.invoke(
        build_app(), ["data", "convert", "vqa_rad", str(VQA_RAD), "--split", "train", "--out", str(train)]
    )
    assert converted.exit_code == 0, converted.output
    records = [json.loads(line) for line in train.read_text().splitlines()][:240]
    train.write_text("".join(json.dumps(r) + "\n" for r in records) + "{broken\n")
    rows = _vqa_rad_rows()
    test_images = {r["image_name"] for r in rows if r["phrase_type"] in TEST_PHRASES}
    shared = {Path(r["image"][0]).name for r in records} & test_images
    out = tmp_path / "decontaminated"
    result = runner.invoke(
        build_app(), ["curate", "decontaminate", str(train), "--against", f"vqa_rad={VQA_RAD}", "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    row = report["benchmarks"]["vqa_rad/test"]
    assert row["benchmark_images_matched"] == len(shared) > 20
    assert report["unreadable_lines"] == 1 and report["training_records"] == 240
    removed = [json.loads(line) for line in (out / "removed.jsonl").read_text().splitlines()]
    kept = [json.loads(line) for line in (out / "vqa_rad_train.jsonl").read_text().splitlines()]
    assert len(removed) == row["training_records_removed"] + 1 and len(kept) + len(removed) == 241
    by_image = [r for r in removed if "decontamination" in r and r["decontamination"][0]["kind"] == "image"]
    assert {Path(r["image"][0]).name for r in by_image} == shared
    assert all(Path(r["image"][0]).name not in test_images for r in kept)
    seen = json.loads((out / "seen_items.json").read_text())["vqa_rad/test"]
    assert len(seen) == row["items_seen"] and row["items_seen_pct"] > 0
    page = (out / "report.html").read_text()
    assert page.count("data:image/jpeg;base64,") >= 2 * min(len(by_image), 100) and "vqa_rad/test" in page
    assert (out / "report.png").stat().st_size > 5_000


def test_decontaminate_needs_readable_training_data(tmp_path: Path):
    (tmp_path / "bad.jsonl").write_text("{broken\n")
    result = CliRunner().invoke(
        build_app(), ["curate", "decontaminate", str(tmp_path / "bad.jsonl"), "--against", f"vqa_rad={VQA_RAD}",
                      "--out", str(tmp_path / "out")]
    )
    assert result.exit_code != 0


def test_pipeline_stage_drops_records_showing_benchmark_images(corpus: Path, curate_config, tmp_path: Path):
    benchmark_image = str(corpus / "figures" / "p4_fig4.png")
    reference = [ReferenceItem("toy", "test", "q1", (benchmark_image,), "What organ is shown?", "thyroid")]
    config = curate_config(corpus, "decontaminate.enabled=true")
    with pytest.raises(Exception, match="needs the benchmark items"):
        run_curation(config, tmp_path / "none")
    report = run_curation(config, tmp_path / "out", reference=reference)
    assert report["rejects"]["decontaminate/benchmark_image"] == 1
    assert report["decontamination"]["benchmarks"]["toy/test"]["items_seen"] == 1
    assert report["funnel"]["decontaminate"] == report["funnel"]["dedup"] - 1
    rejects = [json.loads(line) for line in (tmp_path / "out" / "rejects.jsonl").read_text().splitlines()]
    (dropped,) = [r for r in rejects if r["stage"] == "decontaminate"]
    assert dropped["id"] == "p4_fig4.png" and dropped["matched"][0]["item_ids"] == ["q1"]
    assert (tmp_path / "out" / "decontamination" / "report.html").is_file()
    assert "## Decontamination" in (tmp_path / "out" / "report.md").read_text()


def test_a_rerun_decontaminate_task_ignores_its_own_earlier_rejects(corpus: Path, curate_config, tmp_path: Path):
    """A decontaminate task run again (as after a kill) finds the same records, not only those its earlier
    attempt had not reached yet: its own reject file is not a list of records dropped before it."""
    from medvl.curate.decontaminate_step import DecontaminateStep
    from medvl.curate.store import RunDirs

    reference = [ReferenceItem("toy", "test", "q1", (str(corpus / "figures" / "p4_fig4.png"),), "Organ?", "thyroid")]
    config = curate_config(corpus, "decontaminate.enabled=true")
    run_curation(config, tmp_path / "out", reference=reference)
    dirs = RunDirs((tmp_path / "out").resolve())
    rejects = dirs.rejects / "decontaminate-00000.jsonl"
    before = rejects.read_text()
    assert '"p4_fig4.png"' in before
    DecontaminateStep(dirs, config.engine.tasks, config.decontaminate).run()
    assert rejects.read_text() == before


_REPORTS_TOGETHER = """
import multiprocessing, sys
import matplotlib.pyplot  # loaded once, before forking
from medvl.curate.decontaminate_report import write_decontamination_report

row = {"items": 10, "items_seen": 1, "items_seen_pct": 10.0, "items_seen_by_image": 1, "items_seen_by_text": 0,
       "benchmark_images_matched": 1, "training_records_removed": 1}
SUMMARY = {"training_records": 5, "removed": 1, "benchmarks": {"vqa_rad/test": row, "slake/test": row}}

def write(out, barrier):
    barrier.wait()
    write_decontamination_report(out, SUMMARY, [], [])

if __name__ == "__main__":
    fork = multiprocessing.get_context("fork")
    for trial in range(int(sys.argv[2])):
        barrier = fork.Barrier(2)
        writers = [fork.Process(target=write, args=(f"{sys.argv[1]}/{trial}", barrier)) for _ in range(2)]
        for writer in writers:
            writer.start()
        for writer in writers:
            writer.join()
            assert writer.exitcode == 0, f"start {trial}: a writer failed"
"""


def test_two_processes_writing_one_report_folder_both_finish(tmp_path: Path):
    # the figure went through a fixed temporary name (.report.png.tmp.png): one process renamed the
    # other's half-written file into place and that one crashed renaming its own (36 of 80 writers)
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-c", _REPORTS_TOGETHER, str(tmp_path), "10"], capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    for trial in range(10):
        folder = tmp_path / str(trial)
        assert sorted(p.name for p in folder.iterdir()) == ["report.html", "report.json", "report.png"]
        assert (folder / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _text_checker() -> Decontaminator:
    item = ReferenceItem("b", "test", "1", (), "What is the abnormality seen in the left lower lobe of the lung", "pneumonia")
    return Decontaminator([item], ngram=8, min_text_overlap=0.5, check_images=False)


def _training_file(path: Path, questions: list[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    records = [{"id": str(i), "image": [], "conversations": [{"from": "human", "value": q}, {"from": "gpt", "value": "a"}]}
               for i, q in enumerate(questions)]
    path.write_text("".join(json.dumps(record) + "\n" for record in records))
    return path


def test_decontaminate_never_writes_over_a_training_file_or_two_inputs_into_one(tmp_path: Path):
    from medvl.curate.decontaminate import decontaminate_files
    from medvl.errors import UserError

    train = _training_file(tmp_path / "data" / "train.jsonl", ["What is in the left lower lobe of the lung?"])
    original = train.read_text()
    with pytest.raises(UserError, match="would overwrite the input"):
        decontaminate_files([train], None, _text_checker(), train.parent)  # --out: the input's own folder
    assert train.read_text() == original
    other = _training_file(tmp_path / "more" / "train.json", ["Is this an MRI?"])
    with pytest.raises(UserError, match="would both be cleaned into"):
        decontaminate_files([train, other], None, _text_checker(), tmp_path / "out")
    removed_named = _training_file(tmp_path / "x" / "removed.jsonl", ["Is this an MRI?"])
    with pytest.raises(UserError, match="the removed records' file"):
        decontaminate_files([removed_named], None, _text_checker(), tmp_path / "out")
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_a_run_that_fails_midway_leaves_the_previous_outputs_whole(tmp_path: Path, monkeypatch):
    from medvl.curate.decontaminate import decontaminate_files

    questions = ["What is the abnormality seen in the left lower lobe of the lung? pneumonia",
                 *[f"Question {i} about the image?" for i in range(5)]]
    train, out = _training_file(tmp_path / "train.jsonl", questions), tmp_path / "out"
    decontaminate_files([train], None, _text_checker(), out)
    before = {path.name: path.read_bytes() for path in out.iterdir()}
    assert before["train.jsonl"].count(b"\n") == 5 and before["removed.jsonl"].count(b"\n") == 1

    checker, calls = _text_checker(), []
    real_check = checker.check

    def check_then_die(sample):  # the run dies on the fourth record (a kill, an OOM, a bad image)
        calls.append(sample)
        if len(calls) == 4:
            raise RuntimeError("killed")
        return real_check(sample)

    monkeypatch.setattr(checker, "check", check_then_die)
    with pytest.raises(RuntimeError, match="killed"):
        decontaminate_files([train], None, checker, out)
    assert {path.name: path.read_bytes() for path in out.iterdir()} == before  # no half file, no leftovers
