"""The demo report from finished eval run folders (made here, in the runner's layout): the model is
paired against each control once, and the page and `eval/compare-<protocol>.md` show those pairings."""

from __future__ import annotations

import json
from pathlib import Path

from medvl.config import load_config
from medvl.demo.config import DemoConfig
from medvl.demo.report import HEADLINES, SYSTEMS, write_report

RIGHT = {"model": 0.9, "question_only": 0.5, "shuffled": 0.55, "majority": 0.5}  # share answered correctly


def _run(folder: Path, protocol: str, system: str) -> str:
    folder.mkdir(parents=True)
    kind = "choice" if protocol == "choice" else "closed"
    records = [{"id": f"q{i}", "answer": "yes", "answer_type": kind, "scorer": "medvl", "output": "yes",
                "question": "Normal?", "correct": i < 40 * RIGHT[system]} for i in range(40)]
    records += [{"id": f"o{i}", "answer": "lung", "answer_type": "open", "scorer": "medvl", "output": "lung",
                 "question": "Organ?", "correct": None, "metrics": {"token_recall": float(i % 2)}}
                for i in range(10) if kind == "closed"]
    (folder / "predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    images = {"model": True, "question_only": False, "shuffled": "shuffled", "majority": False}[system]
    scores = {"benchmark": "vqa_rad", "split": "test", "backend": system, "answered": len(records),
              "use_images": images, "scores": {}}
    (folder / "scores.json").write_text(json.dumps(scores))
    return str(folder)


def test_each_pairing_is_computed_once_for_page_and_compare_files(tmp_path, monkeypatch):
    import medvl.eval.compare as compare

    calls = []
    original = compare.compare_records
    monkeypatch.setattr(compare, "compare_records", lambda *args, **kw: calls.append(1) or original(*args, **kw))
    out = tmp_path / "demo"
    steps = {f"eval-{p}-{s}": {"run_dir": _run(out / "eval" / f"{p}-{s}", p, s)} for p in HEADLINES for s in SYSTEMS}
    page = write_report(load_config(DemoConfig), out, {"curate": {}, "build": {}, **steps}, 1.0).read_text()
    assert len(calls) == len(HEADLINES) * (len(SYSTEMS) - 1)  # each system against the model, once
    assert "the model beats the question only (no image) control" in page
    for protocol in HEADLINES:
        written = (out / "eval" / f"compare-{protocol}.md").read_text()
        assert "image reliance = real − shuffled" in written and written.count("### ") == len(SYSTEMS) - 1


def test_the_report_states_the_final_model_s_vllm_config_check(tmp_path, tiny_model_dir, broken_model_dirs):
    """Issue #11's "passes the vLLM config check", stated where the user reads about the model, or its
    problems."""
    broken = broken_model_dirs[1][0]  # its config.json is a list
    lines = ("<p class='ok'>vLLM config check: passed (",
             "<p class='bad'>vLLM config check: 1 problem: {}: a list, not an object; expected a model")
    for index, (model, line) in enumerate(zip((tiny_model_dir, broken), lines)):
        out = tmp_path / f"demo-{index}"
        out.mkdir()
        (out / "finetune").symlink_to(model)
        page = write_report(load_config(DemoConfig), out, {"curate": {}, "build": {}}, 1.0).read_text()
        assert line.format(out / "finetune" / "config.json") in page
