"""The same pipeline on a local Ray cluster (datatrove's RayPipelineExecutor) gives the same output
as the local executor."""

from __future__ import annotations

from pathlib import Path

import pytest

from medvl.curate.pipeline import run_curation
from medvl.llm.mock_server import MockServer

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
