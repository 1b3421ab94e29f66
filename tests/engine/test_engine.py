"""The generation-engine interface: one batched `generate`, its one-by-one retry, per-request seeds and
stop checks, the registry, and the local and vLLM engines (vLLM through a stand-in module: it is not
installed here)."""

from __future__ import annotations

import sys

import pytest

from medvl.config import ConfigError
from medvl.engine import ENGINES, Engine, EngineConfig, Reply, Request, make_engine, register_engine
from medvl.errors import UserError
from medvl.model.generate import GenerationSettings


def ask(text: str, images: list | None = None) -> Request:
    parts = [{"type": "image"} for _ in images or []] + [{"type": "text", "text": text}]
    return Request([{"role": "user", "content": parts}], list(images or []), item=text)


class Picky(Engine):
    """Answers a batch by echoing each question, unless one of them says "boom" (the whole batch fails)."""

    def __init__(self, config: EngineConfig | None = None, settings: GenerationSettings | None = None):
        self.batches: list[int] = []

    def run(self, requests, settings=None):
        self.batches.append(len(requests))
        if any(r.item == "boom" for r in requests):
            raise RuntimeError("cannot answer boom")
        if any(r.item == "misconfigured" for r in requests):
            raise ConfigError("set engine.model")
        return [Reply(r.item.upper(), 1, 1) for r in requests]


def test_a_failed_batch_is_retried_one_by_one_and_only_the_bad_request_fails():
    engine = Picky()
    replies = engine.generate([ask("a"), ask("boom"), ask("c")])
    assert [r.text for r in replies] == ["A", None, "C"]
    assert replies[1].finish_reason == "error" and replies[1].error == "RuntimeError: cannot answer boom"
    assert engine.batches == [3, 1, 1, 1]
    with pytest.raises(UserError, match="engine.model"):  # a setting to fix is not a per-request failure
        engine.generate([ask("a"), ask("misconfigured")])


def test_a_request_no_longer_wanted_is_not_started():
    engine = Picky()
    gone = Request(ask("b").messages, item="b", should_stop=lambda: True)
    replies = engine.generate([ask("a"), gone, ask("boom")])
    assert [(r.text, r.finish_reason) for r in replies] == [("A", "stop"), (None, "cancelled"), (None, "error")]
    assert engine.batches == [2, 1, 1]  # the stopped request is in no batch


def test_a_registered_engine_is_made_by_name():
    register_engine("picky")(Picky)
    try:
        engine = make_engine(EngineConfig(kind="picky"), GenerationSettings())
        assert isinstance(engine, Picky) and engine.generate([ask("x")])[0].text == "X"
        assert "picky" in ENGINES.names() and EngineConfig(kind="picky").label() == "picky"
    finally:
        ENGINES.unregister("picky")
    with pytest.raises(ValueError, match="unknown engine 'picky'; known: local, openai, vllm"):
        EngineConfig(kind="picky")


def test_local_engine_answers_a_batch_around_a_request_it_cannot_run(tiny_model_dir, rgb_image):
    engine = make_engine(EngineConfig(kind="local", model=str(tiny_model_dir)),
                         GenerationSettings(max_new_tokens=3, batch_size=8))
    broken = Request([{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "?"}]}], [])
    replies = engine.generate([ask("What is it?", [rgb_image]), broken, ask("And now?")])
    assert replies[1].error and replies[1].text is None
    assert all(r.error is None and isinstance(r.text, str) and r.new_tokens >= 1 for r in (replies[0], replies[2]))
    assert replies[0].prompt_tokens > replies[2].prompt_tokens  # the image's tokens


def test_local_engine_seeds_each_request_and_stops_it_when_asked(tiny_model_dir):
    settings = GenerationSettings(max_new_tokens=6, do_sample=True, temperature=1.5, batch_size=8)
    engine = make_engine(EngineConfig(kind="local", model=str(tiny_model_dir)), settings)

    def seeded(text: str, seed: int) -> Request:
        return Request(ask(text).messages, seed=seed)

    alone = engine.generate([seeded("Describe it.", 5)])[0]
    crowded = engine.generate([seeded("Other?", 1), seeded("Describe it.", 5), seeded("More?", 2)])[1]
    assert (alone.text, alone.new_tokens) == (crowded.text, crowded.new_tokens)  # its seed, not its neighbours
    asked = []
    stop_after_two = Request(ask("Describe it.").messages, should_stop=lambda: asked.append(1) or len(asked) > 2)
    cancelled = engine.generate([stop_after_two])[0]
    assert cancelled.finish_reason == "cancelled" and cancelled.new_tokens < 6


def test_vllm_engine_sends_openai_messages_and_reads_vllm_outputs(stand_in_vllm, rgb_image):
    calls = stand_in_vllm
    config = EngineConfig(kind="vllm", model="runs/m", vllm_args={"max_model_len": 2048}, max_image_side=32)
    own_seed = Request(ask("Sure?").messages, seed=11)
    replies = make_engine(config, GenerationSettings(max_new_tokens=7, seed=3)).generate(
        [ask("Normal?", [rgb_image]), own_seed])
    assert replies == [Reply("yes", 3, 2, "stop")] * 2
    assert calls["init"] == ("runs/m", {"max_model_len": 2048})
    conversation, params = calls["chat"][0][0], calls["chat"][1]
    assert params == [{"temperature": 0.0, "max_tokens": 7, "repetition_penalty": 1.0, "seed": seed} for seed in (3, 11)]
    image, text = conversation[0]["content"]
    assert image["image_url"]["url"].startswith("data:image/jpeg;base64,") and text["text"] == "Normal?"


def test_vllm_engine_s_context_is_the_one_vllm_enforces(stand_in_vllm, tiny_model_dir):
    asked = EngineConfig(kind="vllm", model=str(tiny_model_dir), vllm_args={"max_model_len": 100_000})
    engine = make_engine(asked, GenerationSettings())
    assert engine.processor is not None  # a folder: servable, measuring prompts with its processor
    assert engine.context_length == stand_in_vllm["max_model_len"]  # not vllm_args, not the model's config
    stand_in_vllm["max_model_len"] = 700
    hub_model = make_engine(EngineConfig(kind="vllm", model="hub/model"), GenerationSettings())
    assert hub_model.context_length == 700


def test_vllm_engine_refuses_a_folder_vllm_would_not_load_before_vllm_starts(stand_in_vllm, tiny_model_dir,
                                                                             broken_model_dirs, tmp_path):
    """Before: vLLM was started on it, to fail (after loading) in its own words, and a broken config.json
    was a JSONDecodeError traceback from reading the processor."""
    import json
    import shutil

    legacy = tmp_path / "legacy"
    shutil.copytree(tiny_model_dir, legacy)
    config = json.loads((legacy / "config.json").read_text())
    (legacy / "config.json").write_text(json.dumps(config | {"architectures": ["LlavaLlamaForCausalLM"]}))
    refused_legacy = (f"{legacy}: vLLM cannot load this folder (architectures is ['LlavaLlamaForCausalLM'], "
                      "expected ['LlavaForConditionalGeneration']); give a folder that `medvl train`")
    for folder, said in [(legacy, refused_legacy), *broken_model_dirs]:
        with pytest.raises(UserError) as refused:
            make_engine(EngineConfig(kind="vllm", model=str(folder)), GenerationSettings())
        assert said in str(refused.value) and "\n" not in str(refused.value)
        assert "init" not in stand_in_vllm  # vLLM was not started


def test_vllm_engine_without_vllm_is_one_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "vllm", None)  # import vllm raises ImportError
    with pytest.raises(UserError, match=r"pip install 'medvl\[vllm\]'"):
        make_engine(EngineConfig(kind="vllm", model="m"), GenerationSettings())
