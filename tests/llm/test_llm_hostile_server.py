"""LLMClient against servers that misbehave in ways test_llm_faults does not script: replies whose
fields are not what they claim, statuses that condemn every request, headers and waits that lie."""

from __future__ import annotations

import socket
import threading
import time
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from types import SimpleNamespace

import pytest
from llm_testkit import ask, fast_config

from medvl.errors import UserError
from medvl.llm.client import EndpointUnusable, LLMClient, LLMError
from medvl.llm.messages import estimate_prompt_tokens, estimate_text_tokens

RESUME = "finished items are kept: rerun to resume"

PRICES = {"price_input_per_mtok": 1.0, "price_output_per_mtok": 1.0}  # $1 per million tokens


@pytest.mark.parametrize("count", [-1_000_000, "many", 12.5, 1e30, 10**30, True],
                         ids=["negative", "string", "fraction", "huge_float", "huge_int", "bool"])
def test_a_usage_count_that_is_no_count_is_estimated_and_cached(mock_server, tmp_path, count):
    """Before: a negative count made the cost negative, 10**30 made it 1e24 USD and broke the cache
    (sqlite's INTEGER), a string or 1e30 crashed the whole run with a traceback (int())."""
    text = "twelve characters"
    server = mock_server(script=[{"text": text, "usage": {"prompt_tokens": count, "completion_tokens": 3}}])
    client = LLMClient(fast_config(server, cache_dir=str(tmp_path), **PRICES))
    (reply,) = client.run_many([ask("q")], progress=False)
    prompt = estimate_prompt_tokens([{"role": "user", "content": "q"}], 765)
    assert (reply.text, reply.usage.prompt_tokens, reply.usage.completion_tokens) == (text, prompt, 3)
    assert client.usage.prompt_tokens == prompt and client.usage.cost_usd == pytest.approx((prompt + 3) / 1e6)
    assert client.run_many([ask("q")], progress=False)[0].usage == reply.usage  # the cache holds it


def test_a_model_or_finish_reason_that_is_no_string_is_replaced(mock_server, tmp_path):
    """Before: the reply carried a dict as its model and a list as its finish_reason, and the cache
    could not store either: the run crashed."""
    server = mock_server(script=[{"text": "a", "model": {"id": 1}, "finish_reason": ["stop"]}])
    client = LLMClient(fast_config(server, cache_dir=str(tmp_path)))
    (reply,) = client.run_many([ask("q")], progress=False)
    assert (reply.text, reply.model, reply.finish_reason) == ("a", "mock-model", "unknown")
    assert client.run_many([ask("q")], progress=False)[0].cached


def test_the_tokens_of_a_200_that_fails_are_billed_but_it_is_no_reply(mock_server):
    """A content-filtered or garbled 200 is billed by the provider: its stated usage counts (before:
    nothing), a reply does not; a retried 5xx costs nothing; each reply counts once."""
    usage = {"prompt_tokens": 100, "completion_tokens": 7}
    server = mock_server(script=[
        {"text": "", "finish_reason": "content_filter", "usage": usage},
        {"status": 503}, {"text": "fine", "usage": usage},
    ])
    client = LLMClient(fast_config(server, max_concurrency=1, **PRICES))
    filtered, answered = client.run_many([ask("a"), ask("b")], progress=False)
    assert isinstance(filtered, LLMError) and filtered.kind == "content_filter" and answered.text == "fine"
    totals = client.usage
    assert (totals.replies, totals.requests_sent, totals.failures, totals.retries) == (1, 3, 1, 1)
    assert (totals.prompt_tokens, totals.completion_tokens) == (200, 14)
    assert totals.cost_usd == pytest.approx(214 / 1e6)
    assert estimate_text_tokens("fine") != 7  # the stated count, not an estimate


def test_a_model_the_endpoint_does_not_have_stops_the_run_in_one_line(mock_server):
    """Before: every item failed alone with its 404 (curation rejected every record, a judge scored none)."""
    vllm_404 = {"message": "The model `mock-model` does not exist.", "type": "NotFoundError", "code": 404}
    server = mock_server(script=lambda index: {"status": 404, "error": vllm_404} if index else "ok")
    client = LLMClient(fast_config(server, max_concurrency=1))
    assert stopped(client, items=10) == (
        f"LLM endpoint {server.base_url} has no model mock-model (404 Not Found: The model `mock-model` "
        f"does not exist.); set llm.model to a model it serves (GET {server.base_url}/models lists them) "
        f"or fix llm.base_url; {RESUME}")
    assert client.usage.requests_sent == 2  # a model unloaded mid-run


def test_an_account_out_of_quota_stops_the_run_a_rate_limit_does_not(mock_server):
    """Before: OpenAI's insufficient_quota 429 was retried like a rate limit, by every item."""
    quota = {"message": "You exceeded your current quota, please check your plan and billing details.",
             "type": "insufficient_quota", "code": "insufficient_quota"}
    server = mock_server(script=[{"status": 429}, "ok"] + [{"status": 429, "error": quota}] * 10)
    client = LLMClient(fast_config(server, max_concurrency=1))
    assert stopped(client, items=10) == (
        f"LLM endpoint {server.base_url} says the account is out of quota (429 Too Many Requests: "
        f"{quota['message']}); add credit to the account of the key in $OPENAI_API_KEY, or set another key "
        f"there; {RESUME}")
    assert client.usage.requests_sent == 3 and client.usage.retries == 1


@pytest.mark.parametrize("value", ["-5", "nan"])
def test_a_retry_after_that_is_no_wait_leaves_the_backoff(mock_server, value):
    """Before: a negative or NaN `retry-after-ms` replaced the backoff by no wait at all."""
    refusal = {"status": 429, "headers": {"retry-after-ms": value, "retry-after": value}}
    server = mock_server(script=[refusal, refusal, "ok"])
    client = LLMClient(fast_config(server, backoff_initial_s=0.2))
    start = time.monotonic()
    answer_one(client)
    assert 0.6 <= time.monotonic() - start < 3.0  # 0.2 + 0.4 s of backoff (and jitter)


@pytest.mark.parametrize("how", ["seconds", "date"])
def test_a_retry_after_of_a_day_waits_backoff_max_s(mock_server, how):
    tomorrow = format_datetime(datetime.now(UTC) + timedelta(days=1), usegmt=True)
    refusal = {"status": 429, "headers": {"retry-after": "86400" if how == "seconds" else tomorrow}}
    server = mock_server(script=[refusal, refusal, "ok"])
    client = LLMClient(fast_config(server, backoff_max_s=0.3))
    start = time.monotonic()
    answer_one(client)
    assert 0.6 <= time.monotonic() - start < 2.0


def answer_one(client: LLMClient) -> None:
    (reply,) = client.run_many([ask("q")], progress=False)
    assert not isinstance(reply, LLMError), reply


def stopped(client: LLMClient, items: int) -> str:
    """The one line of the `EndpointUnusable` (a `UserError`) that stops a run of `items` requests."""
    with pytest.raises(EndpointUnusable) as caught:
        client.run_many([ask(f"q{i}") for i in range(items)], progress=False)
    assert isinstance(caught.value, UserError) and "\n" not in str(caught.value)
    return str(caught.value)


def test_a_server_that_never_answers_stops_the_run_after_the_first_retries(mock_server):
    """Before: every item paid (max_retries + 1) * timeout_s: 14 minutes each with the defaults."""
    server = mock_server(script=lambda index: {"timeout": 30})
    client = LLMClient(fast_config(server, timeout_s=0.3, max_retries=1, max_concurrency=2))
    start = time.monotonic()
    assert stopped(client, items=20) == (
        f"LLM endpoint {server.base_url} never answered: no reply within 0.3 s (2 attempts, no reply or "
        f"status ever came); check the server and llm.base_url, or raise llm.timeout_s if it is only slow; "
        f"{RESUME}")
    assert client.usage.requests_sent <= 4 and time.monotonic() - start < 3.0


def test_a_server_that_answered_once_then_hangs_fails_per_item(mock_server):
    server = mock_server(script=lambda index: "ok" if index == 0 else {"timeout": 30})
    client = LLMClient(fast_config(server, timeout_s=0.3, max_retries=0, max_concurrency=1))
    results = client.run_many([ask(f"q{i}") for i in range(3)], progress=False)
    assert not isinstance(results[0], LLMError)
    assert [r.cause_kind for r in results[1:]] == ["timeout", "timeout"]


@pytest.fixture
def cutting_server():
    """A loopback server that answers every request with the first half of a 200 and hangs up."""
    listening = socket.create_server(("127.0.0.1", 0))
    listening.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                connection, _ = listening.accept()
            except TimeoutError:
                continue
            with connection:
                connection.settimeout(2)
                connection.recv(65536)
                connection.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                                   b"Content-Length: 200\r\n\r\n{\"choices\": [")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield SimpleNamespace(base_url=f"http://127.0.0.1:{listening.getsockname()[1]}/v1")
    stop.set()
    thread.join(5)
    listening.close()


def test_a_server_whose_every_reply_is_cut_stops_the_run_naming_the_cut(cutting_server):
    client = LLMClient(fast_config(cutting_server, max_retries=1))
    assert stopped(client, items=10).startswith(
        f"LLM endpoint {cutting_server.base_url} never answered: peer closed connection without sending "
        "complete message body (received 13 bytes, expected 200) (2 attempts")
    assert client.usage.requests_sent <= 2 * client.config.max_concurrency
