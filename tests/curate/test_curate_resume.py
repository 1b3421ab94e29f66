"""Kill `medvl curate run` with SIGKILL (during prepare, then during generation), start it again:
the output equals an uninterrupted run, and no request whose reply had been received is sent again.

Both the run and the mock OpenAI server are separate processes; the server logs every request it
receives (at arrival) with its cache key. What is guaranteed, precisely:
- every reply received before the kill is in the response cache (committed on arrival), so its
  request is never sent again;
- a request in flight at the kill (sent, reply not yet stored) is sent once more by the next run:
  at most `max_concurrency` per LLM client, here 2 clients x 3.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import yaml

from medvl.llm.mock_server import start_mock_server_process

N_RECORDS = 36
CONCURRENCY = 3


def write_config(path: Path, corpus: Path, base_url: str) -> Path:
    llm = {"base_url": base_url, "model": "mock", "max_concurrency": CONCURRENCY, "max_retries": 2}
    config = {
        "sources": [{"format": "pmc_jsonl", "path": str(corpus / "figures.jsonl"), "name": "synth"}],
        "dedup": {"semantic": {"enabled": False}},
        "generate": {
            "concept": {"enabled": True},
            "reformat": {"enabled": True, "llm": llm, "image_max_side": 96},
            "self_instruct": {"enabled": True, "llm": llm, "few_shot": 1},
        },
        "engine": {"tasks": 2},
    }
    path.write_text(yaml.safe_dump(config))
    return path


def start_run(config: Path, out: Path) -> subprocess.Popen:
    env = {**os.environ, "MEDVL_LOG": "WARNING"}
    return subprocess.Popen(
        [sys.executable, "-m", "medvl.cli", "curate", "run", str(config), "--out", str(out)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
        start_new_session=True,
    )


def kill_when(process: subprocess.Popen, ready, timeout: float = 240) -> bool:
    """SIGKILL the run's process group once `ready()` holds; False if the run ended first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return False
        if ready():
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            return True
        time.sleep(0.05)
    raise TimeoutError("the run never reached the kill point")


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
        reference = start_run(config, tmp_path / "reference")
        assert reference.wait(timeout=300) == 0
        reference_keys = server.count_by_key()
        assert sum(reference_keys.values()) == 2 * N_RECORDS and set(reference_keys.values()) == {1}

        out = tmp_path / "killed"
        sent_before = len(server.logged())
        assert kill_when(start_run(config, out), lambda: (out / "_work" / "prepared").is_dir())
        assert kill_when(start_run(config, out), lambda: generated_lines(out) >= 8)
        cached_at_kill = cached_keys(out)
        assert 0 < len(cached_at_kill) < 2 * N_RECORDS
        final = start_run(config, out)
        assert final.wait(timeout=300) == 0
        sent = Counter(entry["key"] for entry in server.logged()[sent_before:])
        sent_total = len(server.logged())
        assert start_run(config, out).wait(timeout=300) == 0  # a finished run re-run sends nothing
        assert len(server.logged()) == sent_total

    assert _release(out) == _release(tmp_path / "reference")
    assert set(sent) == set(reference_keys)  # the same requests, no others
    assert all(sent[key] == 1 for key in cached_at_kill)  # a received reply is never paid twice
    resent = [key for key, n in sent.items() if n > 1]
    assert all(sent[key] == 2 for key in resent) and len(resent) <= 2 * CONCURRENCY


def _release(out: Path) -> dict[str, str]:
    names = (
        "alignment.jsonl",
        "instruction.jsonl",
        "concept_alignment.jsonl",
        "self_instruct.jsonl",
        "rejects.jsonl",
    )
    return {name: (out / name).read_text() for name in names}
