"""Batches: order and errors in place, the concurrency bound, rate limits, usage/cost, the dry run."""

from __future__ import annotations

import asyncio
import time

import pytest
from llm_testkit import ask, fast_config

from medvl.llm.client import LLMClient, LLMError
from medvl.llm.limits import RateLimiter
from medvl.llm.messages import ChatRequest, estimate_prompt_tokens, image_part


def reverse_latency_responder(body: dict) -> dict:
    """Reply "echo <n>" after (20 - n) * 5 ms, so later requests finish first; "bad" ones get a 400."""
    text = body["messages"][-1]["content"]
    if text.startswith("bad"):
        return {"status": 400}
    n = int(text.split()[-1])
    return {"text": f"echo {n}", "latency": (20 - n) * 0.005}


def test_complete_many_preserves_order_and_returns_errors_in_place(mock_server):
    server = mock_server(responder=reverse_latency_responder)
    client = LLMClient(fast_config(server, max_concurrency=20))
    requests = [ask(f"bad {i}" if i % 5 == 3 else f"q {i}") for i in range(20)]
    seen: list[int] = []
    results = client.run_many(requests, progress=False, on_result=lambda i, _: seen.append(i))
    for i, result in enumerate(results):
        if i % 5 == 3:
            assert isinstance(result, LLMError) and result.kind == "http_error" and result.status == 400
            assert result.key == client.resolve(requests[i]).key
        else:
            assert result.text == f"echo {i}"
    assert sorted(seen) == list(range(20)) and seen != list(range(20))  # reported as they finished
    assert client.usage.failures == 4 and client.usage.replies == 16


def test_complete_many_streams_a_generator_through_its_workers(mock_server):
    server = mock_server()
    client = LLMClient(fast_config(server, max_concurrency=2))
    results = client.run_many((ask(f"q {i}") for i in range(150)), progress=True)  # a bar without a total
    assert [r.text.split(": ")[-1] for r in results] == [f"q {i}" for i in range(150)]


def test_an_exception_in_on_result_stops_the_batch(mock_server):
    server = mock_server()
    client = LLMClient(fast_config(server, max_concurrency=1))

    def explode(index, result):
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        client.run_many([ask(f"q {i}") for i in range(10)], progress=False, on_result=explode)
    assert len(server.requests) < 10


@pytest.mark.parametrize("limit", [3, 8])
def test_concurrency_bound_is_respected_and_reached(mock_server, limit):
    server = mock_server(latency_s=0.05)
    client = LLMClient(fast_config(server, max_concurrency=limit))
    client.run_many([ask(f"q {i}") for i in range(4 * limit)], progress=False)
    assert server.max_in_flight == limit


def test_requests_per_minute_paces_requests(mock_server):
    server = mock_server()
    client = LLMClient(fast_config(server, requests_per_minute=1200))  # 20/s, bursts of 20
    start = time.monotonic()
    client.run_many([ask(f"q {i}") for i in range(40)], progress=False)
    elapsed = time.monotonic() - start
    assert 0.95 <= elapsed < 4.0
    arrivals = server.arrival_times
    assert arrivals[19] - arrivals[0] < 0.5  # the first second's quota goes at once
    # the rest at 20 per second: request k (k >= 20) cannot leave before (k - 19) / 20 s; load only delays
    # arrivals, so this bound holds on a busy machine where gaps between arrivals do not
    assert all(arrivals[k] - start >= (k - 19) / 20 - 0.02 for k in range(20, 40))


def test_rate_limiter_paces_and_admits_oversized_requests():
    async def run() -> tuple[float, float]:
        limiter = RateLimiter(per_minute=600)  # 10 per second, bucket of 10
        start = time.monotonic()
        for _ in range(15):
            await limiter.acquire(1)
        paced = time.monotonic() - start
        tokens = RateLimiter(per_minute=60_000)  # 1000 tokens/s, bucket of 1000
        start = time.monotonic()
        await tokens.acquire(1500)  # larger than the bucket: admitted, leaving it 500 in debt
        await tokens.acquire(100)
        return paced, time.monotonic() - start

    paced, oversized = asyncio.run(run())
    assert 0.45 <= paced < 1.5
    assert 0.55 <= oversized < 2.0


def test_tokens_per_minute_counts_prompt_and_max_tokens(mock_server):
    server = mock_server()
    client = LLMClient(fast_config(server, tokens_per_minute=60_000, max_tokens=495))  # 1000 tokens/s
    start = time.monotonic()
    client.run_many([ask(f"q {i}") for i in range(4)], progress=False)  # ~500 tokens each
    assert 0.9 <= time.monotonic() - start < 3.0


def test_usage_and_cost_totals(mock_server):
    usage = {"prompt_tokens": 1000, "completion_tokens": 200, "total_tokens": 1200}
    server = mock_server(script=[{"text": "a", "usage": usage}, {"text": "b", "usage": usage},
                                 {"text": "12345678", "usage": None}])
    config = fast_config(server, price_input_per_mtok=2.5, price_output_per_mtok=10.0, max_concurrency=1)
    client = LLMClient(config)
    replies = client.run_many([ask("a"), ask("b"), ask("c")], progress=False)
    fallback = replies[2].usage  # no usage in the reply: estimated (chars / 4)
    assert fallback.completion_tokens == 2 and fallback.prompt_tokens == estimate_prompt_tokens(
        [{"role": "user", "content": "c"}], 765)
    totals = client.usage.as_dict()
    assert totals["prompt_tokens"] == 2000 + fallback.prompt_tokens
    assert totals["completion_tokens"] == 402
    assert totals["cost_usd"] == pytest.approx((totals["prompt_tokens"] * 2.5 + 402 * 10.0) / 1e6)
    assert totals["replies"] == 3 and totals["requests_sent"] == 3 and totals["failures"] == 0
    assert "3 replies" in client.usage.summary() and "$0.00" in client.usage.summary()


def test_estimate_sends_nothing_and_counts_cached_requests(mock_server, tmp_path, rgb_image):
    server = mock_server()
    config = fast_config(server, cache_dir=str(tmp_path), max_tokens=100, image_token_estimate=85,
                         price_input_per_mtok=1e6, price_output_per_mtok=2e6)  # $1 per prompt token
    client = LLMClient(config)
    with_image = {"role": "user", "content": [image_part(rgb_image), {"type": "text", "text": "x" * 40}]}
    requests = [ask("a" * 400), ask("b" * 8), ask("b" * 8), ask("c"),
                ChatRequest([with_image])]
    client.run_many(requests[3:4], progress=False)
    assert len(server.requests) == 1
    estimate = client.estimate(requests)
    assert len(server.requests) == 1  # the dry run sent nothing
    assert (estimate.n_requests, estimate.n_cached, estimate.n_to_send) == (5, 1, 3)
    assert estimate.prompt_tokens == (4 + 100) + (4 + 2) + (4 + 85 + 10)  # duplicates once; cached none
    assert estimate.max_completion_tokens == 300
    assert estimate.cost_usd == pytest.approx(estimate.prompt_tokens + 2 * 300)
    assert "1 cached, 3 to send" in estimate.summary()


def test_runtime_fields_are_declared_on_the_config():
    from medvl.llm.config import LLMConfig

    assert LLMConfig.runtime_fields() == {
        "api_key_env", "max_concurrency", "requests_per_minute", "tokens_per_minute", "timeout_s", "max_retries",
        "backoff_initial_s", "backoff_max_s", "bad_response_retries", "cache_dir", "price_input_per_mtok",
        "price_output_per_mtok", "image_token_estimate"}
    assert not LLMConfig.runtime_fields() & {"base_url", "model", "temperature", "max_tokens", "extra_body"}


def test_rate_limiter_serves_waiters_in_arrival_order():
    async def run() -> list[str]:
        limiter = RateLimiter(per_minute=600)  # 10 per second, bucket of 10
        await limiter.acquire(10)  # the bucket is empty now
        done: list[str] = []

        async def take(name: str, amount: float) -> None:
            await limiter.acquire(amount)
            done.append(name)

        await asyncio.gather(take("long prompt", 8), take("short", 1), take("short again", 1))
        return done

    assert asyncio.run(run()) == ["long prompt", "short", "short again"]  # the small ones do not overtake
