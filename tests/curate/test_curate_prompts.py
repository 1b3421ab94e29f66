"""Snapshot tests of the rendered prompts and records (committed under snapshots/).

A prompt change shows up here as a diff; after checking it, regenerate with
`MEDVL_UPDATE_SNAPSHOTS=1 python -m pytest tests/curate/test_curate_prompts.py`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from medvl.curate.config import ConceptConfig, ReformatConfig, SelfInstructConfig
from medvl.curate.generate import (
    FigureInput,
    concept_record,
    context_text,
    reformat_prompt,
    reformat_request,
    self_instruct_request,
    strip_figure_label,
)
from medvl.curate.prompts import read_pool, read_roles, read_text
from medvl.records import record_problems

SNAPSHOTS = Path(__file__).parent / "snapshots"
LLM = {"model": "m", "base_url": "http://127.0.0.1:1/v1"}

FIGURE = FigureInput(
    id="PMC123_F2",
    images=["/data/PMC123_F2.jpg", "/data/PMC123_F2b.jpg"],
    image_refs=["pmc/PMC123_F2_0.jpg", "pmc/PMC123_F2_1.jpg"],
    caption="Figure 2. Axial CT (A) and coronal MRI (B) showing a hepatic lesion with rim enhancement.",
    mentions=["The lesion enhanced peripherally (Figure 2).", "Biopsy confirmed an abscess (Fig. 2B)."],
    fig_label="Figure 2",
    meta={"source": "pmc", "licence": "CC-BY-4.0", "pmcid": "PMC123", "figure_id": "F2", "modality": "ct", "domain": "ct_scan"},
)


def check(name: str, text: str) -> None:
    path = SNAPSHOTS / name
    if os.environ.get("MEDVL_UPDATE_SNAPSHOTS") or not path.exists():
        SNAPSHOTS.mkdir(exist_ok=True)
        path.write_text(text, encoding="utf-8")
        if not os.environ.get("MEDVL_UPDATE_SNAPSHOTS"):
            pytest.fail(f"snapshot {name} was missing and has been written; check it and commit it")
    assert text == path.read_text(encoding="utf-8"), f"{name} changed; see the module docstring"


def test_pools_have_llava_sizes_and_roles_parse():
    assert len(read_pool("concise_instructions.txt")) == 11
    assert len(read_pool("detailed_instructions.txt")) == 16
    assert len(read_pool("alignment_questions.txt")) >= 10
    roles = read_roles()
    assert {"patient", "clinician", "medical student", "researcher"} <= {r.name for r in roles}
    assert [r.name for r in read_roles(["patient"])] == ["patient"]
    with pytest.raises(ValueError, match="unknown roles"):
        read_roles(["astronaut"])


def test_unknown_or_no_reformat_roles_are_refused_with_the_config(tmp_path, medvl):
    """generate.reformat.roles=[astronaut] was a ValueError traceback in the first generation task (after
    prepare, dedup and sampling had run); [] a ZeroDivisionError there."""
    config = tmp_path / "curate.yaml"
    config.write_text(f"sources: [{{format: pmc_jsonl, path: '{tmp_path / 'figures.jsonl'}'}}]\n")
    for roles, message in (("[astronaut]", "generate.reformat.roles: unknown roles ['astronaut']; known: ['clinician'"),
                           ("[]", "generate.reformat.roles: List should have at least 1 item")):
        outcome = medvl("curate", "run", config, "--out", tmp_path / "out", f"generate.reformat.roles={roles}")
        assert outcome.code == 2 and message in outcome.err and len(outcome.err.strip().splitlines()) == 1, outcome.err
    assert not (tmp_path / "out").exists()


def test_reformat_prompt_snapshot():
    config = ReformatConfig(enabled=True, llm=LLM)
    system, user = reformat_prompt(FIGURE, config)
    check("reformat_system.txt", system)
    check("reformat_user.txt", user)
    parts = [{"type": "image_url", "image_url": {"url": "data:image/jpeg;base64,AAAA"}}] * 2
    request = reformat_request(FIGURE, config, parts)
    assert (
        request.messages[1]["content"][:2] == parts
        and request.params["response_format"]["type"] == "json_object"
    )
    assert reformat_prompt(FIGURE, config) == (system, user)  # seeded: the same every time


def test_self_instruct_prompt_snapshot():
    request = self_instruct_request(FIGURE, SelfInstructConfig(enabled=True, llm=LLM, few_shot=2))
    check("self_instruct_messages.json", json.dumps(request.messages, indent=1, ensure_ascii=False) + "\n")
    roles = [m["role"] for m in request.messages]
    assert roles == ["system", "user", "assistant", "user", "assistant", "user"]
    assert request.messages[0]["content"] == read_text("self_instruct_system.txt")
    no_mentions = self_instruct_request(
        FIGURE, SelfInstructConfig(enabled=True, llm=LLM, use_inline_mentions=False)
    )
    assert "Figure Context" not in no_mentions.messages[-1]["content"]


def test_llava_med_context_format():
    assert context_text("Figure 1", "CT of the chest.", ["a", "b"], True) == (
        "Figure Caption:\nFigure 1: CT of the chest.\n\nFigure Context:\n\t- a\n\t- b"
    )
    assert context_text("Figure 1", "Figure 1. CT.", [], True) == "Figure Caption:\nFigure 1. CT."


def test_concept_record_snapshot_and_cutoff():
    record = concept_record(FIGURE, ConceptConfig())
    check("concept_record.json", json.dumps(record, indent=1) + "\n")
    assert record_problems(record) == []
    assert record["kind"] == "concise" and record["conversations"][1]["value"].startswith("Axial CT (A)")
    assert record["conversations"][0]["value"].count("<image>") == 2
    long = FigureInput(**{**FIGURE.__dict__, "caption": "word " * 30})
    detailed = concept_record(long, ConceptConfig())
    assert detailed["kind"] == "detailed"
    assert detailed["conversations"][0]["value"].split("\n")[-1] in read_pool("detailed_instructions.txt")


@pytest.mark.parametrize(
    "caption, stripped",
    [
        ("Figure 4. Nuclear magnetic resonance scan.", "Nuclear magnetic resonance scan."),
        ("Fig. 2B: CT of the chest", "CT of the chest"),
        ("FIGURE 10 MRI", "MRI"),
        ("Figures show nothing", "Figures show nothing"),
    ],
)
def test_strip_figure_label(caption: str, stripped: str):
    assert strip_figure_label(caption) == stripped
