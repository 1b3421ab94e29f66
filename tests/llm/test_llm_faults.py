"""LLMClient against a real mock OpenAI server: valid replies, retries, and each fault the API can show."""

from __future__ import annotations

import asyncio
import time

import pytest
from llm_testkit import ask, fast_config

from medvl.llm.client import LLMClient, LLMError
from medvl.llm.messages import body_key


def complete(client: LLMClient, request):
    return asyncio.run(client.complete(request))


def test_valid_reply_carries_text_usage_and_the_key_the_server_saw(mock_server):
    server = mock_server()
    client = LLMClient(fast_config(server))
    reply = complete(client, ask("What does the CT show?"))
    (body,) = server.requests
    assert body["model"] == "mock-model" and body["temperature"] == 0.0 and body["max_tokens"] == 1024
    assert body["messages"] == [{"role": "user", "content": "What does the CT show?"}]
    assert reply.text.startswith("mock reply") and reply.text.endswith("What does the CT show?")
    assert reply.finish_reason == "stop" and not reply.cached and reply.model == "mock-model"
    assert reply.key == body_key(body)
    assert reply.usage.prompt_tokens > 0 and reply.usage.completion_tokens > 0
    assert client.usage.requests_sent == 1 and client.usage.retries == 0


def test_429_waits_for_retry_after_then_succeeds(mock_server):
    server = mock_server(script=[{"status": 429, "retry_after": 0.4}, "ok"])
    client = LLMClient(fast_config(server))  # its own backoff would wait ~0.01 s
    start = time.monotonic()
    reply = complete(client, ask("q"))
    elapsed = time.monotonic() - start
    assert 0.4 <= elapsed < 2.0
    assert reply.text.startswith("mock reply")
    assert len(server.requests) == 2 and client.usage.retries == 1


@pytest.mark.parametrize("status", [500, 502, 503])
def test_5xx_is_retried(mock_server, status):
    server = mock_server(script=[{"status": status}, "ok"])
    client = LLMClient(fast_config(server))
    assert complete(client, ask("q")).text.startswith("mock reply")
    assert len(server.requests) == 2


def test_timeout_is_retried(mock_server):
    server = mock_server(script=[{"timeout": 30}, "ok"])
    client = LLMClient(fast_config(server, timeout_s=0.3))
    start = time.monotonic()
    reply = complete(client, ask("q"))
    assert 0.3 <= time.monotonic() - start < 3.0
    assert reply.text.startswith("mock reply") and len(server.requests) == 2


def test_connection_refused_is_retried_then_exhausted(mock_server):
    """A server that answered, then went away (one never reached stops the run: test_llm_unreachable)."""
    server = mock_server()
    client = LLMClient(fast_config(server, max_retries=2))
    complete(client, ask("first"))
    server.stop()
    with pytest.raises(LLMError) as caught:
        complete(client, ask("q"))
    assert caught.value.kind == "retries_exhausted" and caught.value.cause_kind == "connection"
    assert client.usage.requests_sent == 1 + 3


def test_retries_exhausted_is_an_error_and_never_cached(mock_server, tmp_path):
    server = mock_server(script=[{"status": 503}] * 3)
    client = LLMClient(fast_config(server, max_retries=2, cache_dir=str(tmp_path)))
    with pytest.raises(LLMError) as caught:
        complete(client, ask("q"))
    error = caught.value
    assert error.kind == "retries_exhausted" and error.cause_kind == "server_error" and error.status == 503
    assert error.key == client.resolve(ask("q")).key
    assert len(server.requests) == 3 and len(client.cache) == 0
    assert client.usage.failures == 1 and client.usage.retries == 2
    # The script is spent: the same request now succeeds (the error was not cached).
    assert not complete(client, ask("q")).cached and len(server.requests) == 4


@pytest.mark.parametrize("status", [400, 422])
def test_client_errors_are_not_retried(mock_server, status):
    """(A 401, or 403s in a row, stop the run; a lone 403 fails its item: test_llm_key_rejected; a 404
    stops it: test_llm_hostile_server.)"""
    server = mock_server(script=[{"status": status}])
    client = LLMClient(fast_config(server))
    with pytest.raises(LLMError) as caught:
        complete(client, ask("q"))
    assert caught.value.kind == "http_error" and caught.value.status == status
    assert len(server.requests) == 1 and client.usage.retries == 0


def test_api_key_comes_from_the_named_env_var(mock_server, monkeypatch):
    seen: list[str] = []
    server = mock_server()
    monkeypatch.setenv("MEDVL_TEST_KEY", "sk-test-123")
    client = LLMClient(fast_config(server, api_key_env="MEDVL_TEST_KEY"))

    async def run():
        await client.complete(ask("q"))
        seen.append(client._runtime.api.api_key)

    asyncio.run(run())
    assert seen == ["sk-test-123"]


@pytest.mark.parametrize("garbled", ["malformed", "empty_choices", "null_content"])
def test_garbled_200_is_resent_once_then_bad_response(mock_server, garbled):
    server = mock_server(script=[garbled, garbled, "ok"])
    client = LLMClient(fast_config(server))
    with pytest.raises(LLMError) as caught:
        complete(client, ask("q"))
    assert caught.value.kind == "bad_response"
    assert len(server.requests) == 2


def test_one_garbled_200_then_ok_recovers(mock_server):
    server = mock_server(script=["malformed", "ok"])
    client = LLMClient(fast_config(server))
    assert complete(client, ask("q")).text.startswith("mock reply")
    assert len(server.requests) == 2


def test_content_filter_fails_without_retry(mock_server):
    server = mock_server(script=[{"text": "", "finish_reason": "content_filter"}])
    client = LLMClient(fast_config(server))
    with pytest.raises(LLMError) as caught:
        complete(client, ask("q"))
    assert caught.value.kind == "content_filter" and len(server.requests) == 1


def test_refusal_text_and_length_finish_are_replies_for_the_caller_to_judge(mock_server):
    refusal = "I'm sorry, I can't help with that."
    server = mock_server(script=[{"text": refusal}, {"text": '{"answer": "trunc', "finish_reason": "length"}])
    client = LLMClient(fast_config(server, max_concurrency=1))
    first, second = client.run_many([ask("a"), ask("b")], progress=False)
    assert first.text == refusal and first.finish_reason == "stop"
    assert second.finish_reason == "length"
