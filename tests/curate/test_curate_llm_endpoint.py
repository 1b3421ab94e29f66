"""An LLM endpoint that cannot be used stops `medvl curate run` (and `curate label`) with one line,
exit 2 — in the main process or a spawned worker — instead of every record paying for it: one that
cannot be reached after the first request's retries, one that rejects the API key at its first 401
(the key is never printed). A server that answered, then died, leaves its records to retry (exit 3)
as before. Nothing finished is lost: a rerun (with the right key) resumes, and a rerun whose replies
are all cached needs no server."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import yaml

from medvl.curate.mock import responder
from medvl.curate.pipeline import run_curation
from medvl.curate.store import CurateIncomplete, RunDirs
from medvl.llm.messages import EndpointUnreachable, body_key
from medvl.llm.mock_server import MockServer

N_RECORDS = 8  # the corpus's records that reach generation
RESUME = "finished items are kept: rerun to resume"
FIX = f"check llm.base_url and that the server is up; {RESUME}"


def llm(endpoint: str | dict) -> dict:
    """One request at a time (with generate.window 1), so the attempts can be counted. `endpoint`:
    the base_url, or settings holding it (`unusable_llm`: base_url, api_key_env)."""
    if isinstance(endpoint, str):
        endpoint = {"base_url": endpoint, "api_key_env": "MEDVL_NO_KEY"}
    return {"model": "mock", "max_concurrency": 1, "max_retries": 2, "backoff_initial_s": 0.01,
            "backoff_max_s": 0.05, "timeout_s": 2, **endpoint}


def reformat_config(corpus: Path, endpoint: str | dict, workers: int = 1, **extra) -> dict:
    return {
        "sources": [{"format": "pmc_jsonl", "path": str(corpus / "figures.jsonl"), "name": "synth"}],
        "dedup": {"semantic": {"model": "hashing", "eps": 0.25}},
        "engine": {"tasks": 2, "workers": workers},
        "generate": {"window": 1, "reformat": {"enabled": True, "llm": llm(endpoint), "image_max_side": 96}},
        **extra,
    }


def requests_sent(out: Path) -> int:
    usage = RunDirs(out).llm_usage
    return sum(json.loads(line)["requests_sent"] for path in usage.glob("*.jsonl")
               for line in path.read_text().splitlines())


def released(out: Path, name: str = "alignment.jsonl") -> list[dict]:
    return [json.loads(line) for line in (out / name).read_text().splitlines()]


def test_an_unreachable_endpoint_stops_the_run_in_one_line(medvl, corpus, tmp_path, unreachable_url):
    config, out = tmp_path / "curate.yaml", tmp_path / "out"
    config.write_text(yaml.safe_dump(reformat_config(corpus, unreachable_url)))
    outcome = medvl("curate", "run", config, "--out", out)
    last = outcome.err.strip().splitlines()[-1]
    assert outcome.code == 2 and "Traceback" not in outcome.err, outcome.err[-3000:]
    assert last.startswith(f"error: LLM endpoint {unreachable_url} is unreachable: connection refused (3 attempts")
    assert last.endswith(FIX)
    assert requests_sent(out) == 3  # the first record's 3 attempts; before, 3 per record, then exit 3


def test_a_rejected_key_stops_the_run_in_one_line_and_is_never_printed(medvl, corpus, tmp_path, monkeypatch,
                                                                         wrong_key_endpoint):
    endpoint = wrong_key_endpoint(responder)
    config, out = tmp_path / "curate.yaml", tmp_path / "out"
    config.write_text(yaml.safe_dump(reformat_config(corpus, {"base_url": endpoint.base_url,
                                                               "api_key_env": endpoint.api_key_env})))
    outcome = medvl("curate", "run", config, "--out", out)
    last = outcome.err.strip().splitlines()[-1]
    assert outcome.code == 2 and "Traceback" not in outcome.err, outcome.err[-3000:]
    assert last == (f"error: LLM endpoint {endpoint.base_url} rejected the API key in "
                    f"${endpoint.api_key_env} (401 Unauthorized: Incorrect API key provided: ***); set a "
                    f"valid key in ${endpoint.api_key_env} (llm.api_key_env names the variable); {RESUME}")
    # the server echoed it: not on the console, nor in any file of the run (logs, LLM cache, usage)
    assert endpoint.sent not in outcome.err + outcome.out
    files = [path for path in out.rglob("*") if path.is_file()]
    assert files and not [path for path in files if endpoint.sent.encode() in path.read_bytes()]
    assert requests_sent(out) == 1  # the first 401 stops the run: no other record sends anything

    monkeypatch.setenv(endpoint.api_key_env, endpoint.key)
    assert medvl("curate", "run", config, "--out", out).code == 0
    assert len(released(out)) == N_RECORDS


def test_a_key_revoked_mid_run_stops_it_and_the_rerun_loses_nothing(medvl, corpus, tmp_path):
    """Two replies, then a 401: the two records stay written, and the rerun (the key valid again: the
    script is spent) asks only for what was not answered."""
    config, out = tmp_path / "curate.yaml", tmp_path / "out"
    with MockServer(responder, script=["ok", "ok", {"status": 401}]) as server:
        config.write_text(yaml.safe_dump(reformat_config(corpus, server.base_url)))
        first = medvl("curate", "run", config, "--out", out)
        assert first.code == 2 and "Traceback" not in first.err, first.err[-3000:]
        assert first.err.strip().splitlines()[-1].startswith(
            f"error: LLM endpoint {server.base_url} rejected the API key (401 Unauthorized: mock status "
            "401): $MEDVL_NO_KEY is not set")
        written = RunDirs(out).generated_shard(0).read_text().splitlines()
        assert len(written) == 2
        assert medvl("curate", "run", config, "--out", out).code == 0
    assert RunDirs(out).generated_shard(0).read_text().splitlines()[:2] == written
    assert len(released(out)) == N_RECORDS
    answered = {body_key(body) for body in server.requests[:2]}
    assert all(server.count_by_key()[key] == 1 for key in answered)  # no reply received was asked for again


def test_an_unusable_endpoint_stops_spawned_workers_in_one_line(corpus, tmp_path, unusable_llm):
    """Two tasks in two spawned workers: the error crosses the process pool, and neither worker's own
    stderr (seen only from outside the process) carries a traceback."""
    endpoint, error_line = unusable_llm
    config, out = tmp_path / "curate.yaml", tmp_path / "out"
    config.write_text(yaml.safe_dump(reformat_config(corpus, endpoint, workers=2)))
    run = subprocess.run([sys.executable, "-m", "medvl.cli", "curate", "run", str(config), "--out", str(out)],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 2 and "Traceback" not in run.stderr, run.stderr[-3000:]
    last = run.stderr.strip().splitlines()[-1]
    assert last.startswith(error_line) and last.endswith(RESUME)
    assert requests_sent(out) <= 2 * 3  # each task's first record's attempts at most
    # the workers log as the main process does ("LEVEL logger: message"), not bare lines
    notes = [line for line in run.stderr.splitlines() if "filter.image.classifier is not set" in line]
    assert len(notes) == 2 and all("WARNING medvl.curate: filter.image" in line for line in notes), notes


class DyingModel:
    """The curate mock model: answers `answers` requests, then stops its server (503s until it is down)."""

    def __init__(self, answers: int):
        self.answers, self.seen, self.lock = answers, 0, threading.Lock()
        self.server: MockServer | None = None

    def __call__(self, body: dict):
        with self.lock:
            self.seen += 1
            seen = self.seen
        if seen == self.answers:
            threading.Thread(target=self.server.stop).start()
        return responder(body) if seen <= self.answers else {"status": 503}


def test_a_server_that_dies_mid_run_leaves_records_to_retry_and_nothing_is_lost(curate_config, corpus,
                                                                               tmp_path):
    out = tmp_path / "out"
    model = DyingModel(answers=2)
    with MockServer(model) as first:
        model.server = first
        config = curate_config(corpus, **reformat_config(corpus, first.base_url))
        with pytest.raises(CurateIncomplete, match="failed transiently"):  # per-record failures, no stop
            run_curation(config, out)
    answered = {body_key(body) for body in first.requests[:2]}
    written = RunDirs(out).generated_shard(0).read_text().splitlines()
    assert len(written) == 2

    with pytest.raises(EndpointUnreachable, match=f"{first.base_url} is unreachable"):  # still down: one stop
        run_curation(config, out)
    assert RunDirs(out).generated_shard(0).read_text().splitlines() == written

    port = int(first.base_url.rsplit(":", 1)[1].split("/")[0])
    with MockServer(responder, port=port) as second:  # back up: the run resumes
        run_curation(config, out)
    assert len(released(out)) == N_RECORDS
    assert not answered & set(second.count_by_key())  # no reply received before was asked for again


def test_a_rerun_whose_replies_are_cached_needs_no_server(curate_config, corpus, tmp_path):
    out = tmp_path / "out"
    with MockServer(responder) as server:
        run_curation(curate_config(corpus, **reformat_config(corpus, server.base_url)), out)
    before = released(out)
    # image_mode is part of the generate stage's fingerprint, not of a request: generation runs again
    rerun = curate_config(corpus, **reformat_config(corpus, server.base_url, image_mode="copy"))
    report = run_curation(rerun, out)
    assert released(out) == before and report["generated"]["alignment"] == N_RECORDS
    assert requests_sent(out) == N_RECORDS  # the first run's; the rerun sent nothing


def test_labelling_against_an_unusable_endpoint_is_one_line(medvl, tmp_path, texture, unusable_llm):
    endpoint, error_line = unusable_llm
    texture(0).save(tmp_path / "figure.png")
    settings = tmp_path / "llm.yaml"
    settings.write_text(yaml.safe_dump({**llm(endpoint), "max_retries": 1}))
    outcome = medvl("curate", "label", tmp_path / "figure.png", "--out", tmp_path / "labels.jsonl",
                    "--llm", settings)
    last = outcome.err.strip().splitlines()[-1]
    assert outcome.code == 2 and "Traceback" not in outcome.err, outcome.err[-3000:]
    assert last.startswith(error_line) and last.endswith(RESUME)
