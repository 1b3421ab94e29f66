"""The mock OpenAI server itself: its API surface, scripts, concurrency, and the subprocess mode."""

from __future__ import annotations

import json
import time

import httpx
from llm_testkit import ask, fast_config

from medvl.llm.client import LLMClient
from medvl.llm.mock_server import start_mock_server_process


def test_models_endpoint_and_json_mode_default_reply(mock_server):
    server = mock_server()
    listing = httpx.get(server.base_url + "/models").json()
    assert listing["object"] == "list" and listing["data"][0]["id"]
    client = LLMClient(fast_config(server))
    reply = client.run_many([ask("describe", response_format={"type": "json_object"})], progress=False)[0]
    assert json.loads(reply.text)["echo"] == "describe"
    assert server.requests[0]["response_format"] == {"type": "json_object"}


def test_script_as_a_function_of_the_request_index(mock_server):
    server = mock_server(script=lambda i: {"reply_json": {"index": i}})
    client = LLMClient(fast_config(server, max_concurrency=1))
    replies = client.run_many([ask("a"), ask("b")], progress=False)
    assert [json.loads(r.text) for r in replies] == [{"index": 0}, {"index": 1}]


def test_latency_is_served_concurrently(mock_server):
    server = mock_server(latency_s=0.5)
    client = LLMClient(fast_config(server, max_concurrency=32))
    start = time.monotonic()
    client.run_many([ask(f"q {i}") for i in range(32)], progress=False)
    # 32 x 0.5 s served at once, not one after another (16 s); the margin absorbs a loaded machine
    assert time.monotonic() - start < 4.0
    assert server.max_in_flight == 32


def test_subprocess_server_with_script_log_and_responder(tmp_path):
    script = [{"status": 500}, "ok"]
    responder = "medvl.llm.mock_server:default_responder"
    with start_mock_server_process(script=script, log_path=tmp_path / "log.jsonl", responder=responder) as server:
        client = LLMClient(fast_config(server, max_retries=2))
        reply = client.run_many([ask("q")], progress=False)[0]
        logged = server.logged()
    assert server.process.poll() is not None  # stopped on leaving the block
    assert reply.text.startswith("mock reply") and reply.text.endswith(": q")
    assert logged[0]["behaviour"] == {"status": 500}
    assert [entry["index"] for entry in logged] == [0, 1]
    assert server.count_by_key() == {reply.key: 2}
