"""The shared failure kinds: every stage's per-record failure is a `Rejection` with reason and detail."""

from __future__ import annotations

from pathlib import Path

import pytest

from medvl.errors import Rejection
from medvl.io.images import ImageLoadError, load_image
from medvl.train.encode import EncodeError
from medvl.train.validate import Rejected


def test_stage_rejections_share_reason_and_detail_and_keep_their_messages(tmp_path):
    with pytest.raises(Rejection) as image:
        load_image(tmp_path / "absent.png")
    assert isinstance(image.value, ImageLoadError) and image.value.reason == "missing"
    assert str(image.value) == f"{tmp_path / 'absent.png'}: missing: no such file"
    encode = EncodeError("too_long", "9 tokens > max_length 8")
    assert (encode.reason, encode.detail, str(encode)) == ("too_long", "9 tokens > max_length 8",
                                                          "too_long: 9 tokens > max_length 8")
    rejected = Rejected("tokens", "too_long", "9 > 8")
    assert isinstance(rejected, Rejection) and (rejected.stage, rejected.reason, rejected.detail) == (
        "tokens", "too_long", "9 > 8")
    assert str(rejected) == "tokens/too_long: 9 > 8"
    assert str(Rejection("empty_answer")) == "empty_answer"


@pytest.fixture
def medvl(monkeypatch, capsys):
    """`medvl ARGS...` through `medvl.cli.main`: (exit status, stderr)."""
    import sys

    from medvl.cli import main

    def run(*args: str) -> tuple[int, str]:
        monkeypatch.setattr(sys, "argv", ["medvl", *map(str, args)])
        with pytest.raises(SystemExit) as exit_info:
            main()
        return exit_info.value.code, capsys.readouterr().err

    return run


def test_user_mistakes_are_one_line_and_exit_2(medvl, tmp_path):
    rad = Path(__file__).parents[1] / "eval" / "fixtures" / "vqa_rad"
    config = tmp_path / "eval.yaml"
    config.write_text(f"benchmark: {{name: vqa_rad, root: '{rad}'}}\noutput_dir: '{tmp_path / 'run'}'\n")
    cases = [
        (["data", "check", tmp_path / "absent.jsonl"], "absent.jsonl not found"),
        (["eval", "run", config, f"backend.model={tmp_path}"], "is not a saved model folder"),
        (["eval", "run", config, "backend.kind=vlm"], "unknown engine 'vlm'; known: local, openai, vllm, majority"),
        (["eval", "run", config, "benchmark.name=vqarad"], "unknown benchmark 'vqarad'"),
        (["curate", "label", tmp_path / "nowhere", "--out", tmp_path / "labels.jsonl", "--model", "mock",
          "--base-url", "http://127.0.0.1:9"], "nowhere: no such image file or folder"),
    ]
    for args, message in cases:
        code, err = medvl(*args)
        assert code == 2 and message in err and "Traceback" not in err, (args, err)


def test_an_incomplete_curation_is_one_line_and_exit_3(medvl, tmp_path, monkeypatch):
    """The user error that asks for a rerun keeps its own status (docs/curation.md: 3 = run again)."""
    import medvl.curate.pipeline as pipeline
    from medvl.curate.store import CurateIncomplete

    def incomplete(*args, **kwargs):
        raise CurateIncomplete("stage generate: tasks [1] did not finish; run again to resume")

    monkeypatch.setattr(pipeline, "run_curation", incomplete)
    config = tmp_path / "curate.yaml"
    config.write_text(f"sources: [{{format: pairs, path: '{tmp_path / 'pairs.jsonl'}'}}]\n")
    code, err = medvl("curate", "run", config, "--out", tmp_path / "out")
    assert code == 3 and "did not finish; run again to resume" in err and len(err.strip().splitlines()) == 1
