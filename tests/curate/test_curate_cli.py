"""`medvl curate` commands end to end: label → train-classifier → run (classifier applied) → report,
and estimate (a dry run that sends nothing, then sees the cache)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from medvl.cli import build_app
from medvl.curate.label import LabelsError
from medvl.curate.mock import responder
from medvl.llm.mock_server import MockServer

runner = CliRunner()


def invoke(*args: str):
    result = runner.invoke(build_app(), ["curate", *args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def chart(path: Path, seed: int, dpi: int = 80) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    rng = np.random.default_rng(seed)
    fig, ax = plt.subplots(figsize=(5, 4), dpi=dpi)
    ax.bar(range(6), rng.random(6)) if seed % 2 else ax.plot(rng.random((8, 2)))
    fig.savefig(path)
    plt.close(fig)


def test_label_train_classifier_and_run_with_it(corpus: Path, tmp_path: Path, texture):
    images = tmp_path / "to-label"
    images.mkdir()
    for i in range(14):
        texture(100 + i, (300, 260)).save(images / f"scan{i}.png")
        chart(images / f"chart{i}.png", i)
    (images / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    labels = tmp_path / "labels.jsonl"
    with MockServer(responder) as server:
        output = invoke(
            "label", str(images), "--out", str(labels), "--model", "mock", "--base-url", server.base_url
        )
        assert (
            "medical: 14" in output
            and "non_medical: 14" in output
            and "rejected:image_truncated: 1" in output
        )
        again = invoke(
            "label", str(images), "--out", str(labels), "--model", "mock", "--base-url", server.base_url
        )
        assert "already_done: 29" in again and len(server.requests) == 28
    with MockServer(lambda body: "It looks medical to me.") as garbled:
        (tmp_path / "more").mkdir()
        texture(300).save(tmp_path / "more" / "x.png")
        args = ["curate", "label", str(tmp_path / "more"), "--out", str(tmp_path / "l2.jsonl"), "--model", "mock",
                "--base-url", garbled.base_url]
        with pytest.raises(LabelsError, match=r"no image was labelled \(.*rejected:invalid_json: 1\)"):
            runner.invoke(build_app(), args, catch_exceptions=False)  # nothing labelled: an error, not exit 0
    classifier = tmp_path / "classifier"
    output = invoke("train-classifier", str(labels), "--out", str(classifier), "--val-fraction", "0.25")
    assert "validation accuracy" in output
    meta = json.loads((classifier / "classifier.json").read_text())
    assert meta["val_accuracy"] >= 0.8 and meta["n_train"] + meta["n_val"] == 28

    chart(corpus / "figures" / "chart_fig.png", 3, dpi=100)  # the chart record now holds a real chart
    config = tmp_path / "curate.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "sources": [{"format": "pmc_jsonl", "path": str(corpus / "figures.jsonl")}],
                "filter": {"text": {"min_medical_terms": 0}, "image": {"classifier": str(classifier)}},
                "dedup": {"semantic": {"model": "hashing", "eps": 0.25}},
            }
        )
    )
    output = invoke("run", str(config), "--out", str(tmp_path / "out"), "engine.tasks=2")
    assert "image/non_medical_image" in output
    rejects = [json.loads(line) for line in (tmp_path / "out" / "rejects.jsonl").read_text().splitlines()]
    assert {r["id"] for r in rejects if r["reason"] == "non_medical_image"} == {"chart_fig.png"}
    assert "Records after each stage" in invoke("report", str(tmp_path / "out"))


def test_estimate_sends_nothing_and_then_counts_the_cache(corpus: Path, tmp_path: Path):
    with MockServer(responder) as server:
        llm = {
            "base_url": server.base_url,
            "model": "mock",
            "price_input_per_mtok": 1.0,
            "price_output_per_mtok": 2.0,
            "max_tokens": 100,
        }
        config = tmp_path / "curate.yaml"
        config.write_text(
            yaml.safe_dump(
                {
                    "sources": [{"format": "pmc_jsonl", "path": str(corpus / "figures.jsonl")}],
                    "dedup": {"semantic": {"model": "hashing", "eps": 0.25}},
                    "generate": {
                        "reformat": {"enabled": True, "llm": llm, "image_max_side": 64},
                        "self_instruct": {"enabled": True, "llm": llm},
                    },
                }
            )
        )
        out = str(tmp_path / "out")
        first = invoke("estimate", str(config), "--out", out)
        assert "8 records reach generation" in first
        assert (
            "reformat (mock): 8 requests, 0 cached, 8 to send" in first and "at most 800 completion" in first
        )
        assert len(server.requests) == 0
        invoke("run", str(config), "--out", out)
        assert len(server.requests) == 16
        second = invoke("estimate", str(config), "--out", out)
        assert "8 requests, 8 cached, 0 to send" in second and "$0.0000" in second


def test_run_needs_an_output_folder(corpus: Path, tmp_path: Path):
    config = tmp_path / "curate.yaml"
    config.write_text(
        yaml.safe_dump({"sources": [{"format": "pmc_jsonl", "path": str(corpus / "figures.jsonl")}]})
    )
    result = runner.invoke(build_app(), ["curate", "run", str(config)])
    assert result.exit_code != 0 and "--out" in result.output


def test_labels_from_relative_paths_train_a_classifier_from_another_folder(tmp_path: Path, texture, medvl,
                                                                          monkeypatch):
    """`label images --out runs/labels.jsonl` run from the project folder: train-classifier finds every image
    (before: the paths were written from the working folder and read from the labels file's folder)."""
    monkeypatch.chdir(tmp_path)
    Path("images").mkdir()
    for i in range(3):
        texture(200 + i, (300, 260)).save(f"images/scan{i}.png")
        chart(Path(f"images/chart{i}.png"), i)
    with MockServer(responder) as server:
        args = ["curate", "label", "images", "--out", "runs/labels.jsonl", "--model", "mock", "--base-url",
                server.base_url]
        first, again = medvl(*args), medvl(*args)
    assert first.code == 0 and "medical: 3" in first.out and "non_medical: 3" in first.out
    assert again.code == 0 and "already_done: 6" in again.out and len(server.requests) == 6
    trained = medvl("curate", "train-classifier", "runs/labels.jsonl", "--out", "runs/classifier",
                    "--val-fraction", "0.34")
    assert trained.code == 0, trained.err
    meta = json.loads(Path("runs/classifier/classifier.json").read_text())
    assert meta["n_train"] + meta["n_val"] == 6


def test_label_flags_reach_the_llm_config_as_given(tmp_path: Path, texture, monkeypatch):
    """--model and --base-url are strings, not YAML: a model named `2.5` stays "2.5" (not a float the
    config rejects), one with `: ` is not a mapping."""
    from medvl.curate import label

    texture(1, (64, 64)).save(tmp_path / "scan.png")
    seen = []
    monkeypatch.setattr(label, "label_images",
                        lambda images, llm, out, max_side: seen.append(llm) or {"medical": 1, "already_done": 0})
    for name in ("2.5", "med: v2 #1"):
        invoke("label", str(tmp_path), "--out", str(tmp_path / "labels.jsonl"), "--model", name,
               "--base-url", "http://127.0.0.1:9/v1")
        assert seen[-1].model == name and seen[-1].base_url == "http://127.0.0.1:9/v1"


def test_report_of_a_folder_that_holds_no_readable_report_is_one_line(tmp_path: Path, medvl):
    """`report` on a missing folder, a file, an unfinished run, a torn report.json or one that is not a
    curation report: one line naming the path and the fix, exit 2 (a torn or foreign one was a traceback)."""
    (tmp_path / "file").write_text("x")
    for name, text in (("torn", "{"), ("list", "[]"), ("other", '{"accuracy": 1}'), ("unfinished", None)):
        (tmp_path / name).mkdir()
        if text is not None:
            (tmp_path / name / "report.json").write_text(text)
    expected = {"missing": "missing is not a folder", "file": "file is not a folder",
                "unfinished": "the run has not finished", "torn": "report.json: not valid JSON",
                "list": "report.json: not a curation report", "other": "not a curation report (no output_dir"}
    for name, message in expected.items():
        outcome = medvl("curate", "report", tmp_path / name)
        assert outcome.code == 2 and message in outcome.err, (name, outcome.err)
        assert len(outcome.err.strip().splitlines()) == 1 and "Traceback" not in outcome.err


def test_label_sizes_below_one_are_refused_before_any_request(tmp_path: Path, texture, medvl):
    """--max-side 0 was a ZeroDivisionError traceback after the first image was read; --n 0 a run that
    labelled nothing. Both are one line, exit 2, before any image is sent or any file written."""
    texture(1, (64, 64)).save(tmp_path / "scan.png")
    for flag in ("--max-side=0", "--n=0"):
        outcome = medvl("curate", "label", tmp_path / "scan.png", "--out", tmp_path / "labels.jsonl",
                        "--model", "m", "--base-url", "http://127.0.0.1:9/v1", flag)
        assert outcome.code == 2 and f"Invalid value for '{flag.split('=')[0]}'" in outcome.err, outcome.err
        assert "Traceback" not in outcome.err and not (tmp_path / "labels.jsonl").exists()


def test_a_run_that_reads_no_input_names_it_and_leaves_nothing_a_later_run_would_trust(tmp_path: Path, medvl,
                                                                                        texture):
    """An empty input folder: 'stage prepare left 0 records (rejects: none (no input read))' named no input,
    and left config.yaml and _work behind, whose finished prepare task the run skipped once the folder
    was filled: 0 records again, for good."""
    inputs = tmp_path / "figures"
    inputs.mkdir()
    config = tmp_path / "curate.yaml"
    config.write_text(yaml.safe_dump({"sources": [{"format": "folder", "path": "figures"}],
                                      "engine": {"tasks": 1}, "dedup": {"semantic": {"model": "hashing"}}}))
    fresh, made_empty, reused = tmp_path / "fresh", tmp_path / "made_empty", tmp_path / "reused"
    made_empty.mkdir()
    (reused / "_work" / "llm-cache").mkdir(parents=True)  # what an earlier run there left
    (reused / "_work" / "llm-cache" / "reply").write_text("{}")
    for out in (fresh, made_empty, reused):
        outcome = medvl("curate", "run", config, "--out", out)
        assert outcome.code == 2 and outcome.err.strip().splitlines()[-1] == (
            f"error: stage prepare left 0 records (no input read from sources[0].path {inputs} (format folder): "
            "put the inputs there or fix the path); fix the config, or pass --allow-empty to go on with nothing")
    assert not fresh.exists() and list(made_empty.iterdir()) == []
    assert sorted(p.relative_to(reused).as_posix() for p in reused.rglob("*") if p.is_file()) == [
        "_work/llm-cache/reply", "config.yaml"]
    texture(0).save(inputs / "scan.png")
    (inputs / "scan.txt").write_text("Axial CT of the liver showing a hypodense lesion in the right lobe.")
    for out in (fresh, made_empty, reused):
        assert medvl("curate", "run", config, "--out", out).code == 0
        assert len((out / "concept_alignment.jsonl").read_text().splitlines()) == 1
