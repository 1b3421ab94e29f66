"""`medvl serve` on the engine interface: a stub engine served over HTTP (batched, streamed, one failing
request among good ones), the vLLM engine (a stand-in vllm module) with its folder's processor and the
request's sampling settings, engines that cannot be served, and `--engine vllm` where vllm is missing."""

from __future__ import annotations

import json
import sys
import threading

import httpx
import pytest
from serve_helpers import assert_openai_error

from medvl.engine import Engine, Reply

CHAT = "/v1/chat/completions"


class Canned(Engine):
    """Answers "canned: <question>" for a whole batch at once; a batch holding "boom" fails."""

    context_length = 512

    def __init__(self, processor):
        self.processor = processor
        self.batches: list[int] = []
        self.seeds: list[int | None] = []

    def run(self, requests, settings=None):
        self.batches.append(len(requests))
        self.seeds += [r.seed for r in requests]
        questions = [r.messages[-1]["content"] for r in requests]  # text-only requests: plain strings
        if "boom" in questions:
            raise RuntimeError("the engine broke on boom")
        return [Reply(f"canned: {q}", 3, settings.max_new_tokens) for q in questions]


def _ask(question: str, **extra) -> dict:
    return {"model": "tiny", "messages": [{"role": "user", "content": question}], "max_tokens": 5, **extra}


def test_a_stub_engine_is_served_batched_and_streamed(serve, generator):
    engine = Canned(generator.processor)
    with serve(engine=engine, batch_wait_ms=300) as url:
        answers: dict[str, httpx.Response] = {}

        def send(question: str) -> None:
            answers[question] = httpx.post(url + CHAT, json=_ask(question, seed=7), timeout=60)

        threads = [threading.Thread(target=send, args=(q,)) for q in ("one", "boom", "three")]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        for question in ("one", "three"):
            body = answers[question].json()
            assert body["choices"][0]["message"]["content"] == f"canned: {question}"
            assert body["usage"] == {"prompt_tokens": 3, "completion_tokens": 5, "total_tokens": 8}
        assert_openai_error(answers["boom"], 500, "generation_failed")  # only the bad request fails
        assert engine.batches[0] == 3 and sorted(engine.batches[1:]) == [1, 1, 1]  # the engine's retry
        assert set(engine.seeds) == {7}

        streamed = httpx.post(url + CHAT, json=_ask("two", stream=True), timeout=60).text
        events = [json.loads(e[len("data: "):]) for e in streamed.split("\n\n") if e and e != "data: [DONE]"]
        assert "".join(e["choices"][0]["delta"].get("content", "") for e in events) == "canned: two"
        assert events[-1]["choices"][0]["finish_reason"] == "stop" and streamed.endswith("data: [DONE]\n\n")


def test_the_vllm_engine_is_served_with_its_folder_s_processor(serve, stand_in_vllm, tiny_model_dir):
    from medvl.engine import EngineConfig, make_engine
    from medvl.model.generate import GenerationSettings

    engine = make_engine(EngineConfig(kind="vllm", model=str(tiny_model_dir)), GenerationSettings())
    with serve(engine=engine) as url:
        body = httpx.post(url + CHAT, json=_ask("Normal?", temperature=0.7, top_p=0.9, seed=5), timeout=60).json()
    assert body["choices"][0]["message"]["content"] == "yes" and body["usage"]["completion_tokens"] == 2
    (params,) = stand_in_vllm["chat"][1]  # the request's sampling settings reach vLLM
    assert params == {"temperature": 0.7, "top_p": 0.9, "max_tokens": 5, "repetition_penalty": 1.0, "seed": 5}


def test_an_engine_without_a_processor_cannot_be_served(serve):
    from medvl.serve.app import EngineNotServable

    with pytest.raises(EngineNotServable, match="cannot be served"):
        with serve(engine=Canned(processor=None)):
            pass


def test_serve_engine_vllm_without_vllm_is_one_line(tmp_path, monkeypatch, medvl):
    monkeypatch.setitem(sys.modules, "vllm", None)  # import vllm raises ImportError, installed or not
    result = medvl("serve", tmp_path, "--engine", "vllm")
    assert result.code == 2 and "needs vllm installed" in result.err
    assert len(result.err.strip().splitlines()) == 1


@pytest.mark.parametrize("kind,why", [("openai", "cannot be served (it has no model processor)"), ("tensorrt", "is not a known engine")])
def test_serve_refuses_an_engine_it_cannot_run_in_one_line(tmp_path, kind, why, medvl):
    result = medvl("serve", tmp_path, "--engine", kind)
    assert result.code == 2
    assert result.err.strip() == f"error: engine {kind!r} {why}; medvl serve runs: local, vllm"


def test_serve_config_refuses_an_engine_it_cannot_run(tmp_path):
    from medvl.config import ConfigError, load_config
    from medvl.serve.config import ServeConfig

    with pytest.raises(ConfigError, match=r"engine .openai. cannot be served \(it has no model processor\); medvl serve runs: local, vllm"):
        load_config(ServeConfig, overrides=["engine.kind=openai"])
    served = load_config(ServeConfig, overrides=["engine.kind=vllm", "engine.vllm_args.max_model_len=4096"])
    assert served.engine.vllm_args == {"max_model_len": 4096}
