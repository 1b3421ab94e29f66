"""`medvl demo` end to end on a tiny model with tiny budgets: every step runs, the report has every
section, and a second run resumes (skips) finished steps."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from medvl.config import load_config
from medvl.demo.config import DEMO_MODEL, DemoConfig
from medvl.demo.run import EVAL_RUNS, run_demo
from medvl.model.spec import ModelSpec, tiny_spec

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_demo_runs_end_to_end_and_resumes(tmp_path, smol_tokenizer):
    spec = tiny_spec(str(smol_tokenizer)).model_dump()
    overrides = [f"output_dir={tmp_path / 'demo'}", "eval_limit=8", "eval_batch_size=8", "eval_max_new_tokens=4",
                 f"model={json.dumps(spec)}"]
    overrides += [f"{stage}.minutes=0.02" for stage in ("align", "instruct", "finetune")]
    config = load_config(DemoConfig, None, overrides)
    report = run_demo(config)
    out = tmp_path / "demo"
    steps = sorted(p.stem for p in (out / ".steps").glob("*.json"))
    assert steps == sorted(["curate", "data", "build", "align", "instruct", "finetune",
                            *[f"eval-{p}-{s}" for p, s in EVAL_RUNS]])
    page = report.read_text()
    for heading in ("1. Curation", "2. Model", "3. Training", "4. Evaluation", "5. Example answers", "6. Use the model"):
        assert heading in page
    assert "image_too_small" in page and "too_few_medical_terms" in page  # the built-in sample's filter examples
    assert (out / "finetune" / "config.json").is_file() and (out / "report.html") == report
    scores = json.loads((out / ".steps" / "eval-open_closed-majority.json").read_text())
    assert scores["answered"] == 8

    before = {p.name: p.stat().st_mtime_ns for p in (out / ".steps").glob("*.json")}
    run_demo(config)  # resumes: nothing is redone
    assert {p.name: p.stat().st_mtime_ns for p in (out / ".steps").glob("*.json")} == before


def test_demo_model_matches_the_shipped_config():
    shipped = ModelSpec.model_validate(yaml.safe_load((ROOT / "configs/model/smollm2_vit_tiny.yaml").read_text()))
    assert shipped == DEMO_MODEL
