"""Generation against a real HTTP server on 127.0.0.1 (the mock OpenAI server): valid replies,
malformed JSON, refusals, 429s, 500s, timeouts, garbled bodies; transient failures resume."""

from __future__ import annotations

import json
import threading
from collections import Counter
from pathlib import Path

import pytest

from medvl.curate.mock import prompt_kind, responder
from medvl.curate.pipeline import run_curation
from medvl.curate.store import REJECT_PROVENANCE, CurateIncomplete
from medvl.llm.messages import body_key
from medvl.llm.mock_server import MockServer
from medvl.records import record_problems


def llm(base_url: str) -> dict:
    return {
        "base_url": base_url,
        "model": "mock",
        "max_concurrency": 4,
        "timeout_s": 1.0,
        "max_retries": 2,
        "backoff_initial_s": 0.01,
        "backoff_max_s": 0.05,
    }


def generation_config(curate_config, corpus: Path, base_url: str, **generate):
    return curate_config(
        corpus,
        generate={
            "concept": {"enabled": True},
            "reformat": {"enabled": True, "llm": llm(base_url), "image_max_side": 128},
            "self_instruct": {"enabled": True, "llm": llm(base_url)},
            **generate,
        },
    )


class ScriptedModel:
    """Per record (by caption), what the server does for its reformatting request."""

    def __init__(self):
        self.lock = threading.Lock()
        self.seen: Counter[str] = Counter()
        self.broken = True  # p6 always fails until the test "fixes" the server

    def __call__(self, body: dict):
        if prompt_kind(body) != "reformat":
            return responder(body)
        text = json.dumps(body["messages"][-1]["content"][-1]["text"])
        with self.lock:
            self.seen[body_key(body)] += 1
            first = self.seen[body_key(body)] == 1
        if "hepatic lobe" in text:  # p0
            return responder(body)
        if "cardiomegaly" in text:  # p1: the model's text is not JSON
            return {"text": "Sure! The image shows cardiomegaly."}
        if "lumbar spine" in text:  # p2
            return {"text": "I'm sorry, but I can't help with that request."}
        if "lymphocytes" in text and first:  # p3: rate limited once
            return {"status": 429, "retry_after": 0.05}
        if "thyroid" in text and first:  # p4: server error once
            return {"status": 500}
        if "gastric mucosa" in text and first:  # p5: no reply before the client's timeout once
            return {"timeout": 2}
        if "aneurysm" in text and self.broken:  # p6: 500 until fixed
            return {"status": 503}
        if "retina" in text:  # p7: context leak
            return {
                "reply_json": {
                    "modality": "fundus",
                    "body_part": "eye",
                    "description": "Based on the caption, this fundus photograph shows retinal haemorrhages.",
                    "question": "What is shown?",
                    "answer": "Haemorrhages.",
                }
            }
        return responder(body)


def read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_generation_outcomes_and_resume_after_transient_failures(corpus, curate_config, tmp_path):
    model = ScriptedModel()
    out = tmp_path / "out"
    with MockServer(model) as server:
        config = generation_config(curate_config, corpus, server.base_url)
        with pytest.raises(CurateIncomplete, match="failed transiently"):
            run_curation(config, out)
        first_counts = server.count_by_key()
        model.broken = False
        report = run_curation(config, out)
        second_counts = server.count_by_key()
    alignment = {r["id"]: r for r in read(out / "alignment.jsonl")}
    assert sorted(alignment) == ["p0_fig0.png", "p3_fig3.png", "p4_fig4.png", "p5_fig5.png", "p6_fig6.png"]
    assert sorted(r["id"] for r in read(out / "instruction.jsonl")) == sorted(alignment)
    for name in ("alignment.jsonl", "instruction.jsonl", "concept_alignment.jsonl", "self_instruct.jsonl"):
        records = read(out / name)
        assert records and all(record_problems(r) == [] for r in records), name
        assert all((out / "images" / path).is_file() for r in records for path in r["image"])
    assert len(read(out / "concept_alignment.jsonl")) == 8 and len(read(out / "self_instruct.jsonl")) == 8
    rejects = {(r["id"], r["stage"]): r["reason"] for r in read(out / "rejects.jsonl")}
    assert rejects[("p1_fig1.png", "generate:reformat")] == "invalid_json"
    assert rejects[("p2_fig2.png", "generate:reformat")] == "refusal"
    assert rejects[("p7_fig7.png", "generate:reformat")] == "context_leak"
    assert report["rejects"]["generate:reformat/invalid_json"] == 1
    lines = read(out / "rejects.jsonl")  # every stage's lines carry the same provenance, licence included
    assert {line["stage"].split(":")[0] for line in lines} >= {"ingest", "text", "image", "dedup", "generate"}
    assert all(set(REJECT_PROVENANCE) <= set(line) for line in lines)
    generated = [line for line in lines if line["stage"].startswith("generate:")]
    assert generated and all(line["licence"] == "LicenseRef-CC-BY" and line["figure_id"] for line in generated)
    # the re-run sent only the request that had failed: every reply received before is cached
    resent = {
        key: n - first_counts.get(key, 0) for key, n in second_counts.items() if n != first_counts.get(key, 0)
    }
    assert len(resent) == 1  # one request: the one that had failed (sent again once; twice if its first
    assert 1 <= next(iter(resent.values())) <= 2  # attempt outlived timeout_s on a loaded machine, as in one CI run)
    usage = report["llm"]["reformat"]
    assert usage["dataset"]["replies"] == 8
    assert usage["invocations"] == 3  # both tasks, then only the unfinished one
    assert usage["sent"]["retries"] >= 3 + 2  # 429, 500 and timeout once each; the 503 twice before giving up


def test_garbled_bodies_are_rejects_not_crashes(corpus, curate_config, tmp_path):
    with MockServer(script=lambda index: "malformed") as server:
        config = generation_config(curate_config, corpus, server.base_url, self_instruct={"enabled": False})
        report = run_curation(config, tmp_path / "out")
    assert report["generated"]["alignment"] == 0 and report["generated"]["concept"] == 8
    assert report["rejects"]["generate:reformat/llm_bad_response"] == 8


def test_records_whose_ids_make_the_same_file_name_keep_their_own_pictures(curate_config, tmp_path, texture):
    """Ids `x.png` and `x` both released their image as `x.png`: the second record showed the first one's
    picture. `X` and `x` would meet on a case-blind file system (a release copied to macOS)."""
    import numpy as np
    from PIL import Image

    from tests.curate.conftest import CAPTIONS

    folder = tmp_path / "figures"
    folder.mkdir()
    images = {}  # caption -> the source image
    for seed, (name, caption) in enumerate(zip(("x.png", "x.png.png", "X.png", "a b.png", "a_b.png"), CAPTIONS)):
        texture(seed, (64, 48)).save(folder / name)
        (folder / name).with_suffix(".txt").write_text(caption)
        images[caption] = folder / name
    config = curate_config(tmp_path, "filter.image.min_side=8",
                           sources=[{"format": "folder", "path": str(folder), "name": "figures"}])
    run_curation(config, tmp_path / "out")
    records = read(tmp_path / "out" / "concept_alignment.jsonl")
    assert sorted(r["id"] for r in records) == ["X", "a b", "a_b", "x", "x.png"]
    for record in records:
        released = np.asarray(Image.open(tmp_path / "out" / "images" / record["image"][0]))
        source = np.asarray(Image.open(images[record["conversations"][1]["value"]]))
        assert np.array_equal(released, source), (record["id"], record["image"])
    assert len({r["image"][0].lower() for r in records}) == len(records)
