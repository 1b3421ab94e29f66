"""OpenAI options answered as OpenAI's semantics say: seeds, refused fields, DICOM images, usage."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import httpx
import pytest
import torch
from serve_helpers import assert_openai_error

CHAT = "/v1/chat/completions"


def _ask(**extra) -> dict:
    return {"model": "tiny", "messages": [{"role": "user", "content": "Describe the scan."}], "max_tokens": 8,
            **extra}


def _text(url: str, **extra) -> str:
    response = httpx.post(url + CHAT, json=_ask(**extra), timeout=60)
    assert response.status_code == 200, response.text
    return response.json()["choices"][0]["message"]["content"]


def test_seeds_are_validated_and_sampling_without_one_is_fresh(serve):
    with serve() as url:
        for seed in (2**63, 2**64, -1, "abc"):
            assert_openai_error(httpx.post(url + CHAT, json=_ask(seed=seed), timeout=60), 400, "invalid_request")
        seeded = {_text(url, temperature=1.5, seed=2**63 - 1) for _ in range(2)}
        unseeded = {_text(url, temperature=1.5) for _ in range(3)}
    assert len(seeded) == 1  # the same seed, the same answer
    assert len(unseeded) == 3  # no seed: fresh randomness each time


@pytest.mark.parametrize("field,value", [
    ("response_format", {"type": "json_object"}),
    ("response_format", {"type": "json_schema", "json_schema": {"name": "x", "schema": {}}}),
    ("top_logprobs", 3),
    ("logprobs", True),
    ("frequency_penalty", 0.5),
    ("presence_penalty", -0.5),
    ("logit_bias", {"50256": -100}),
    ("n", 2),
    ("tools", [{"type": "function", "function": {"name": "f"}}]),
    ("audio", {"voice": "alloy", "format": "wav"}),
    ("modalities", ["text", "audio"]),
])
def test_unsupported_options_are_refused_by_name(serve, field, value):
    with serve() as url:
        error = assert_openai_error(httpx.post(url + CHAT, json=_ask(**{field: value}), timeout=60), 400,
                                    "unsupported_parameter")
        assert error["param"] == field and field in error["message"]
        neutral = {"response_format": {"type": "text"}, "frequency_penalty": 0, "presence_penalty": 0,
                   "logit_bias": {}, "modalities": ["text"], "n": 1, "logprobs": False, "top_logprobs": 0}
        if field in neutral:  # their neutral values are fine
            assert httpx.post(url + CHAT, json=_ask(**{field: neutral[field]}), timeout=60).status_code == 200


def test_dicom_images_under_their_media_type(serve):
    from pydicom.data import get_testdata_file

    path = get_testdata_file("CT_small.dcm", download=False)
    if path is None:
        pytest.skip("pydicom's test files are not installed")
    url_of = f"data:application/dicom;base64,{base64.b64encode(Path(path).read_bytes()).decode()}"
    content = [{"type": "image_url", "image_url": {"url": url_of}}, {"type": "text", "text": "Which organ?"}]
    with serve() as url:
        response = httpx.post(url + CHAT, json=_ask(messages=[{"role": "user", "content": content}]), timeout=60)
    assert response.status_code == 200, response.text


def _usages(url: str) -> tuple[dict, dict]:
    plain = httpx.post(url + CHAT, json=_ask(), timeout=60).json()["usage"]
    streamed = httpx.post(url + CHAT, json=_ask(stream=True, stream_options={"include_usage": True}), timeout=60)
    events = [json.loads(e[len("data: "):]) for e in streamed.text.split("\n\n") if e and e != "data: [DONE]"]
    return plain, events[-1]["usage"]


def test_usage_is_the_same_streamed_or_not(serve, tiny_model):
    model, processor = tiny_model
    with serve() as url:
        plain, streamed = _usages(url)
        assert plain == streamed
        end = processor.tokenizer.convert_tokens_to_ids("<|im_end|>")
        original = model.lm_head.bias
        model.lm_head.bias = torch.nn.Parameter(torch.full((model.lm_head.out_features,), -1e4))
        model.lm_head.bias.data[end] = 1e4
        try:  # an answer ended by the end-of-turn token: that token counts, streamed or not
            plain, streamed = _usages(url)
        finally:
            model.lm_head.bias = original
    assert plain == streamed and plain["completion_tokens"] == 1


def test_serve_on_a_folder_that_is_not_a_model_says_so(tmp_path, medvl, broken_model_dirs):
    """A config.json that is a list was a TypeError traceback; cut short or without model_type, a line
    naming no file."""
    (tmp_path / "notes.txt").write_text("not a model")
    no_config = f"{tmp_path} is not a saved model folder (no config.json)"
    for folder, said in [(tmp_path, no_config), *broken_model_dirs]:
        result = medvl("serve", folder)
        assert result.code == 2 and result.err.startswith(f"error: {said}"), result.err
        assert len(result.err.strip().splitlines()) == 1
