"""`medvl.curate.label.label_images`: a reply that is no label is a counted reject line with its reason
(`BadReply`, a `Rejection`); any other ValueError, a bug's, stops the run instead of being counted."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import medvl.curate.label as label
from medvl.llm.config import LLMConfig
from medvl.llm.mock_server import MockServer


def _label(server: MockServer, image: Path, out: Path):
    config = LLMConfig(model="mock", base_url=server.base_url, cache_dir=str(out.parent / "cache"), max_retries=0)
    return label.label_images([image], config, out, progress=False)


@pytest.mark.parametrize(("reply", "reason", "detail"), [
    ("It looks medical to me.", "invalid_json", "reply is not JSON: 'It looks medical to me.'"),
    ('{"category": "ct"}', "schema", """no boolean 'medical' in '{"category": "ct"}'"""),
    ("[true]", "schema", "no boolean 'medical' in '[true]'"),
])
def test_a_reply_that_is_no_label_is_a_counted_reject(tmp_path, texture, reply, reason, detail):
    image = tmp_path / "scan.png"
    texture(1).save(image)
    out = tmp_path / "labels.jsonl"
    with MockServer(lambda body: reply) as server:
        counts = _label(server, image, out)
    assert counts == {"already_done": 0, f"rejected:{reason}": 1}
    assert out.read_text() == ""
    lines = label.rejects_path(out).read_text().splitlines()
    assert [json.loads(line) for line in lines] == [
        {"id": str(image), "stage": "label", "reason": reason, "detail": detail}]


@pytest.mark.parametrize("where", ["_request", "parse_label"])  # making the request, reading the reply
def test_a_valueerror_from_a_bug_stops_the_run(tmp_path, texture, monkeypatch, where):
    image = tmp_path / "scan.png"
    texture(1).save(image)
    out = tmp_path / "labels.jsonl"

    def broken(*args: object):
        raise ValueError("a bug in the labelling code")

    monkeypatch.setattr(label, where, broken)
    with MockServer(lambda body: '{"medical": true, "category": "ct"}') as server:
        with pytest.raises(ValueError, match="a bug in the labelling code"):
            _label(server, image, out)
    assert not label.rejects_path(out).exists() or label.rejects_path(out).read_text() == ""
