"""`medvl demo` end to end on a tiny model with tiny budgets: every step runs (the visual prior too),
the report has every section, only the final model's weights are left, a second run resumes (skips)
finished steps, a folder another demo holds is refused, and a training stage's step budget gives
the same steps and weights every time."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import yaml

from medvl.config import load_config
from medvl.demo import run as demo_run
from medvl.demo.config import DEMO_MODEL, DemoConfig
from medvl.demo.run import EVAL_RUNS, data_source, finetune_data, run_demo, stage_config, train_stage
from medvl.io.process import FolderInUse, RunLock
from medvl.model.spec import ModelSpec, tiny_spec

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_demo_runs_end_to_end_and_resumes(tmp_path, smol_tokenizer):
    spec = tiny_spec(str(smol_tokenizer)).model_dump()
    overrides = [f"output_dir={tmp_path / 'demo'}", "eval_limit=8", "eval_batch_size=8", "eval_max_new_tokens=4",
                 f"model={json.dumps(spec)}"]
    overrides += ["align.epochs=1", "instruct.epochs=1", "finetune.epochs=0.05", "prior.views_per_image=1",
                  "prior.epochs=1"]
    config = load_config(DemoConfig, None, overrides)
    report = run_demo(config)
    out = tmp_path / "demo"
    steps = sorted(p.stem for p in (out / ".steps").glob("*.json"))
    assert steps == sorted(["curate", "data", "prior", "build", "align", "instruct", "finetune",
                            *[f"eval-{p}-{s}" for p, s in EVAL_RUNS]])
    prior = json.loads((out / ".steps" / "prior.json").read_text())
    assert prior["images"] == 313 and Path(prior["folder"], "config.json").is_file()  # VQA-RAD train-split images
    # only the final model keeps its weights; no resume checkpoint is left behind
    assert not list(out.rglob("checkpoint-*"))
    assert [p.parent.name for p in out.rglob("*.safetensors")] == ["finetune"]
    finetune = json.loads((out / ".steps" / "finetune.json").read_text())
    per_epoch = math.ceil(finetune["samples_per_epoch"] / config.finetune.batch_size)
    assert finetune["steps"] == math.ceil(per_epoch * config.finetune.epochs)  # the budget is steps, not minutes
    page = report.read_text()
    for heading in ("1. Curation", "2. Model", "3. Training", "4. Evaluation", "5. Example answers", "6. Use the model"):
        assert heading in page
    assert "vLLM config check: passed" in page  # the final model, as issue #11 asks
    assert "image_too_small" in page and "too_few_medical_terms" in page  # the built-in sample's filter examples
    assert "202 of the 203 test images are also VQA-RAD train images" in page  # the splits share images by design
    assert (out / "finetune" / "config.json").is_file() and (out / "report.html") == report
    scores = json.loads((out / ".steps" / "eval-open_closed-majority.json").read_text())
    assert scores["answered"] == 8

    before = {p.name: p.stat().st_mtime_ns for p in (out / ".steps").glob("*.json")}
    run_demo(config)  # resumes: nothing is redone
    assert {p.name: p.stat().st_mtime_ns for p in (out / ".steps").glob("*.json")} == before


class FirstStepReached(Exception):
    pass


def test_a_folder_another_demo_is_using_is_refused_and_kept(tmp_path, monkeypatch):
    def first_step(config, out):
        raise FirstStepReached

    monkeypatch.setattr(demo_run, "curate", first_step)
    config = load_config(DemoConfig, None, [f"output_dir={tmp_path / 'demo'}"])
    earlier = tmp_path / "demo" / "model-init" / "config.json"  # what the other demo has written so far
    earlier.parent.mkdir(parents=True)
    earlier.write_text("{}")
    with RunLock(tmp_path / "demo", what="demo"):  # the other demo, still running
        with pytest.raises(FolderInUse, match="in use by another demo"):
            run_demo(config, fresh=True)  # --fresh deleted the folder under it
    assert earlier.is_file()
    with pytest.raises(FirstStepReached):  # once it is gone, --fresh starts over
        run_demo(config, fresh=True)
    assert not earlier.exists()


def test_demo_model_matches_the_shipped_config():
    shipped = ModelSpec.model_validate(yaml.safe_load((ROOT / "configs/model/smollm2_vit_tiny.yaml").read_text()))
    assert shipped == DEMO_MODEL


def test_a_stage_budget_gives_the_same_steps_and_weights_every_time(tmp_path, tiny_model_dir, rgb_image):
    from safetensors.torch import load_file

    rgb_image.save(tmp_path / "x.png")
    records = [{"id": str(i), "image": ["x.png"], "conversations": [
        {"from": "human", "value": f"<image>\nquestion {i}?"}, {"from": "gpt", "value": "yes" if i % 2 else "no"}]}
        for i in range(12)]
    (tmp_path / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    config = load_config(DemoConfig, None, ["finetune.epochs=2", "finetune.batch_size=4"])
    sources = [{"path": str(tmp_path / "data.jsonl"), "image_root": str(tmp_path)}]
    runs = [train_stage(config, "finetune", tiny_model_dir, sources, config.finetune, tmp_path / f"run{k}")
            for k in range(2)]
    assert runs[0]["steps"] == runs[1]["steps"] == 6  # 12 samples / batch 4 x 2 epochs
    assert runs[0]["final_loss"] == runs[1]["final_loss"]
    first, second = (load_file(tmp_path / f"run{k}" / "model.safetensors") for k in range(2))
    assert all(torch.equal(first[key], second[key]) for key in first)
    # the default stage keeps the vision tower (the visual prior) as it is; the projector trains
    start = load_file(tiny_model_dir / "model.safetensors")
    tower = [key for key in start if "vision_tower" in key]
    projector = [key for key in start if "multi_modal_projector" in key]
    assert tower and projector
    assert all(torch.equal(start[key], first[key]) for key in tower)
    assert not all(torch.equal(start[key], first[key]) for key in projector)
    # the default finetune trains the token embeddings; finetune.train_embeddings=false keeps them (and the
    # tied lm_head) fixed while the decoder trains
    fixed = config.finetune.model_copy(update={"train_embeddings": False})
    train_stage(config, "finetune", tiny_model_dir, sources, fixed, tmp_path / "fixed")
    frozen = load_file(tmp_path / "fixed" / "model.safetensors")
    embeddings = [key for key in start if "embed_tokens" in key]
    decoder = [key for key in start if "layers.0.mlp" in key]
    assert embeddings and decoder
    assert not all(torch.equal(start[key], first[key]) for key in embeddings)
    assert all(torch.equal(start[key], frozen[key]) for key in embeddings)
    assert not all(torch.equal(start[key], frozen[key]) for key in decoder)



def test_a_stage_budget_passes_its_projector_lr_to_the_stage(tmp_path):
    from medvl.config import ConfigError

    config = load_config(DemoConfig, None, ["finetune.projector_lr=3e-3"])
    sources = [data_source(tmp_path / "data.jsonl")]
    finetune = stage_config(config, "finetune", tmp_path / "start", sources, config.finetune, tmp_path / "finetune")
    assert (finetune.optim.lr, finetune.optim.projector_lr) == (config.finetune.lr, 3e-3)
    instruct = stage_config(config, "instruct", tmp_path / "start", sources, config.instruct, tmp_path / "instruct")
    assert instruct.optim.projector_lr is None  # the default: the stage's lr
    with pytest.raises(ConfigError, match="finetune.projector_lr"):
        load_config(DemoConfig, None, ["finetune.projector_lr=-1"])

def test_concept_questions_join_the_finetune_data_in_both_prompt_forms(tmp_path):
    plain = finetune_data(ROOT / "data" / "vqa-rad", tmp_path / "plain")
    summary = finetune_data(ROOT / "data" / "vqa-rad", tmp_path / "concepts", concepts=True)
    records = [json.loads(line) for line in (tmp_path / "concepts" / "vqa_rad_train.jsonl").read_text().splitlines()]
    concept = [r for r in records if "-concept-" in r["id"]]
    assert summary["records"] == plain["records"] + len(concept) and summary["concept_questions"] > 500
    answers = [r["conversations"][1]["value"] for r in concept]
    assert answers.count("yes") == answers.count("no") > 0  # balanced: the question alone cannot tell
    assert answers.count("A") + answers.count("B") == 2 * answers.count("yes")  # each yes/no also as a choice
    assert {r["image"][0] for r in concept} <= {r["image"][0] for r in records if "-concept-" not in r["id"]}


def test_the_verdict_says_not_significant_when_it_is_not():
    from medvl.demo.report import _verdict
    from medvl.eval.compare import PairedDifference

    noise = PairedDifference("closed accuracy", "accuracy", 272, 0.603, 0.562, 0.041, (-0.01, 0.09), 0.052, 30, 19)
    real = PairedDifference("closed accuracy", "accuracy", 272, 0.72, 0.60, 0.12, (0.07, 0.17), 1e-5, 40, 7)
    assert "not significant" in _verdict("closed accuracy", "question-only", noise)
    assert "image helps" not in _verdict("closed accuracy", "question-only", noise)
    assert "image helps" in _verdict("closed accuracy", "question-only", real)


def test_the_acceptance_bar_needs_the_gap_and_the_significance():
    from medvl.demo.report import _bar_line
    from medvl.eval.compare import PairedDifference

    def closed(gap: float, p: float) -> PairedDifference:
        return PairedDifference("closed accuracy", "accuracy", 272, 0.6 + gap, 0.6, gap, (gap - 0.05, gap + 0.05), p)

    assert _bar_line("closed accuracy", closed(0.12, 1e-5)).startswith("met")
    assert _bar_line("closed accuracy", closed(0.06, 1e-5)).startswith("NOT met")  # significant but too small
    assert _bar_line("closed accuracy", closed(0.09, 0.02)).startswith("NOT met")  # large enough but p ≥ 0.01
    assert _bar_line("choice accuracy", closed(0.06, 0.005)).startswith("met")
    recall = PairedDifference("open token_recall", "mean", 179, 0.2, 0.15, 0.05, (0.01, 0.09))
    assert _bar_line("open token_recall", recall).startswith("met")


def test_a_wrong_vqa_rad_folder_stops_the_demo_before_its_first_step(tmp_path, monkeypatch):
    from medvl.errors import UserError

    def first_step(config, out):
        raise FirstStepReached  # the curate step ran first and the wrong folder surfaced only after it

    monkeypatch.setattr(demo_run, "curate", first_step)
    config = load_config(DemoConfig, None, [f"output_dir={tmp_path / 'demo'}", f"vqa_rad={tmp_path / 'nowhere'}"])
    with pytest.raises(UserError, match="nowhere"):
        run_demo(config)
    assert not (tmp_path / "demo").exists()  # the run lock made it; it stayed behind, empty


def test_the_shipped_data_missing_outside_a_clone_is_one_line_naming_the_flag(medvl, tmp_path, monkeypatch):
    """An installed medvl run outside a clone has no data/vqa-rad: a FileNotFoundError traceback, and an
    empty output folder left behind."""
    from medvl.demo import config as demo_config

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(demo_config, "__file__", str(tmp_path / "site-packages" / "medvl" / "demo" / "config.py"))
    outcome = medvl("demo", "--out", tmp_path / "demo")
    assert outcome.code == 2 and outcome.err.strip() == (
        "error: data/vqa-rad not found (a medvl clone holds it, an installed package does not): run from a medvl "
        "clone or give the folder with --vqa-rad"), outcome.err
    assert not (tmp_path / "demo").exists()


def test_path_flags_reach_the_config_as_given(medvl, monkeypatch, tmp_path):
    """--out/--figures/--vqa-rad are paths, not YAML: ` #` does not start a comment (`runs/demo #2`
    was `runs/demo`, another demo's folder), `: ` does not make a mapping, `[...]` not a list."""
    seen: list[DemoConfig] = []
    monkeypatch.setattr(demo_run, "run_demo", lambda config, fresh: seen.append(config))
    out, figures, rad = tmp_path / "runs/demo #2", tmp_path / "figs: [v2]", tmp_path / "~rad $HOME/"
    assert medvl("demo", "--out", out, "--figures", figures, "--vqa-rad", rad, "finetune.epochs=2").code == 0
    assert (seen[0].output_dir, seen[0].figures, seen[0].vqa_rad) == (str(out), str(figures), str(rad))
    assert seen[0].finetune.epochs == 2
