"""The eval runner: outputs, baselines, resume, data-parallel split/gather, and the three testable backends."""

from __future__ import annotations

import json
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import pytest
import yaml

from medvl.benchmarks import BenchmarkError
from medvl.config import ConfigError
from medvl.engine import Reply
from medvl.eval import backends, runner
from medvl.eval.config import EvalConfig
from medvl.eval.render import headline
from medvl.eval.runner import read_predictions, run_eval
from medvl.io.jsonl import read_records
from medvl.io.process import FolderInUse, RunLock

FIXTURES = Path(__file__).parent / "fixtures"


class OneProcess:
    process_index, num_processes, is_main_process = 0, 1, True

    def wait_for_everyone(self) -> None:
        pass

    @contextmanager
    def split_between_processes(self, inputs, apply_padding=False):
        yield inputs


class Rank(OneProcess):
    """Process `index` of `world` (a thread here), splitting like accelerate (contiguous slices)."""

    def __init__(self, index: int, world: int, barrier: threading.Barrier):
        self.process_index, self.num_processes, self.is_main_process = index, world, index == 0
        self.barrier = barrier

    def wait_for_everyone(self) -> None:
        self.barrier.wait(timeout=60)

    @contextmanager
    def split_between_processes(self, inputs, apply_padding=False):
        size, extra = divmod(len(inputs), self.num_processes)
        start = self.process_index * size + min(self.process_index, extra)
        yield inputs[start:start + size + (self.process_index < extra)]


class Echo:
    """A backend answering 'yes' to everything and recording what it was asked."""

    def __init__(self, seen: list, fail_after: int | None = None):
        self.seen, self.fail_after = seen, fail_after

    def generate(self, requests):
        if self.fail_after is not None and len(self.seen) >= self.fail_after:
            raise KeyboardInterrupt  # a kill in the middle of a run
        self.seen.extend(r.item.id for r in requests)
        return [Reply("yes", 1, 1) for _ in requests]


def config(tmp_path: Path, name: str = "llava_jsonl", root: Path = FIXTURES / "llava" / "eval.jsonl", **extra) -> EvalConfig:
    data = {"benchmark": {"name": name, "root": str(root)}, "output_dir": str(tmp_path / "run"),
            "generation": {"batch_size": 1, "max_new_tokens": 8}, **extra}
    return EvalConfig.model_validate(data)


def test_majority_baseline_writes_a_complete_run_folder(tmp_path):
    cfg = config(tmp_path, "vqa_rad", FIXTURES / "vqa_rad", backend={"kind": "majority"},
                 extra_scorers=["llava_med_run_eval"])
    out = run_eval(cfg, OneProcess())
    records = read_records(out / "predictions.jsonl")
    assert [r["id"] for r in records] == ["3", "4"]  # item 5's image is missing: rejected, not dropped silently
    assert json.loads((out / "rejects.jsonl").read_text())["reason"] == "missing_image"
    scores = json.loads((out / "scores.json").read_text())
    assert scores["rejected"] == {"missing_image": 1} and scores["answered"] == 2
    assert any("train split" in note for note in scores["notes"])
    # train split: closed answers No/Yes (tie → "no"), open "left lung"
    assert [r["output"] for r in records] == ["no", "left lung"]
    assert scores["scores"]["closed"]["accuracy"] == 0.0
    assert "llava_med_run_eval" in scores["compat"] and (out / "candidates.json").is_file()
    report = (out / "report.md").read_text()
    assert "## Scores" in report and "closed accuracy" in report and "Yes/no confusion" in report
    assert (out / "plots" / "yes_no_confusion.png").stat().st_size > 1000
    assert {"id", "prompt", "output", "parsed", "correct", "meta", "images"} <= set(records[0])


def test_interrupted_run_resumes_without_redoing_items(tmp_path, monkeypatch):
    seen: list[str] = []
    monkeypatch.setattr(runner, "make_backend", lambda *a, **k: Echo(seen, fail_after=1))
    cfg = config(tmp_path)
    with pytest.raises(KeyboardInterrupt):
        run_eval(cfg, OneProcess())
    assert seen == ["q1"]
    assert [r["id"] for r in read_predictions(Path(cfg.output_dir), include_parts=True)] == ["q1"]
    monkeypatch.setattr(runner, "make_backend", lambda *a, **k: Echo(seen))
    out = run_eval(cfg, OneProcess())
    assert seen == ["q1", "q2", "q3"]  # q1 not asked again
    assert [r["id"] for r in read_records(out / "predictions.jsonl")] == ["q1", "q2", "q3"]
    assert not list(out.glob("*.part-*.jsonl"))
    again: list[str] = []
    monkeypatch.setattr(runner, "make_backend", lambda *a, **k: Echo(again))
    run_eval(cfg, OneProcess())
    assert again == []  # a finished run answers nothing more


def test_a_folder_another_run_is_writing_is_refused(tmp_path, monkeypatch):
    # two runs on one folder both answered every item, and one crashed merging the part files
    # that the other had just merged and removed (1 of 13 pairs started together)
    seen: list[str] = []
    monkeypatch.setattr(runner, "make_backend", lambda *a, **k: Echo(seen))
    cfg = config(tmp_path)
    with RunLock(cfg.output_dir, what="evaluation run"):  # another run, still answering
        with pytest.raises(FolderInUse, match=f"in use by another evaluation run \\(pid {os.getpid()}"):
            run_eval(cfg, OneProcess())
    assert seen == [] and not list(Path(cfg.output_dir).glob("predictions*"))
    run_eval(cfg, OneProcess())  # once it is gone, the folder is free
    assert seen == ["q1", "q2", "q3"]


def test_a_run_that_fails_before_writing_leaves_no_empty_folder(tmp_path):
    def failing(output_dir: Path) -> EvalConfig:
        return EvalConfig.model_validate({"benchmark": {"name": "vqa_rad", "root": str(FIXTURES / "vqa_rad"),
                                                        "split": "tset"}, "output_dir": str(output_dir)})

    with pytest.raises(BenchmarkError, match="vqa_rad at .*: unknown split 'tset'"):
        run_eval(failing(tmp_path / "runs" / "new"), OneProcess())
    assert list(tmp_path.iterdir()) == []  # runs/ and runs/new were made by the run: both removed
    (tmp_path / "mine").mkdir()  # a folder the user made is theirs, empty or not
    with pytest.raises(BenchmarkError):
        run_eval(failing(tmp_path / "mine"), OneProcess())
    assert (tmp_path / "mine").is_dir()


def test_changed_config_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(runner, "make_backend", lambda *a, **k: Echo([]))
    run_eval(config(tmp_path), OneProcess())
    run_eval(config(tmp_path, generation={"batch_size": 4, "max_new_tokens": 8}), OneProcess())  # harmless change
    with pytest.raises(ConfigError, match="prompt.style"):
        run_eval(config(tmp_path, prompt={"style": "plain"}), OneProcess())
    saved = Path(config(tmp_path).output_dir) / "config.yaml"
    older = yaml.safe_load(saved.read_text())
    del older["shuffle_seed"]  # a folder made before the setting existed resumes under its default
    saved.write_text(yaml.safe_dump(older))
    run_eval(config(tmp_path), OneProcess())
    with pytest.raises(ConfigError, match="shuffle_seed"):
        run_eval(config(tmp_path, shuffle_seed=1), OneProcess())
    for broken in ("output_dir: [", "- a list\n", "\xff"):  # not a run's config.yaml: refused, never a traceback
        saved.write_bytes(broken.encode("latin-1"))
        with pytest.raises(ConfigError, match=f"{saved} is not the config of a run .*; use another output_dir"):
            run_eval(config(tmp_path), OneProcess())


def test_data_parallel_split_and_gather(tmp_path, monkeypatch):
    asked: dict[str, list[str]] = {"rank0": [], "rank1": []}
    monkeypatch.setattr(runner, "make_backend", lambda *a, **k: Echo(asked[threading.current_thread().name]))
    cfg = config(tmp_path, "huatuo_eval", FIXTURES / "huatuo", missing_images="text_only")
    barrier = threading.Barrier(2)

    def process(rank: int) -> Path:
        threading.current_thread().name = f"rank{rank}"
        return run_eval(cfg, Rank(rank, 2, barrier))

    with ThreadPoolExecutor(2) as pool:
        outs = [f.result(timeout=120) for f in [pool.submit(process, r) for r in (0, 1)]]
    assert asked == {"rank0": ["1", "2"], "rank1": ["3", "4"]}
    records = read_records(outs[0] / "predictions.jsonl")
    assert [r["id"] for r in records] == ["1", "2", "3", "4"]  # gathered in benchmark order
    assert [r["use_images"] for r in records] == [True, True, True, False]  # 4's image is missing
    assert not list(outs[0].glob("*.part-*.jsonl"))


def test_local_backend_and_question_only_baseline(tmp_path, tiny_model_dir):
    with_images = run_eval(config(tmp_path / "a", "vqa_rad", FIXTURES / "vqa_rad",
                                  backend={"kind": "local", "model": str(tiny_model_dir)}), OneProcess())
    records = read_records(with_images / "predictions.jsonl")
    assert all(r["use_images"] and r["new_tokens"] >= 1 and r["prompt_tokens"] > 0 for r in records)
    assert all(isinstance(r["output"], str) and r["correct"] in (True, False) for r in records)
    blind = run_eval(config(tmp_path / "b", "vqa_rad", FIXTURES / "vqa_rad", use_images=False,
                            backend={"kind": "local", "model": str(tiny_model_dir)}), OneProcess())
    blind_records = read_records(blind / "predictions.jsonl")
    assert [r["id"] for r in blind_records] == ["3", "4", "5"]  # no image needed, so item 5 runs too
    assert not any(r["use_images"] for r in blind_records)
    assert blind_records[0]["prompt_tokens"] < records[0]["prompt_tokens"]  # no image tokens


def test_openai_backend_sends_images_and_records_failures(tmp_path):
    from medvl.llm.mock_server import MockServer

    def responder(body):
        text = body["messages"][-1]["content"][-1]["text"]
        return "B" if "A. " in text else "no"

    with MockServer(responder=responder, script=["ok", {"status": 400}, "ok"]) as server:
        cfg = config(tmp_path, backend={"kind": "openai", "llm": {"base_url": server.base_url, "model": "mock",
                                                                   "max_retries": 0, "api_key_env": "MEDVL_NO_KEY"}})
        out = run_eval(cfg, OneProcess())
        bodies = server.requests
    records = {r["id"]: r for r in read_records(out / "predictions.jsonl")}
    assert records["q1"]["output"] == "no" and records["q1"]["correct"] is True
    assert records["q2"]["error"] and records["q2"]["correct"] is False  # the 400 is recorded, not raised
    assert records["q3"]["output"] == "B" and records["q3"]["parsed"] == "B"
    first = bodies[0]["messages"][-1]["content"]
    assert first[0]["type"] == "image_url" and first[0]["image_url"]["url"].startswith("data:image/jpeg;base64,")
    assert bodies[0]["max_tokens"] == 8 and bodies[0]["temperature"] == 0.0
    assert json.loads((out / "scores.json").read_text())["scores"]["errors"] == 1


def test_an_llm_backend_caches_replies_in_the_run_folder(tmp_path):
    """A run stopped after its replies came in but before its batch was written pays nothing twice."""
    from medvl.llm.mock_server import MockServer

    with MockServer(responder=lambda body: "no") as server:
        cfg = config(tmp_path, backend={"kind": "openai", "llm": {"base_url": server.base_url, "model": "mock",
                                                                   "api_key_env": "MEDVL_NO_KEY"}},
                     generation={"batch_size": 8, "max_new_tokens": 8})
        out = run_eval(cfg, OneProcess())
        asked = len(server.requests)
        for written in out.glob("predictions*.jsonl"):  # as if killed before the batch reached the disk
            written.unlink()
        run_eval(cfg, OneProcess())
        assert len(server.requests) == asked == 3
    assert (out / "llm-cache").is_dir() and len(read_records(out / "predictions.jsonl")) == 3


def test_missing_backend_settings_are_clear_errors():
    with pytest.raises(ValueError, match="backend.model"):
        backends.make_backend(backends.BackendConfig(kind="local"), None)
    with pytest.raises(ValueError, match="backend.llm"):
        backends.make_backend(backends.BackendConfig(kind="openai"), None)


def test_unreadable_image_is_rejected_and_the_run_goes_on(tmp_path, monkeypatch):
    (tmp_path / "img").mkdir()
    (tmp_path / "img" / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    (tmp_path / "img" / "good.png").write_bytes((FIXTURES / "llava" / "img" / "a.png").read_bytes())
    rows = [{"id": name, "image": f"img/{name}.png",
             "conversations": [{"from": "human", "value": "<image>\nIs it normal?"}, {"from": "gpt", "value": "yes"}]}
            for name in ("bad", "good")]
    data = tmp_path / "eval.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    monkeypatch.setattr(runner, "make_backend", lambda *a, **k: Echo([]))
    out = run_eval(config(tmp_path, root=data), OneProcess())
    assert [r["id"] for r in read_records(out / "predictions.jsonl")] == ["good"]
    reject = json.loads((out / "rejects.jsonl").read_text())
    assert (reject["id"], reject["reason"]) == ("bad", "image_load_error")
    assert json.loads((out / "scores.json").read_text())["rejected"] == {"image_load_error": 1}


def test_accelerate_launch_with_two_cpu_processes(two_cpu_processes, tmp_path):
    import subprocess
    import sys

    cfg = tmp_path / "eval.yaml"
    cfg.write_text(yaml.safe_dump({"benchmark": {"name": "llava_jsonl", "root": str(FIXTURES / "llava" / "eval.jsonl")},
                                   "backend": {"kind": "majority"}, "output_dir": str(tmp_path / "run"),
                                   "generation": {"batch_size": 1}}))
    # not `--cpu --num_processes 2`: it runs one process (accelerate's MULTI_CPU needs mpirun)
    done = subprocess.run(two_cpu_processes.command("eval", "run", cfg), capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    assert [r["id"] for r in read_records(tmp_path / "run" / "predictions.jsonl")] == ["q1", "q2", "q3"]
    throughput = json.loads((tmp_path / "run" / "scores.json").read_text())["throughput"]
    assert (throughput["processes"], throughput["answered"]) == (2, 3)  # each process its share, all counted
    assert not list((tmp_path / "run").glob("*.part-*.jsonl"))
    assert done.stdout.count("run folder:") == 1  # only the main process reports


def test_choice_protocol_asks_closed_yes_no_items_as_options(tmp_path):
    """HuatuoGPT-Vision's protocol on an open/closed benchmark: yes/no items lettered, open ones left out."""
    from medvl.benchmarks.base import VQAItem, closed_as_choice

    items = [VQAItem("1", "b", "test", "Is it?", "Yes ", "closed", []),
             VQAItem("2", "b", "test", "Which side?", "left", "closed", []),
             VQAItem("3", "b", "test", "What?", "liver", "open", []),
             VQAItem("4", "b", "test", "Pick", "CT", "choice", [], options=["MRI", "CT"])]
    kept, left_out = closed_as_choice(items)
    assert left_out == 2 and [i.id for i in kept] == ["1", "4"]
    assert (kept[0].answer, kept[0].options, kept[0].answer_letter) == ("yes", ["yes", "no"], "A")

    cfg = config(tmp_path, "vqa_rad", FIXTURES / "vqa_rad", backend={"kind": "majority"},
                 benchmark={"name": "vqa_rad", "root": str(FIXTURES / "vqa_rad"), "protocol": "choice"})
    out = run_eval(cfg, OneProcess())
    records = read_records(out / "predictions.jsonl")
    assert [r["id"] for r in records] == ["3"]  # the open items 4 and 5 are left out
    assert "Answer with the option's letter" in records[0]["prompt"] and records[0]["output"] in ("A", "B")
    scores = json.loads((out / "scores.json").read_text())
    assert any("choice protocol: 2 open" in note for note in scores["notes"])


def test_exclude_seen_scores_only_the_items_not_seen_in_training(tmp_path):
    """A seen_items.json (what `medvl curate decontaminate` writes) is a plain file eval reads."""
    seen = tmp_path / "seen_items.json"
    seen.write_text(json.dumps({"vqa_rad/train": ["3"], "vqa_rad/test": ["4"]}))
    cfg = config(tmp_path, "vqa_rad", FIXTURES / "vqa_rad", backend={"kind": "majority"}, exclude_seen=str(seen))
    out = run_eval(cfg, OneProcess())
    assert [r["id"] for r in read_records(out / "predictions.jsonl")] == ["3"]
    scores = json.loads((out / "scores.json").read_text())
    assert any("1 items seen in training excluded" in note for note in scores["notes"])
    # counted as a skip with its reason on the console line (before: "skipped 2 (missing_image 1)")
    assert scores["rejected"] == {"missing_image": 1, "seen_in_training": 1}
    assert "skipped 2 (missing_image 1, seen_in_training 1)" in headline(scores)
    assert {"id": "4", "stage": "exclude_seen", "reason": "seen_in_training", "detail": "seen_items.json"} in \
        read_records(out / "rejects.jsonl")
    missing = config(tmp_path / "other", "vqa_rad", FIXTURES / "vqa_rad", exclude_seen=str(tmp_path / "nope.json"))
    with pytest.raises(ConfigError, match="exclude_seen"):
        run_eval(missing, OneProcess())
