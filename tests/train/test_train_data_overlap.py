"""`medvl data check --against`: the benchmark-overlap warning on real VQA-RAD records (its train and
test splits share 202 images by design), counted exactly as `medvl curate decontaminate` counts them."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from medvl.cli import build_app
from medvl.demo.run import finetune_data

VQA_RAD = Path(__file__).resolve().parents[2] / "data" / "vqa-rad"
# demo records that repeat a test question's 8-grams (found by decontaminate on the whole train split)
TEXT_OVERLAPS = {"vqa_rad-train-964", "vqa_rad-train-1113", "vqa_rad-train-1770", "vqa_rad-train-1850"}


def _demo_records(tmp_path: Path) -> list[dict]:
    finetune_data(VQA_RAD, tmp_path)
    return [json.loads(line) for line in (tmp_path / "vqa_rad_train.jsonl").read_text().splitlines()]


def _write(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def _check(*args: str):
    return CliRunner().invoke(build_app(), ["data", "check", *args], env={"COLUMNS": "250"})


def test_data_check_counts_the_overlap_decontaminate_removes(tmp_path: Path):
    records = _demo_records(tmp_path)
    subset = [r for i, r in enumerate(records) if i % 90 == 0 or r["id"] in TEXT_OVERLAPS]
    train = _write(tmp_path / "subset.jsonl", subset)
    against = f"vqa_rad={VQA_RAD}"

    checked = _check(str(train), "--against", against, "--out", str(tmp_path / "check"))
    cleaned = CliRunner().invoke(build_app(), ["curate", "decontaminate", str(train), "--against", against,
                                               "--out", str(tmp_path / "decontaminated")])
    assert checked.exit_code == 0 and cleaned.exit_code == 0, checked.output + cleaned.output
    overlap = json.loads((tmp_path / "check" / "data_check.json").read_text())["benchmark_overlap"]
    removed = json.loads((tmp_path / "decontaminated" / "report.json").read_text())
    assert overlap["benchmarks"] == removed["benchmarks"]
    assert overlap["removed"] == removed["removed"] and overlap["training_records"] == len(subset)
    row = overlap["benchmarks"]["vqa_rad/test"]
    assert row["items_seen_by_image"] > 10 and row["items_seen_by_text"] >= 2 and row["benchmark_images"] == 203
    assert "warning: the training data overlaps benchmark data" in checked.output and f"{row['training_records_removed']} of {len(subset)} usable records" in checked.output
    assert f"{row['benchmark_images_matched']} of 203 benchmark images" in checked.output
    assert f"medvl curate decontaminate {train} --against {against}" in checked.output


def test_records_on_train_only_images_give_no_warning(tmp_path: Path, monkeypatch):
    from medvl.train import validate

    written = []  # the report is written once, with the overlap in it
    real_write = validate.atomic_write_json
    monkeypatch.setattr(validate, "atomic_write_json",
                        lambda path, obj, **kw: written.append(sorted(obj)) or real_write(path, obj, **kw))
    rows = json.loads((VQA_RAD / "VQA_RAD Dataset Public.json").read_text())
    test_images = {r["image_name"] for r in rows if r["phrase_type"] in ("test_freeform", "test_para")}
    records = [r for r in _demo_records(tmp_path) if Path(r["image"][0]).name not in test_images]
    clean = _write(tmp_path / "clean.jsonl", records[::25])
    result = _check(str(clean), "--against", f"vqa_rad={VQA_RAD}", "--out", str(tmp_path / "check"))
    assert result.exit_code == 0, result.output
    assert "overlaps benchmark data" not in result.output and "no overlap with vqa_rad/test" in result.output
    overlap = json.loads((tmp_path / "check" / "data_check.json").read_text())["benchmark_overlap"]
    assert overlap["removed"] == 0 and overlap["training_records"] == len(records[::25]) > 10
    assert written == [["benchmark_overlap", "fingerprint", "sources", "totals", "version"]]


def test_a_bad_benchmark_is_one_line_before_any_checking(color_data: Path, tmp_path: Path, monkeypatch, capsys):
    from medvl.cli import main

    def medvl_exit(*args: str) -> tuple[int, str]:  # through main: a UserError is one line and exit 2
        monkeypatch.setattr(sys, "argv", ["medvl", "data", "check", str(color_data), *args])
        with pytest.raises(SystemExit) as exit_info:
            main()
        return exit_info.value.code, capsys.readouterr().err

    code, error = medvl_exit("--against", f"vqa_rad={tmp_path / 'nowhere'}", "--out", str(tmp_path / "a"))
    assert code == 2 and "nowhere does not exist" in error and len(error.strip().splitlines()) == 1
    assert not (tmp_path / "a").exists()  # the benchmark is loaded before any record is checked
    code, error = medvl_exit("--against", "vqa_rad", "--out", str(tmp_path / "b"))
    assert code == 2 and "expected NAME[@SPLIT]=ROOT" in error


def test_printed_paths_and_commands_survive_odd_folder_names(tmp_path: Path):
    """A folder with spaces, brackets, non-ASCII and a literal `$HOME`: the report line shows the path
    as it is (not read as rich markup, not wrapped at a space) and the removal command, pasted into a
    shell, gets back the same file, benchmark spec and output folder."""
    import shlex

    folder = tmp_path / "runs [v2]" / "é 图像 $HOME"
    folder.mkdir(parents=True)
    train = _write(folder / "my train.jsonl", _demo_records(tmp_path)[:60])
    against, out = f"vqa_rad={VQA_RAD}", folder / "check"
    result = CliRunner().invoke(build_app(), ["data", "check", str(train), "--against", against, "--out", str(out)],
                                env={"COLUMNS": "80"})
    assert result.exit_code == 0, result.output
    assert f"report: {out / 'data_check.json'}; rejects: {out / 'rejects.jsonl'}" in result.output
    command = next(line for line in result.output.splitlines() if "medvl curate decontaminate" in line)
    assert shlex.split(command) == ["medvl", "curate", "decontaminate", str(train), "--against", against,
                                    "--out", str(folder / "my train.decontaminated")]

