"""Real kills of `medvl eval run`: SIGKILL partway, run the same command again, and the run finishes
with every item once, asks nothing it had answered, and scores as an uninterrupted run; a torn last
line (a kill during a write) is asked again, never lost; killing an `accelerate launch` run (its
launcher alone, or its process group) leaves no worker answering on, and the same command finishes it;
so it does after a kill (of the run, or of its main worker alone) while the main process merges the
part files and scores them; a SIGKILLed LLM judge pays again only for the reply it was waiting for."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from medvl.eval.config import EvalConfig
from medvl.eval.runner import run_eval
from medvl.io.jsonl import read_records
from medvl.llm.cache import ResponseCache
from medvl.llm.mock_server import MockServer, start_mock_server_process

N = 20  # items; replies come after `latency`, one at a time (batch_size 1), so a kill lands mid-run
CASE = re.compile(r"case (\d+)\b")


def env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def eval_config(tmp_path: Path, base_url: str, out: Path) -> dict:
    """Text-only open questions; the mock's reply echoes the question, so token recall is 1 or 0 by item."""
    bench = tmp_path / "bench.jsonl"
    if not bench.exists():
        bench.write_text("".join(json.dumps({"id": f"q{i:02d}", "conversations": [
            {"from": "human", "value": f"Is it the liver or the kidney? case {i}"},
            {"from": "gpt", "value": "liver" if i % 3 else "spleen"}]}) + "\n" for i in range(N)))
    return {"benchmark": {"name": "llava_jsonl", "root": str(bench)},
            "backend": {"kind": "openai", "llm": {"base_url": base_url, "model": "mock", "api_key_env": "MEDVL_NO_KEY",
                                                  "max_retries": 0}},
            "generation": {"batch_size": 1, "max_new_tokens": 8}, "output_dir": str(out), "report": False}


def uninterrupted(tmp_path: Path) -> tuple[list[dict], dict]:
    """Records and scores of the same run, never stopped (the mock's replies depend only on the request)."""
    with MockServer() as server:
        out = run_eval(EvalConfig.model_validate(eval_config(tmp_path, server.base_url, tmp_path / "whole")))
    return read_records(out / "predictions.jsonl"), json.loads((out / "scores.json").read_text())


def complete_lines(path: Path) -> list[dict]:
    data = path.read_bytes() if path.exists() else b""
    return [json.loads(line) for line in data.split(b"\n")[:-1] if line.strip()]


def wait_for(condition, process: subprocess.Popen, log: Path, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert process.poll() is None, f"it ended before the kill:\n{log.read_text()[-3000:]}"
        assert time.monotonic() < deadline, log.read_text()[-3000:]
        time.sleep(0.05)


def asked(requests: list[dict]) -> list[str]:
    """The item ids of mock requests (bodies, or log entries: the default reply echoes the question, 'case N')."""
    return [f"q{int(CASE.search(json.dumps(request)).group(1)):02d}" for request in requests]


def test_sigkill_mid_run_then_the_same_command_finishes_without_asking_again(tmp_path):
    out = tmp_path / "run"
    part = out / "predictions.part-0.jsonl"
    with start_mock_server_process(latency_s=0.25, log_path=tmp_path / "requests.jsonl") as server:
        (tmp_path / "eval.yaml").write_text(yaml.safe_dump(eval_config(tmp_path, server.base_url, out)))
        command = [sys.executable, "-m", "medvl.cli", "eval", "run", str(tmp_path / "eval.yaml")]
        with (tmp_path / "first.log").open("w") as log:
            process = subprocess.Popen(command, env=env(), stdout=log, stderr=log)
        try:
            wait_for(lambda: len(complete_lines(part)) >= 5, process, tmp_path / "first.log")
        finally:
            process.kill()
            process.wait(timeout=30)
        on_disk = [r["id"] for r in complete_lines(part)]
        assert process.returncode == -signal.SIGKILL and len(on_disk) < N
        asked_before = len(server.logged())
        # the runner's own skip, not the reply cache, must keep answered items from being asked again
        shutil.rmtree(out / "llm-cache")
        done = subprocess.run(command, env=env(), capture_output=True, text=True, timeout=180)
        assert done.returncode == 0, done.stderr[-3000:]
        asked_after = asked(server.logged()[asked_before:])
    assert sorted(asked_after) == sorted(set(asked_after)) == sorted({f"q{i:02d}" for i in range(N)} - set(on_disk))
    text = (out / "predictions.jsonl").read_text()
    assert text.endswith("\n") and not list(out.glob("*.part-*.jsonl"))
    records = [json.loads(line) for line in text.splitlines()]  # no torn line
    assert [r["id"] for r in records] == [f"q{i:02d}" for i in range(N)]  # each once, in benchmark order
    expected_records, expected = uninterrupted(tmp_path)
    scores = json.loads((out / "scores.json").read_text())
    assert records == expected_records
    assert (scores["scores"], scores["answered"], scores["skipped"]) == (expected["scores"], N, 0)
    assert 0 < scores["scores"]["open"]["token_recall"] < 1


@pytest.mark.parametrize("cut,kept", [("mid-line", 5), ("only its newline", 6)])
def test_a_torn_last_answer_is_asked_again_and_a_whole_one_kept(cut, kept, tmp_path):
    """What a kill during a write leaves: the last answer cut short is asked again; one whole but for its
    newline counts as answered (the appender used to cut it after the run had counted it done: the item
    was never asked, and the run scored 19 of 20 items as if one had been skipped)."""
    expected_records, expected = uninterrupted(tmp_path)
    out = tmp_path / "run"
    out.mkdir()
    part = out / "predictions.part-0.jsonl"
    written = "".join(json.dumps({k: v for k, v in r.items() if k not in ("correct", "metrics")}) + "\n"
                      for r in expected_records[:6])
    part.write_text(written[:-40] if cut == "mid-line" else written[:-1])
    with MockServer() as server:
        run_eval(EvalConfig.model_validate(eval_config(tmp_path, server.base_url, out)))
        again = asked(server.requests)
    assert sorted(again) == [f"q{i:02d}" for i in range(kept, N)]  # nothing answered is asked again
    records = read_records(out / "predictions.jsonl")
    scores = json.loads((out / "scores.json").read_text())
    assert records == expected_records
    assert (scores["scores"], scores["answered"], scores["skipped"]) == (expected["scores"], N, 0)


@pytest.mark.slow  # 2 launched processes and a rerun: 20-30 s on 2 busy cores
@pytest.mark.parametrize("kill", ["launcher alone", "process group"])
def test_killing_an_accelerate_launch_eval_leaves_no_worker_and_the_rerun_finishes(kill, two_cpu_processes, tmp_path):
    """torch's launcher starts each worker in its own session: neither `kill -9 <launcher>` (what the OOM
    killer does) nor `kill -9 -<its group>` reaches them, so each worker must die with its launcher; the
    orphans went on answering and wrote a whole run folder, scores and all, with no one to report to."""
    out = tmp_path / "run"
    parts = [out / f"predictions.part-{rank}.jsonl" for rank in (0, 1)]
    with start_mock_server_process(latency_s=1.0, log_path=tmp_path / "requests.jsonl") as server:
        (tmp_path / "eval.yaml").write_text(yaml.safe_dump(eval_config(tmp_path, server.base_url, out)))
        launcher = two_cpu_processes.start("eval", "run", tmp_path / "eval.yaml", env=env())
        wait_for(lambda: all(complete_lines(p) for p in parts), launcher, two_cpu_processes.log, 180)
        assert len(two_cpu_processes.workers()) == 2
        assert not two_cpu_processes.kill(kill, seconds=3), "a worker outlived its launcher"  # 8 s of work left
        on_disk = {r["id"] for p in parts for r in complete_lines(p)}
        assert len(on_disk) < N and not (out / "scores.json").exists()
        before = asked(server.logged())
        # one batch of all that is left (a setting a resumed run may change): 8 replies at a time
        rerun = [sys.executable, "-m", "medvl.cli", "eval", "run", str(tmp_path / "eval.yaml"), f"generation.batch_size={N}"]
        done = subprocess.run(rerun, env=env(), capture_output=True, text=True, timeout=180)
        assert done.returncode == 0, done.stderr[-3000:]
        after = set(asked(server.logged()[len(before):]))
    assert [r["id"] for r in read_records(out / "predictions.jsonl")] == [f"q{i:02d}" for i in range(N)]
    assert not list(out.glob("*.part-*.jsonl"))
    assert after == {f"q{i:02d}" for i in range(N)} - on_disk  # the killed run's answers are kept
    assert len(after & set(before)) <= 2  # paid for twice: only a request each worker had in flight


@pytest.mark.slow  # 2 launched processes and a rerun: 20-30 s on 2 busy cores
@pytest.mark.parametrize("kill", ["process group", "main worker"])
def test_a_kill_while_the_main_process_merges_and_scores_then_the_rerun_finishes(kill, two_cpu_processes, tmp_path):
    """Killed once every answer is in and the main process has merged the part files into predictions.jsonl
    (it is scoring then: a second or more of bootstrap intervals before it writes anything else), the run
    or its main worker alone: the same command asks nothing again and writes each item once, scored as
    an uninterrupted run."""
    out = tmp_path / "run"
    with start_mock_server_process(latency_s=0.05, log_path=tmp_path / "requests.jsonl") as server:
        (tmp_path / "eval.yaml").write_text(yaml.safe_dump(eval_config(tmp_path, server.base_url, out)))
        launcher = two_cpu_processes.start("eval", "run", tmp_path / "eval.yaml", env=env())
        wait_for((out / "predictions.jsonl").exists, launcher, two_cpu_processes.log, 180)
        assert not two_cpu_processes.kill(kill, seconds=3), "a worker outlived the kill"
        assert not (out / "scores.json").exists(), "the run finished before the kill"
        merged = complete_lines(out / "predictions.jsonl")
        assert [r["id"] for r in merged] == [f"q{i:02d}" for i in range(N)] and "correct" not in merged[0]
        first = asked(server.logged())
        shutil.rmtree(out / "llm-cache")  # the runner's own skip, not the reply cache, must ask nothing again
        done = subprocess.run([sys.executable, "-m", "medvl.cli", "eval", "run", str(tmp_path / "eval.yaml")],
                              env=env(), capture_output=True, text=True, timeout=180)
        assert done.returncode == 0, done.stderr[-3000:]
        again = asked(server.logged()[len(first):])
    assert sorted(first) == [f"q{i:02d}" for i in range(N)] and again == []  # each asked once, by the first run
    assert not list(out.glob("*.part-*.jsonl"))
    records = read_records(out / "predictions.jsonl")
    expected_records, expected = uninterrupted(tmp_path)
    assert [r["id"] for r in records] == [f"q{i:02d}" for i in range(N)] and records == expected_records
    scores = json.loads((out / "scores.json").read_text())
    assert (scores["scores"], scores["answered"], scores["skipped"]) == (expected["scores"], N, 0)


def test_judge_sigkilled_mid_run_pays_on_rerun_only_for_replies_it_had_not_received(tmp_path):
    """`medvl eval judge-open` keeps each verdict as it arrives (llm-cache/ beside the predictions): after a
    SIGKILL the same command re-sends only the request that was in flight, and writes every verdict."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "predictions.jsonl").write_text("".join(json.dumps(
        {"id": f"q{i:02d}", "answer_type": "open", "question": f"Which organ? case {i}", "answer": "liver",
         "output": "liver"}) + "\n" for i in range(N)))
    with start_mock_server_process(script=[{"text": "correct\nsame organ"}] * 2 * N, latency_s=0.25,
                                   log_path=tmp_path / "requests.jsonl") as server:
        (tmp_path / "judge.yaml").write_text(yaml.safe_dump({"llm": {
            "base_url": server.base_url, "model": "judge", "api_key_env": "MEDVL_NO_KEY", "max_concurrency": 1}}))
        command = [sys.executable, "-m", "medvl.cli", "eval", "judge-open", str(run), "--config",
                   str(tmp_path / "judge.yaml")]
        with (tmp_path / "first.log").open("w") as log:
            process = subprocess.Popen(command, env=env(), stdout=log, stderr=log)
        try:
            wait_for(lambda: len(server.logged()) >= 5, process, tmp_path / "first.log")
        finally:
            process.kill()
            process.wait(timeout=30)
        assert process.returncode == -signal.SIGKILL and not (run / "judge_open.json").exists()
        received = ResponseCache(run / "llm-cache").contains(list(server.count_by_key()))
        sent_before = set(server.count_by_key())
        done = subprocess.run(command, env=env(), capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr[-3000:]
        sent = server.count_by_key()
    assert len(received) >= 4 and len(sent_before) < N
    assert len(sent) == N and not {key for key, count in sent.items() if count > 1} - (sent_before - received)
    assert sum(sent.values()) <= N + 1  # at most the one request in flight at the kill, sent again
    summary = json.loads((run / "judge_open.json").read_text())
    assert (summary["n"], summary["judged"], summary["judge_accuracy"]) == (N, N, 1.0)
    assert [r["id"] for r in read_records(run / "judge_open.jsonl")] == [f"q{i:02d}" for i in range(N)]
