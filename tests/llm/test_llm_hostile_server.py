"""LLMClient against servers that misbehave in ways test_llm_faults does not script: replies whose
fields are not what they claim, statuses that condemn every request, headers and waits that lie."""

from __future__ import annotations

import pytest
from llm_testkit import ask, fast_config

from medvl.llm.client import LLMClient, LLMError
from medvl.llm.messages import estimate_prompt_tokens, estimate_text_tokens

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
