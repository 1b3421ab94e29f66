"""The bench harness: a fresh process per repeat with pinned threads, benches in turn, median and
spread over repeats, failures reported without hiding other benches, no worker outliving a kill."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

BENCH_DIR = Path(__file__).resolve().parents[2] / "bench"


def _bench(folder: Path, name: str, body: str) -> Path:
    """A bench script exposing `run(quick)`, like bench/*.py."""
    path = folder / f"{name}.py"
    path.write_text(textwrap.dedent(body))
    return path


COUNTING_BENCH = """
    import json, os
    from pathlib import Path

    CALLS = Path({calls!r})

    def run(quick=False):
        if "{name}" == "a":
            import torch  # as the model benches do: the worker reports torch's thread count

        calls = CALLS.read_text().splitlines() if CALLS.exists() else []
        CALLS.write_text("\\n".join(calls + ["{name}"]) + "\\n")
        repeat = sum(c == "{name}" for c in calls)
        return [
            {{"bench": "{name}", "setting": "batch 16", "ratio": [4.0, 6.0, 5.0][repeat % 3], "pid": os.getpid(),
             "omp": os.environ["OMP_NUM_THREADS"], "quick": quick, "pair": (repeat, 2 * repeat)}},
            {{"bench": "{name}", "setting": "batch 1", "ratio": 1.0}},
        ]
"""


def _args(run_all, *extra: str):
    return run_all.parse_args(["--quick", "--repeats", "3", "--threads", "1", *extra])


def test_repeats_run_in_turn_in_fresh_processes_with_pinned_threads(run_all, tmp_path):
    calls = tmp_path / "calls.txt"
    files = [_bench(tmp_path, name, COUNTING_BENCH.format(calls=str(calls), name=name)) for name in ("a", "b")]
    results = run_all.measure(_args(run_all), files, tmp_path)

    assert calls.read_text().split() == ["a", "b"] * 3  # repeat 1 of each bench, then repeat 2, ...
    entry = results["benches"]["a"]
    assert entry["repeats"] == 3 and entry["errors"] == [] and entry["torch_threads"] == [1]
    assert results["benches"]["b"]["torch_threads"] == []  # the worker itself does not load torch
    batched, single = entry["rows"]
    assert batched["case"] == {"setting": "batch 16"} and batched["repeats"] == 3
    assert batched["ratios"]["ratio"] == {"median": 5.0, "min": 4.0, "max": 6.0, "values": [4.0, 6.0, 5.0]}
    assert batched["details"]["omp"] == "1" and batched["details"]["quick"] == "True"
    assert batched["details"]["pair"] == [1, 2]  # element-wise medians
    pids = {json.loads((tmp_path / f"a-{repeat}.json").read_text())["rows"][0]["pid"] for repeat in (1, 2, 3)}
    assert len(pids) == 3 and os.getpid() not in pids
    assert single["ratios"]["ratio"]["median"] == 1.0
    assert results["mode"] == "quick" and results["threads"] == 1 and results["schema"] == run_all.SCHEMA

    table = run_all.table(results)
    assert "**5** (4-6) vs baseline | 3 |" in table
    assert "python bench/run_all.py --quick --repeats 3 --threads 1" in table
    assert "torch.get_num_threads() in the workers: 1" in table


def test_a_failing_repeat_is_reported_and_the_rest_still_counts(run_all, tmp_path):
    flaky = _bench(tmp_path, "flaky", f"""
        from pathlib import Path

        def run(quick=False):
            marker = Path({str(tmp_path / 'ran')!r})
            first = not marker.exists()
            marker.touch()
            if first:
                raise RuntimeError("the model file is gone")
            return [{{"case": "x", "ratio": 2.0}}]
    """)
    results = run_all.measure(_args(run_all), [flaky], tmp_path)

    entry = results["benches"]["flaky"]
    assert entry["repeats"] == 2 and entry["rows"][0]["repeats"] == 2
    assert len(entry["errors"]) == 1 and "repeat 1: exit 1: RuntimeError: the model file is gone" in entry["errors"][0]
    assert "| flaky | **failed** |" in run_all.table(results)


def test_rows_sharing_a_name_in_one_repeat_fail_the_bench(run_all, tmp_path):
    twins = _bench(tmp_path, "twins", """
        def run(quick=False):
            return [{"setting": "s", "ratio": 1.0}, {"setting": "s", "ratio": 2.0}]
    """)
    entry = run_all.measure(_args(run_all, "--repeats", "1"), [twins], tmp_path)["benches"]["twins"]
    assert entry["rows"] == [] and "share a case name" in entry["errors"][0]


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state not in ("Z", "X")


SLEEPER = """
    import os, subprocess, sys, time
    from pathlib import Path

    def run(quick=False):
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
        Path({pids!r}).write_text(f"{{os.getpid()}} {{child.pid}}")
        time.sleep(120)
"""


def _wait_for_pids(path: Path) -> list[int]:
    deadline = time.monotonic() + 60
    while not path.exists() or len(path.read_text().split()) < 2:
        assert time.monotonic() < deadline, "the bench never started"
        time.sleep(0.2)
    return [int(p) for p in path.read_text().split()]


def _wait_until_gone(pids: list[int]) -> None:
    deadline = time.monotonic() + 20
    while any(_alive(p) for p in pids):
        assert time.monotonic() < deadline, f"still running: {[p for p in pids if _alive(p)]}"
        time.sleep(0.2)


def test_a_timed_out_repeat_is_killed_with_what_it_started(run_all, tmp_path):
    sleeper = _bench(tmp_path, "sleeper", SLEEPER.format(pids=str(tmp_path / "pids")))
    start = time.monotonic()
    with pytest.raises(run_all.BenchFailed, match="timed out after 5 s"):
        run_all.run_repeat(sleeper, quick=True, threads=1, timeout_s=5, log=tmp_path / "sleeper.log")
    assert time.monotonic() - start < 30  # killed, not waited for
    _wait_until_gone(_wait_for_pids(tmp_path / "pids"))


def test_workers_die_when_run_all_is_killed(tmp_path):
    """SIGKILL of run_all alone (no chance to clean up): its worker and the worker's children follow."""
    sleeper = _bench(tmp_path, "sleeper", SLEEPER.format(pids=str(tmp_path / "pids")))
    code = (f"import sys; sys.path.insert(0, {str(BENCH_DIR)!r}); import run_all; from pathlib import Path; "
            f"run_all.run_repeat(Path({str(sleeper)!r}), True, 1, 600, Path({str(tmp_path / 'log')!r}))")
    parent = subprocess.Popen([sys.executable, "-c", code])
    try:
        pids = _wait_for_pids(tmp_path / "pids")
        assert all(_alive(p) for p in pids)
    finally:
        parent.kill()
        parent.wait()
    _wait_until_gone(pids)


def test_resume_reuses_finished_repeats_of_the_same_code_only(run_all, tmp_path):
    calls = tmp_path / "calls.txt"
    bench = _bench(tmp_path, "b", COUNTING_BENCH.format(calls=str(calls), name="b"))
    run_all.measure(_args(run_all, "--repeats", "2"), [bench], tmp_path)
    (tmp_path / "b-2.json").unlink()  # as if killed during repeat 2

    results = run_all.measure(_args(run_all, "--repeats", "2", "--resume"), [bench], tmp_path)
    assert calls.read_text().split() == ["b", "b", "b"] and results["benches"]["b"]["reused_repeats"] == 1
    assert results["benches"]["b"]["rows"][0]["ratios"]["ratio"]["values"] == [4.0, 5.0]
    assert "1 repeats were reused from an interrupted run" in run_all.table(results)

    bench.write_text(bench.read_text() + "\n# changed\n")  # other code: measured again
    results = run_all.measure(_args(run_all, "--repeats", "2", "--resume"), [bench], tmp_path)
    entry = results["benches"]["b"]
    assert len(calls.read_text().split()) == 5 and entry["reused_repeats"] == 0 and entry["errors"] == []


def test_mirrored_order_cancels_a_steady_drift(interleave):
    clock = iter(range(100))  # the machine slows down by one unit per measurement

    def cost(name: str, part: int) -> int:
        return {"baseline": 10, "subject": 10}[name] + next(clock)

    results = interleave.mirrored(["baseline", "subject"], [1, 2, 3, 4], cost)
    assert results == {"baseline": [10, 13, 14, 17], "subject": [11, 12, 15, 16]}  # A B, B A, A B, B A
    assert sum(results["baseline"]) == sum(results["subject"])  # equal work measures equal despite the drift
