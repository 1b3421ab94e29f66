"""The same pipeline on a local Ray cluster (datatrove's RayPipelineExecutor) gives the same output
as the local executor; and SIGKILL of the driver alone (the `medvl curate run` process that
started that cluster) leaves no process of the run working, as with the local executor
(test_curate_resume.py, whose helpers this uses)."""

from __future__ import annotations

import socket
import time
from collections import Counter
from pathlib import Path

import pytest
import yaml
from test_curate_resume import (
    CONCURRENCY,
    _release,
    cached_keys,
    generated_lines,
    kill_when,
    start_run,
    survivors,
    write_config,
)

from medvl.curate.pipeline import run_curation
from medvl.llm.mock_server import MockServer, start_mock_server_process

RELEASE = (
    "alignment.jsonl",
    "instruction.jsonl",
    "concept_alignment.jsonl",
    "self_instruct.jsonl",
    "rejects.jsonl",
)


@pytest.mark.slow
def test_ray_executor_matches_local_executor(corpus, curate_config, tmp_path: Path):
    ray = pytest.importorskip("ray")
    from medvl.curate.mock import responder

    with MockServer(responder) as server:
        llm = {"base_url": server.base_url, "model": "mock", "max_concurrency": 4}
        generate = {
            "concept": {"enabled": True},
            "reformat": {"enabled": True, "llm": llm, "image_max_side": 96},
            "self_instruct": {"enabled": True, "llm": llm, "few_shot": 1},
        }
        local = curate_config(corpus, generate=generate)
        run_curation(local, tmp_path / "local")
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
        try:
            on_ray = curate_config(
                corpus,
                "engine.executor=ray",
                "engine.workers=2",
                "engine.ray.mem_per_cpu_gb=0.5",
                generate=generate,
            )
            report = run_curation(on_ray, tmp_path / "ray")
        finally:
            ray.shutdown()
    assert report["engine"]["executor"] == "ray"
    for name in RELEASE:
        assert (tmp_path / "ray" / name).read_text() == (tmp_path / "local" / name).read_text(), name
    assert (tmp_path / "local" / "alignment.jsonl").read_text().count("\n") == 8


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/stat").is_file(), reason="finds the run's processes in /proc")
def test_killing_the_ray_driver_leaves_no_process_working_and_re_pays_nothing_finished(tmp_path: Path,
                                                                                       large_corpus):
    pytest.importorskip("ray")
    n_records, tasks, workers = 48, 4, 2
    corpus = large_corpus(tmp_path / "corpus", n_records)
    server = start_mock_server_process(responder="medvl.curate.mock:responder", latency_s=0.5,
                                       log_path=tmp_path / "requests.jsonl")
    with server:
        local = write_config(tmp_path / "local.yaml", corpus, server.base_url, reformat=False, tasks=tasks)
        assert start_run(local, tmp_path / "reference").wait(timeout=300) == 0
        unique = server.count_by_key()
        assert sum(unique.values()) == n_records and set(unique.values()) == {1}

        on_ray = yaml.safe_load(local.read_text())
        on_ray["engine"] |= {"executor": "ray", "workers": workers, "ray": {"mem_per_cpu_gb": 0.5}}
        config = tmp_path / "ray.yaml"
        config.write_text(yaml.safe_dump(on_ray))
        out, sent_before = tmp_path / "killed", len(server.logged())
        run = start_run(config, out)  # its own session: Ray's processes (GCS, raylet, agents, tasks) are in it
        assert kill_when(run, lambda: generated_lines(out) >= 6, group=False), "the run ended before the kill"
        killed_at, logged_at_kill = time.monotonic(), len(server.logged())
        assert survivors(run.pid, grace_s=15) == []  # tasks, raylet, GCS, agents: all gone within 15 s
        gone_after_s, logged_when_gone = time.monotonic() - killed_at, len(server.logged())
        received = cached_keys(out)
        time.sleep(2)
        assert len(server.logged()) == logged_when_gone  # nothing of the killed run still sends
        # the tasks stop within 0.2 s, less than one reply's latency: each LLM slot starts at most one more request
        assert logged_when_gone - logged_at_kill <= CONCURRENCY * workers
        assert start_run(config, out).wait(timeout=300) == 0
        logged = server.logged()
        sent = Counter(entry["key"] for entry in logged[sent_before:])

    assert gone_after_s < 15
    assert _release(out) == _release(tmp_path / "reference")
    assert set(sent) == set(unique)
    assert received and not received & {entry["key"] for entry in logged[logged_when_gone:]}
    assert sum(sent.values()) <= len(unique) + CONCURRENCY * workers  # at most the requests in flight at the kill


def test_a_ray_cluster_that_refuses_the_connection_is_one_line(corpus, curate_config, tmp_path: Path, monkeypatch):
    """Ray's own ConnectionError (e.g. a token-auth cluster, Ray 2.60's `ray start` default) becomes a UserError."""
    ray = pytest.importorskip("ray")
    from medvl.errors import UserError

    def refuse(*args, **kwargs):
        raise ConnectionError("Authentication required: set RAY_AUTH_TOKEN")

    monkeypatch.setattr(ray, "init", refuse)
    with socket.create_server(("127.0.0.1", 0)) as listening:  # something answers: ray.init is tried
        address = f"127.0.0.1:{listening.getsockname()[1]}"
        config = curate_config(corpus, "engine.executor=ray", f"engine.ray.address={address}")
        refused = rf"engine.ray.address={address}: Ray could not connect .*RAY_AUTH_TOKEN"
        with pytest.raises(UserError, match=refused):
            run_curation(config, tmp_path / "run")


@pytest.mark.parametrize("address, says", [
    ("closed", "nothing answers there"),
    ("10.0.0.1", "expected HOST:PORT"),
    ("127.0.0.1:port", "expected HOST:PORT"),
])
def test_a_ray_address_where_nothing_answers_is_one_line_not_a_wait(corpus, curate_config, tmp_path: Path,
                                                                    monkeypatch, address, says):
    ray = pytest.importorskip("ray")
    from medvl.errors import UserError

    def must_not_run(*args, **kwargs):
        raise AssertionError("ray.init would wait for minutes on this address")

    monkeypatch.setattr(ray, "init", must_not_run)
    if address == "closed":
        with socket.create_server(("127.0.0.1", 0)) as once_open:
            address = f"127.0.0.1:{once_open.getsockname()[1]}"  # closed again: nothing listens there now
    config = curate_config(corpus, "engine.executor=ray", f"engine.ray.address={address}")
    with pytest.raises(UserError, match=f"engine.ray.address={address}: {says}"):
        run_curation(config, tmp_path / "run")
