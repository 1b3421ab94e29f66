"""`bench/run_all.py --check`: a results file that meets every floor passes, a doctored one fails
naming the floor, and a bad file gets one line; the committed bench/results.json meets the floors."""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCH_DIR = Path(__file__).resolve().parents[2] / "bench"


def _passing_results(run_all, floors) -> dict:
    """A results document, written by the harness's own aggregation, with every floor met by 10%."""
    rows: dict[str, list[dict]] = {}
    for floor in floors.FLOORS:
        value = floor.at_least * 1.1 if floor.at_least is not None else floor.at_most * 0.9
        case = floor.case or {"stage": "ingest"}
        rows.setdefault(floor.bench, []).append({"bench": floor.bench, **case, floor.key: value})
    reports = {bench: [{"rows": bench_rows, "seconds": 1.0, "torch_threads": 2}] * 3
               for bench, bench_rows in rows.items()}
    return {"schema": run_all.SCHEMA, "command": "python bench/run_all.py --quick --repeats 3 --threads 2",
            "mode": "quick", "repeats": 3, "threads": 2, "environment": {},
            "benches": {bench: run_all.aggregate(bench_reports) for bench, bench_reports in reports.items()}}


def _check(path: Path, *extra: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(BENCH_DIR.parent / "src"), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, str(BENCH_DIR / "run_all.py"), "--check", "--measured", str(path), *extra],
                          capture_output=True, text=True, env=env, timeout=120)


def _row(results: dict, bench: str, **case: str) -> dict:
    return next(row for row in results["benches"][bench]["rows"] if row["case"] == case)


def test_check_passes_when_every_floor_holds(run_all, floors, tmp_path):
    measured = tmp_path / "results.json"
    measured.write_text(json.dumps(_passing_results(run_all, floors)))
    done = _check(measured, "--reference", str(measured))
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count("\nok ") == len(floors.FLOORS) and "FAIL" not in done.stdout


def test_check_fails_on_a_ratio_below_its_floor_and_names_it(run_all, floors, tmp_path):
    reference = _passing_results(run_all, floors)
    doctored = copy.deepcopy(reference)
    _row(doctored, "generate", setting="medvl batch 16")["ratios"]["ratio"].update(median=3.9, min=3.5, max=4.4)
    (tmp_path / "reference.json").write_text(json.dumps(reference))
    (tmp_path / "doctored.json").write_text(json.dumps(doctored))

    done = _check(tmp_path / "doctored.json", "--reference", str(tmp_path / "reference.json"))
    assert done.returncode == 1
    failed = [line for line in done.stdout.splitlines() if line.startswith("FAIL")]
    assert failed == ["FAIL  generate medvl batch 16: ratio 3.9 (3.5-4.4), bound >= 4; reference 4.4 (4.4-4.4)  "
                      "(batched generation: >= 4x the one-at-a-time loop at batch 16)"]


def test_check_fails_when_a_ceiling_is_exceeded_or_a_floor_raised(run_all, floors):
    results = _passing_results(run_all, floors)
    _row(results, "curate_throughput", stage="ingest")["ratios"]["scaling"]["median"] = 2.5  # well past linear
    lines, ok = floors.check(results, None)
    assert not ok and any(line.startswith("FAIL  curate_throughput ingest: scaling 2.5") for line in lines)

    passing = _passing_results(run_all, floors)
    raised = tuple(dataclasses.replace(f, at_least=f.at_least * 1.2) if f.bench == "generate" else f
                   for f in floors.FLOORS)
    assert floors.check(passing, None)[1]
    assert not floors.check(passing, None, raised)[1]


def test_check_fails_when_a_floored_row_is_missing_and_skips_benches_not_run(run_all, floors):
    results = _passing_results(run_all, floors)
    results["benches"]["serve_load"]["rows"] = []  # e.g. the bench failed in every repeat
    del results["benches"]["eval_throughput"]  # e.g. --only without it
    lines, ok = floors.check(results, None)
    assert not ok
    assert any(line.startswith("FAIL  serve_load") and "no such row" in line for line in lines)
    assert "skip  eval_throughput: not measured" in lines

    results["benches"] = {}
    lines, ok = floors.check(results, None)
    assert not ok and lines[-1].startswith("FAIL  nothing was checked")


@pytest.mark.parametrize("content", ["not json", json.dumps({"schema": 0, "benches": {}})])
def test_check_of_a_bad_results_file_is_one_line_and_exit_2(tmp_path, content):
    bad = tmp_path / "results.json"
    bad.write_text(content)
    done = _check(bad)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.count("\n") == 1 and done.stderr.startswith(f"error: {bad}: ")


def test_committed_results_meet_the_floors(run_all, floors):
    committed = BENCH_DIR / "results.json"
    if not committed.is_file():
        pytest.skip("no bench/results.json committed yet (python bench/run_all.py writes it)")
    lines, ok = floors.check(run_all.read_results(committed), None)
    assert ok, "\n".join(lines)
