"""Kill `medvl curate run` with SIGKILL (during prepare, then during generation), start it again:
the output equals an uninterrupted run, and no request whose reply had been received is sent again.

Both the run and the mock OpenAI server are separate processes; the server logs every request it
receives (at arrival) with its cache key. What is guaranteed, precisely:
- every reply received before the kill is in the response cache (committed on arrival), so its
  request is never sent again;
- a request in flight at the kill (sent, reply not yet stored) is sent once more by the next run:
  at most `max_concurrency` per LLM client, here 2 clients x 3.

The kill comes two ways: to the whole process group (a user's Ctrl-C / `kill -9 -PGID`) and to the
main process alone (what the OOM killer does), with `engine.workers=2`: then no process of the run
may survive it (the task processes die with the main one; the next run is refused while a writer of
the folder lives), and the requests sent stay within one `max_concurrency` per running task per kill.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import yaml

from medvl.llm.mock_server import start_mock_server_process

N_RECORDS = 36
CONCURRENCY = 3


def write_config(path: Path, corpus: Path, base_url: str, reformat: bool = True, tasks: int = 2,
                 workers: int = 1) -> Path:
    llm = {"base_url": base_url, "model": "mock", "max_concurrency": CONCURRENCY, "max_retries": 2}
    config = {
        "sources": [{"format": "pmc_jsonl", "path": str(corpus / "figures.jsonl"), "name": "synth"}],
        "dedup": {"semantic": {"enabled": False}},
        "generate": {
            "concept": {"enabled": True},
            "reformat": {"enabled": reformat, "llm": llm, "image_max_side": 96},
            "self_instruct": {"enabled": True, "llm": llm, "few_shot": 1},
        },
        "engine": {"tasks": tasks, "workers": workers},
    }
    path.write_text(yaml.safe_dump(config))
    return path


def start_run(config: Path, out: Path, stderr: Any = None) -> subprocess.Popen:
    """Start a run in its own session; its error lines go to `stderr` (default: appended to a file
    beside `out`, which `errors_of` reads back when a run ended when it should not have)."""
    env = {**os.environ, "MEDVL_LOG": "WARNING"}
    command = [sys.executable, "-m", "medvl.cli", "curate", "run", str(config), "--out", str(out)]
    with contextlib.ExitStack() as files:
        if stderr is None:
            stderr = files.enter_context(open(_stderr_log(out), "ab"))  # the child keeps its own copy
        return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=stderr, env=env,
                                start_new_session=True)  # its session id is its pid: all it starts can be found


def finish_uninterrupted(config: Path, out: Path) -> None:
    """Run to the end, uninterrupted; a failure shows the run's own error lines."""
    run = start_run(config, out, stderr=subprocess.PIPE)
    _, errors = run.communicate(timeout=300)
    assert run.returncode == 0, errors.decode(errors="replace")[-3000:]


def _stderr_log(out: Path) -> Path:
    return out.with_name(out.name + ".stderr")


def errors_of(out: Path) -> str:
    """What the runs on `out` started by `start_run` printed to stderr (the last 3000 characters)."""
    log = _stderr_log(out)
    return log.read_text(errors="replace")[-3000:] if log.is_file() else ""


def kill_when(process: subprocess.Popen, ready, timeout: float = 240, group: bool = True) -> bool:
    """SIGKILL the run's process group (or, `group=False`, its main process alone) once `ready()`
    holds; False if the run ended first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return False
        if ready():
            os.killpg(process.pid, signal.SIGKILL) if group else process.kill()
            process.wait()
            return True
        time.sleep(0.05)
    raise TimeoutError("the run never reached the kill point")


def session_processes(session: int) -> list[int]:
    """Live processes (any thread still running) whose session id is `session`."""
    from medvl.io.process import running

    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[3]) == session and running(int(stat.parent.name)):
            found.append(int(stat.parent.name))
    return found


def survivors(session: int, grace_s: float = 10.0) -> list[int]:
    """The run's processes still alive `grace_s` after its main process died (killed, then, so that
    a failing test leaves nothing behind)."""
    deadline = time.monotonic() + grace_s
    while (left := session_processes(session)) and time.monotonic() < deadline:
        time.sleep(0.1)
    for pid in left:
        os.kill(pid, signal.SIGKILL)
    return left


def generated_lines(out: Path) -> int:
    return sum(p.read_bytes().count(b"\n") for p in (out / "_work" / "generate").glob("*.jsonl"))


def cached_keys(out: Path) -> set[str]:
    path = out / "_work" / "llm-cache" / "replies.sqlite3"
    with sqlite3.connect(path) as conn:
        return {row[0] for row in conn.execute("SELECT key FROM replies")}


@pytest.mark.slow
def test_sigkill_then_resume_matches_an_uninterrupted_run(tmp_path: Path, large_corpus):
    corpus = large_corpus(tmp_path / "corpus", N_RECORDS)
    log = tmp_path / "requests.jsonl"
    server = start_mock_server_process(responder="medvl.curate.mock:responder", latency_s=0.15, log_path=log)
    with server:
        config = write_config(tmp_path / "curate.yaml", corpus, server.base_url)
        finish_uninterrupted(config, tmp_path / "reference")
        reference_keys = server.count_by_key()
        assert sum(reference_keys.values()) == 2 * N_RECORDS and set(reference_keys.values()) == {1}

        out = tmp_path / "killed"
        sent_before = len(server.logged())
        assert kill_when(start_run(config, out), lambda: (out / "_work" / "prepared").is_dir()), errors_of(out)
        assert kill_when(start_run(config, out), lambda: generated_lines(out) >= 8), errors_of(out)
        cached_at_kill = cached_keys(out)
        assert 0 < len(cached_at_kill) < 2 * N_RECORDS
        final = start_run(config, out)
        assert final.wait(timeout=300) == 0, errors_of(out)
        sent = Counter(entry["key"] for entry in server.logged()[sent_before:])
        sent_total = len(server.logged())
        assert start_run(config, out).wait(timeout=300) == 0, errors_of(out)  # a finished run re-run sends nothing
        assert len(server.logged()) == sent_total

    assert _release(out) == _release(tmp_path / "reference")
    assert set(sent) == set(reference_keys)  # the same requests, no others
    assert all(sent[key] == 1 for key in cached_at_kill)  # a received reply is never paid twice
    resent = [key for key, n in sent.items() if n > 1]
    assert all(sent[key] == 2 for key in resent) and len(resent) <= 2 * CONCURRENCY


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/stat").is_file(), reason="finds the run's processes in /proc")
def test_killing_only_the_main_process_leaves_no_worker_and_re_pays_nothing_finished(tmp_path: Path, large_corpus):
    n_records, tasks, workers, kills = 48, 4, 2, 3
    corpus = large_corpus(tmp_path / "corpus", n_records)
    log = tmp_path / "requests.jsonl"
    server = start_mock_server_process(responder="medvl.curate.mock:responder", latency_s=0.5, log_path=log)
    with server:
        config = write_config(tmp_path / "curate.yaml", corpus, server.base_url, reformat=False, tasks=tasks,
                              workers=workers)
        finish_uninterrupted(config, tmp_path / "reference")
        unique = server.count_by_key()
        assert sum(unique.values()) == n_records and set(unique.values()) == {1}

        out, sent_before, rng = tmp_path / "killed", len(server.logged()), random.Random(0)
        at_kills: list[tuple[int, set[str]]] = []  # (requests logged, replies cached) at each kill
        for kill in range(kills):
            run, at = start_run(config, out), generated_lines(out) + rng.randint(1, 8)
            if kill == 0:  # while it generates (paused meanwhile), a second run on the folder is refused
                _wait_for(lambda: generated_lines(out) >= 1 or run.poll() is not None)
                assert run.poll() is None, f"the run ended early (exit {run.returncode}): {errors_of(out)}"
                os.killpg(run.pid, signal.SIGSTOP)
                second = start_run(config, out, stderr=subprocess.PIPE)
                _, err = second.communicate(timeout=120)
                try:
                    os.killpg(run.pid, signal.SIGCONT)
                except ProcessLookupError:  # only SIGKILL ends a stopped process: the OOM killer's way
                    pytest.fail(f"the paused run died (exit {run.wait(timeout=10)}; the second run: exit "
                                f"{second.returncode}, {err.decode(errors='replace')[-500:]!r}): {errors_of(out)}")
                assert second.returncode == 2, err.decode()
                assert f"in use by another curation run (pid {run.pid}" in err.decode()
                assert len(err.decode().strip().splitlines()) == 1
            assert kill_when(run, lambda: generated_lines(out) >= at, group=False), f"the run ended before the kill: {errors_of(out)}"
            assert survivors(run.pid) == []  # no task process, pool helper or manager outlives the main one
            at_kills.append((len(server.logged()), cached_keys(out)))
        final = start_run(config, out)
        assert final.wait(timeout=300) == 0, errors_of(out)
        logged = server.logged()
        sent = Counter(entry["key"] for entry in logged[sent_before:])

    assert _release(out) == _release(tmp_path / "reference")
    assert set(sent) == set(unique)
    for logged_at_kill, received in at_kills:  # a reply received before a kill is never asked for again
        assert received and not received & {entry["key"] for entry in logged[logged_at_kill:]}
    assert sum(sent.values()) <= len(unique) + kills * CONCURRENCY * workers
    for shard in (out / "_work" / "generate").glob("*.jsonl"):
        rows = [json.loads(line)["row"] for line in shard.read_text().splitlines()]
        assert len(rows) == len(set(rows))  # no record generated twice


def _wait_for(condition, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not reached")
        time.sleep(0.05)


def _release(out: Path) -> dict[str, str]:
    names = (
        "alignment.jsonl",
        "instruction.jsonl",
        "concept_alignment.jsonl",
        "self_instruct.jsonl",
        "rejects.jsonl",
    )
    return {name: (out / name).read_text() for name in names}


def test_a_killed_generation_task_leaves_what_it_sent_in_the_usage_log(tmp_path: Path, large_corpus):
    """The usage of a generation task was appended once, at its end: after a kill the report's "requests
    sent (all runs)" and "spent $" left out every request of the killed run (35 of 43 on 40 VQA-RAD images)."""
    corpus = large_corpus(tmp_path / "corpus", 12)
    server = start_mock_server_process(responder="medvl.curate.mock:responder", latency_s=0.5,
                                       log_path=tmp_path / "requests.jsonl")
    with server:
        config = write_config(tmp_path / "curate.yaml", corpus, server.base_url, tasks=1)
        out = tmp_path / "killed"
        run = start_run(config, out)
        early = 0

        def a_while_after_the_first_requests() -> bool:
            nonlocal early
            early = early or len(server.logged())
            return early > 0 and time.sleep(1.5) is None  # every request sent by then is 1.5 s old at the kill
        assert kill_when(run, a_while_after_the_first_requests), errors_of(out)
    entries = [json.loads(line) for path in (out / "_work" / "llm_usage").glob("*.jsonl")
               for line in path.read_text().splitlines()]
    assert sum(entry["requests_sent"] for entry in entries) >= early > 0
