"""`medvl launch ... eval run CONFIG`: a bad eval config, a run folder another evaluation run holds or one
made with another config, a benchmark root, split or exclude_seen file that is not there, and a question
file there that the run cannot read, are one line and exit 2 before any process starts (as for `train`,
tests/train/test_train_launch.py).

`os.execv` is replaced here: it records the launcher command it was given instead of becoming it."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import yaml
from fixture_helpers import FIXTURES, copy_fixture, rewrite_json

from medvl.eval.runner import run_folder_lock

ROOT = Path(__file__).resolve().parents[2]
CPU_2PROC = ROOT / "configs" / "accelerate" / "cpu_2proc.yaml"
BENCH = FIXTURES / "llava" / "eval.jsonl"


@pytest.fixture
def launched(monkeypatch) -> list[list[str]]:
    """The launcher commands `medvl launch` would have become, in order (none started)."""
    calls: list[list[str]] = []
    monkeypatch.setenv("MEDVL_LAUNCHER_PID", "")  # exec_launcher sets it: restored after the test
    monkeypatch.setattr(os, "execv", lambda program, argv: calls.append(list(argv)))
    return calls


def eval_yaml(tmp_path: Path) -> Path:
    path = tmp_path / "eval.yaml"
    path.write_text(yaml.safe_dump({"benchmark": {"name": "llava_jsonl", "root": str(BENCH)},
                                    "backend": {"kind": "majority"}, "output_dir": str(tmp_path / "run")}))
    return path


def launch_eval(config: Path, *overrides: str, module: bool = True) -> list[str]:
    worker = ["-m", "medvl.cli"] if module else ["/venv/bin/medvl"]
    return ["launch", "accelerate", "launch", "--config_file", str(CPU_2PROC), *worker, "eval", "run", str(config),
            *overrides]


@pytest.mark.parametrize("module", [True, False], ids=["-m medvl.cli", "medvl program"])
def test_a_bad_eval_config_is_one_line_before_any_process(tmp_path, medvl, launched, module):
    good = eval_yaml(tmp_path)
    cases = [
        ((good, "benchmark.limt=3"), "benchmark.limt: unknown key"),
        ((good, "benchmark.limit=zero"), "benchmark.limit"),
        ((good, "scorer=nope"), "unknown scorer 'nope'"),
        ((tmp_path / "missing.yaml",), "missing.yaml"),
    ]
    for args, expected in cases:
        result = medvl(*launch_eval(*args, module=module))
        assert result.code == 2 and result.err.count("error:") == 1 and expected in result.err, (args, result.err)
        assert "Traceback" not in result.err
    assert launched == []
    assert not (tmp_path / "run").exists()


def test_an_eval_run_folder_held_by_another_run_is_refused(tmp_path, medvl, launched):
    argv = launch_eval(eval_yaml(tmp_path))
    out = tmp_path / "run"
    with run_folder_lock(out):  # another evaluation run is writing there
        result = medvl(*argv)
    assert result.code == 2 and result.err.count("error:") == 1, result.err
    assert f"error: {out} is in use by another evaluation run (pid {os.getpid()}" in result.err
    assert launched == []
    assert medvl(*argv).code == 0 and launched == [argv[1:]]  # once it is free, the launcher starts
    out.rmdir()  # the check took and released the lock, and left nothing in the folder
    assert medvl(*argv).code == 0 and not out.exists()  # nor makes one: a folder not there is held by no one


def test_an_eval_run_folder_made_with_another_config_is_refused(tmp_path, medvl, launched):
    config = eval_yaml(tmp_path)
    out = tmp_path / "run"
    assert medvl("eval", "run", config).code == 0  # a finished run: its config.yaml
    result = medvl(*launch_eval(config, "prompt.style=plain"))
    assert result.code == 2 and result.err.count("error:") == 1 and "Traceback" not in result.err, result.err
    assert (f"error: {out} holds a run with a different config (changed: prompt.style); use another output_dir"
            in result.err)  # what `medvl eval run` says, from the runner's own check
    assert launched == []
    same = launch_eval(config, "generation.batch_size=2")  # the same run, resumed: a setting that may change
    assert medvl(*same).code == 0 and launched == [same[1:]]


def test_inputs_not_there_or_an_output_in_the_way_are_refused_before_any_process(tmp_path, medvl, launched):
    config = eval_yaml(tmp_path)
    slake = ("benchmark.name=slake", f"benchmark.root={FIXTURES / 'slake'}")
    cases = [
        ((f"benchmark.root={tmp_path / 'gone.jsonl'}",),
         f"llava_jsonl: {tmp_path / 'gone.jsonl'} does not exist; give the path of the llava_jsonl release"),
        ((f"benchmark.root={FIXTURES / 'llava'}",), "is a folder; set benchmark.root to the JSONL (or JSON)"),
        (("benchmark.name=slake", f"benchmark.root={FIXTURES / 'vqa_rad'}"),  # another release's folder
         f"SLAKE test file not found; looked for: {FIXTURES / 'vqa_rad' / 'test.json'}; give the release's"),
        ((*slake, "benchmark.split=tset"), f"slake at {FIXTURES / 'slake'}: unknown split 'tset'"),
        ((*slake, "benchmark.options={lang: fr}"), "slake: option lang='fr' is not one of: en, zh, all"),
        (("benchmark.name=mmmu_med", f"benchmark.root={FIXTURES / 'mmmu'}", "benchmark.split=dev"),
         f"MMMU: no dev parquet for subject 'Basic_Medical_Science' under {FIXTURES / 'mmmu'}/"),
        (("benchmark.name=pathvqa", f"benchmark.root={FIXTURES / 'slake'}"),
         f"{FIXTURES / 'slake'}: neither the original PathVQA layout (qas/) nor parquet files"),
    ]
    (tmp_path / "a-file").write_text("")
    cases += [((f"output_dir={tmp_path / 'a-file' / 'run'}",), f"{tmp_path / 'a-file'} is a file, not a folder")]
    (tmp_path / "seen.json").write_text("[]")
    cases += [((f"exclude_seen={tmp_path / 'none.json'}",),
               f"exclude_seen: {tmp_path / 'none.json'} not found; `medvl curate decontaminate` writes seen_items.json"),
              ((f"exclude_seen={tmp_path / 'seen.json'}",), f"exclude_seen: {tmp_path / 'seen.json'} is a JSON list")]
    for overrides, expected in cases:
        result = medvl(*launch_eval(config, *overrides))
        assert result.code == 2 and result.err.count("error:") == 1 and expected in result.err, result.err
        assert "Traceback" not in result.err
    assert launched == [] and not (tmp_path / "run").exists()


def test_a_question_file_there_but_unreadable_is_refused_before_any_process(tmp_path, medvl, launched):
    """What each process would fail on once it loads the benchmark (each printing its error, then torch's
    launcher a ChildFailedError traceback), or answer nothing from, is one line naming the file."""
    slake = copy_fixture("slake", tmp_path)
    (slake / "test.json").write_text("[{")
    llava = tmp_path / "eval.jsonl"
    llava.write_text('"a line"\n[1, 2]\n')
    huatuo = copy_fixture("huatuo", tmp_path)
    rewrite_json(huatuo / "medical_multimodel_evaluation_data.json",
                 lambda rows: [{k: v for k, v in row.items() if k != "answer"} for row in rows])
    mmmu = copy_fixture("mmmu", tmp_path)
    parquet = mmmu / "Pharmacy" / "validation-00000-of-00001.parquet"
    parquet.write_bytes(parquet.read_bytes()[:-100])
    pmc = copy_fixture("pmc_vqa", tmp_path)
    (pmc / "test_clean.csv").write_text("Figure_path,Question,Answer\nPMC1_F1.jpg,Which?,CT\n")
    cases = [
        (("benchmark.name=slake", f"benchmark.root={slake}"), f"error: {slake / 'test.json'}: not valid JSON"),
        ((f"benchmark.root={llava}",), f"error: {llava}: none of its 2 question rows can be asked (bad_json 2); "
                                       "is this the release's own question file, downloaded whole?"),
        (("benchmark.name=huatuo_eval", f"benchmark.root={huatuo}"),
         f"{huatuo / 'medical_multimodel_evaluation_data.json'}: none of its 4 question rows can be asked "
         "(no_answer 4)"),
        (("benchmark.name=huatuo_eval", f"benchmark.root={FIXTURES / 'huatuo'}", "benchmark.options={datasets: PathVQA}"),
         "huatuo_eval: option datasets=['PathVQA'] names no known value; known: MMMU-Medical-Tracks, OmniMedVQA"),
        (("benchmark.name=mmmu_med", f"benchmark.root={mmmu}", "benchmark.split=validation"),
         f"error: {parquet}: not a readable parquet file"),
        (("benchmark.name=pmc_vqa", f"benchmark.root={pmc}"), f"{pmc / 'test_clean.csv'}: missing column(s)"),
    ]
    for overrides, expected in cases:
        result = medvl(*launch_eval(eval_yaml(tmp_path), *overrides))
        assert result.code == 2 and result.err.count("error:") == 1 and expected in result.err, result.err
        assert "Traceback" not in result.err
    assert launched == [] and not (tmp_path / "run").exists()


def test_a_real_launch_on_a_question_file_the_run_cannot_read_starts_no_process(tmp_path, two_cpu_processes):
    slake = copy_fixture("slake", tmp_path)
    (slake / "test.json").write_text("[{")
    config = eval_yaml(tmp_path)
    command = two_cpu_processes.command("eval", "run", config, "benchmark.name=slake", f"benchmark.root={slake}",
                                        through_medvl_launch=True)
    done = subprocess.run(command, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 2, done.stderr[-3000:]
    assert done.stderr.startswith(f"error: {slake / 'test.json'}: not valid JSON") and done.stderr.count("\n") == 1
    assert not (tmp_path / "run").exists()


def test_the_benchmark_check_writes_no_image(tmp_path, medvl, launched):
    mmmu = ("benchmark.name=mmmu_med", f"benchmark.root={FIXTURES / 'mmmu'}", "benchmark.split=validation",
            f"benchmark.options={{image_dir: {tmp_path / 'images'}}}")
    argv = launch_eval(eval_yaml(tmp_path), *mmmu)
    assert medvl(*argv).code == 0 and launched == [argv[1:]]
    assert not (tmp_path / "images").exists()  # the parquet's images are written by the run alone
