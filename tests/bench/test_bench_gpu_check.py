"""The GPU check (bench/gpu_check.py): its --tiny run on the GPU machine's package set, its time
boxes, its table's derived numbers, and the requirement check of what travels to the GPU machine."""

from __future__ import annotations

import dataclasses
import email
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench"))

import gpu_check  # noqa: E402
import gpu_prepare  # noqa: E402
from gpu_setup import TINY, Context  # noqa: E402


@pytest.mark.slow
def test_tiny_run_passes_with_only_the_gpu_machines_packages(smol_tokenizer, tmp_path):
    """`--tiny` runs every section on CPU while the packages the GPU machine lacks (neither in its
    image nor carried as wheels) are hidden, so a new import on this path fails here, not there."""
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    command = [sys.executable, str(ROOT / "bench" / "gpu_check.py"), "--tiny", "--device-packages",
               "--out", str(out), "--tokenizer", str(smol_tokenizer)]
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    report = json.loads((out / "gpu_check.json").read_text())
    rows = {(r["section"], r["table"]): [] for r in report["rows"]}
    for row in report["rows"]:
        rows[(row["section"], row["table"])].append(row)
    assert [s.name for s in gpu_check.SECTIONS] == list(dict.fromkeys(r["section"] for r in report["rows"]))

    training = [r for r in report["rows"] if r["table"] == "training" and r["status"] == "ok"]
    assert [r["section"] for r in training] == ["train", "bare_loop", "train_checkpointing", "lora"]
    for row in training:
        assert row["steps"] > 0 and row["tokens/s"] > 0 and row["samples/s"] > 0
        assert 0 < row["MFU"] <= 1
    assert next(r for r in training if r["section"] == "bare_loop")["vs bare loop"] == 1.0
    (qlora,) = rows[("qlora", "training")]
    assert qlora["status"].startswith("skipped:") and "CUDA" in qlora["status"]
    assert all(r["status"].startswith("skipped:") for r in rows[("distributed_smoke", "smoke runs")])

    generation = rows[("generation", "generation")]
    assert [r["batch"] for r in generation] == list(TINY.gen_batches)
    assert all(r["same answers as batch 1"] == f"{TINY.gen_batch1_prompts}/{TINY.gen_batch1_prompts}"
               for r in generation)
    (evaluation,) = rows[("evaluation", "evaluation")]
    assert evaluation["status"] == "ok" and evaluation["answered"] == TINY.eval_limit
    assert evaluation["errors"] == 0
    assert (out / "profile-train.txt").read_text().strip()
    table = (out / "results-gpu.md").read_text()
    for table_name in gpu_check.COLUMNS:
        assert f"## {table_name}\n" in table


def _sleeps_in_a_grandchild(ctx):
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    (ctx.work / "grandchild.pid").write_text(str(child.pid))
    time.sleep(120)


def _raises(ctx):
    raise ValueError("first line\ndetail\nthe cause")


def test_a_section_that_fails_or_overruns_becomes_a_row_and_leaves_no_process(tmp_path):
    ctx = Context(dataclasses.replace(TINY, threads=None), tmp_path, tmp_path, tmp_path, tmp_path)
    failing = gpu_check.Section("failing", "training", _raises, 0, 10)
    rows = gpu_check.run_section(failing, ctx, 30)
    assert rows == [{"status": "failed: ValueError: first line … the cause"}]

    slow = gpu_check.Section("slow", "training", _sleeps_in_a_grandchild, 0, 10)
    started = time.monotonic()
    rows = gpu_check.run_section(slow, ctx, 5)
    assert rows == [{"status": "timed out after 5 s (its time box)"}]
    assert time.monotonic() - started < 30
    grandchild = int((tmp_path / "grandchild.pid").read_text())
    assert _gone(grandchild)


def _gone(pid: int) -> bool:
    """No such process, or a zombie (killed, not yet reaped). Checked in one call: the zombie can be reaped
    between a `pid_exists` and a `Process(pid)`, which then raises NoSuchProcess."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_table_derives_ratios_and_flags_impossible_mfu():
    section = gpu_check.Section("train", "training", _raises, 0, 10)
    rows = gpu_check.finish_rows(section, [{"case": "medvl", "tokens/s": 300.0, "MFU": 1.4}])
    rows += gpu_check.finish_rows(gpu_check.Section("bare_loop", "training", _raises, 0, 10),
                                  [{"case": "loop", "tokens/s": 200.0, "MFU": 0.5}])
    rows += gpu_check.finish_rows(gpu_check.Section("generation", "generation", _raises, 0, 10),
                                  [{"status": "failed: RuntimeError: CUDA out of memory"}])
    rows += gpu_check.finish_rows(gpu_check.Section("environment", "environment", _raises, 0, 10),
                                  [{"status": "failed: RuntimeError: no CUDA GPU here"}])
    notes = gpu_check.notes_for(rows, TINY)
    assert rows[0]["vs bare loop"] == pytest.approx(1.5) and rows[0]["status"] == "ok"
    assert any("MFU 1.400 is outside (0, 1]" in note for note in notes)
    assert "generation: failed: RuntimeError: CUDA out of memory" in notes
    table = gpu_check.render(rows, notes, "# t")
    assert "| medvl | ok | n/a | 300 | n/a | n/a | n/a | 140.0% | 1.50x |" in table
    assert "| generation | failed: RuntimeError: CUDA out of memory |" in table
    assert "| environment | failed: RuntimeError: no CUDA GPU here |" in table
    assert "environment: failed: RuntimeError: no CUDA GPU here" in notes


def _metadata(name: str, version: str, *requires: str) -> email.message.Message:
    text = f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n" + "".join(f"Requires-Dist: {r}\n"
                                                                                 for r in requires)
    return email.message_from_string(text)


def test_unmet_requirements_of_carried_wheels():
    carried = {
        "transformers": _metadata("transformers", "5.24.0", "huggingface-hub<3,>=1.31", "tokenizers>=0.24",
                                  "typer", "tomli>=1.1; python_version < '3.11'",
                                  "pytest; extra == 'testing'"),
        "pydantic": _metadata("pydantic", "2.14.4", "pydantic-core==2.50.5", "annotated-types>=0.6"),
        "pydantic-core": _metadata("pydantic-core", "2.50.5"),
    }
    image = {"huggingface-hub": "1.33.0", "tokenizers": "0.23.2", "typer": None}
    assert gpu_prepare.unmet_requirements(carried, image) == [
        "pydantic needs annotated-types>=0.6: neither in the image nor in bench/gpu_wheels.txt",
        "transformers needs tokenizers>=0.24, but tokenizers 0.23.2 is in the image",
    ]


def test_wheel_list_and_image_list_parse():
    wheels = gpu_prepare.read_list(ROOT / "bench" / "gpu_wheels.txt")
    image = gpu_prepare.read_list(ROOT / "bench" / "gpu_image.txt")
    assert all(version for version in wheels.values())  # pinned: the GPU machine runs what was checked
    assert image["transformers"] == "5.17.0" and image["torch"] == "2.11.0"


@pytest.mark.slow
def test_smoke_launch_runs_medvl_train_under_accelerate(smol_tokenizer, tmp_path):
    """The FSDP / DeepSpeed smoke runs' launch path (config file, subprocess, summary), on CPU's config."""
    import gpu_setup
    import gpu_train

    ctx = Context(TINY, smol_tokenizer, ROOT / "data" / "vqa-rad", tmp_path / "work", tmp_path)
    gpu_setup.build(ctx)
    row = gpu_train.launch(ctx, "cpu", ROOT / "configs" / "accelerate" / "cpu_2proc.yaml")
    assert row["status"] == "ok", (tmp_path / "smoke-cpu.log").read_text()[-3000:]
    assert row["detail"].startswith(f"{TINY.window + 2} steps in 1 process")
    assert "projector lr 10x the rest's" in row["detail"]  # optim.projector_lr through accelerate launch
    assert (tmp_path / "work" / "smoke-cpu" / "config.json").is_file()
