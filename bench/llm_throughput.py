"""Generation throughput of `LLMClient.complete_many` against the mock OpenAI server.

The server (a separate process, so it does not share the client's interpreter) answers every
request after a latency L; with concurrency C no client can beat C/L requests per second. For each
(C, L) this prints steady-state req/s (connections opened by a warm-up round first) as a fraction
of that bound (aim: >= 0.9) for three clients sending the same kind of requests, in two passes in
mirrored order (SDK, reference, medvl, then medvl, reference, SDK):

- `bare openai SDK`: C coroutines calling `AsyncOpenAI.post` in a loop, with no cache, retries,
  limits or accounting: the ceiling of anything built on the SDK on this machine;
- `reference batches`: LLaVA-Med's pattern, `asyncio.gather` over fixed batches of C requests,
  each batch waiting for its slowest one (here through `LLMClient.complete`);
- `medvl complete_many`.

Each request costs the client about 1-1.5 ms of CPU (mostly the SDK and its HTTP stack) and the
server about 0.6 ms, and a constant latency keeps the C requests in step, so the fraction falls as
C/L grows towards the machine's CPU limit (a few hundred req/s on 2 shared cores); the SDK row
shows how much of that is the machine rather than medvl. Real APIs answer in seconds, where C/L
is tens of req/s.

    python bench/llm_throughput.py [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import time

from interleave import mirrored  # bench/interleave.py
from openai import AsyncOpenAI

from medvl.llm.client import LLMClient
from medvl.llm.config import LLMConfig
from medvl.llm.messages import ChatRequest
from medvl.llm.mock_server import start_mock_server_process

SETTINGS = ((16, 0.05), (64, 0.05), (64, 0.2), (16, 0.25))  # (concurrency C, latency L in seconds)
QUESTION = "Describe the findings of this chest radiograph in two sentences. "


def _requests(n: int, tag: str) -> list[ChatRequest]:
    return [ChatRequest([{"role": "user", "content": f"{QUESTION}[{tag} {i}]"}]) for i in range(n)]


def _client(base_url: str, concurrency: int) -> LLMClient:
    return LLMClient(LLMConfig(model="mock", base_url=base_url, max_concurrency=concurrency, max_retries=0))


async def _bare_sdk(base_url: str, concurrency: int, warm_up: list[ChatRequest], timed: list[ChatRequest]) -> float:
    """C coroutines, each posting its share of the bodies through one bare `AsyncOpenAI`."""
    resolve = _client(base_url, concurrency).resolve
    api = AsyncOpenAI(base_url=base_url, api_key="unused", max_retries=0)

    async def worker(share: list[ChatRequest]) -> None:
        for request in share:
            await api.post("/chat/completions", cast_to=object, body=resolve(request).body)

    async def batch(requests: list[ChatRequest]) -> None:
        await asyncio.gather(*(worker(requests[w::concurrency]) for w in range(concurrency)))

    try:
        return await _timed(batch, warm_up, timed)
    finally:
        await api.close()


async def _reference_batches(
    base_url: str, concurrency: int, warm_up: list[ChatRequest], timed: list[ChatRequest]
) -> float:
    """LLaVA-Med's loop: gather a batch of C, wait for all of it, then start the next batch."""
    client = _client(base_url, concurrency)

    async def batch(requests: list[ChatRequest]) -> None:
        for start in range(0, len(requests), concurrency):
            await asyncio.gather(*(client.complete(r) for r in requests[start : start + concurrency]))

    try:
        return await _timed(batch, warm_up, timed)
    finally:
        await client.aclose()


async def _medvl(base_url: str, concurrency: int, warm_up: list[ChatRequest], timed: list[ChatRequest]) -> float:
    client = _client(base_url, concurrency)

    async def batch(requests: list[ChatRequest]) -> None:
        results = await client.complete_many(requests, progress=False)
        failed = [r for r in results if isinstance(r, Exception)]
        if failed:
            raise RuntimeError(f"{len(failed)} bench requests failed, e.g. {failed[0]}")

    try:
        return await _timed(batch, warm_up, timed)
    finally:
        await client.aclose()


async def _timed(batch, warm_up: list[ChatRequest], timed: list[ChatRequest]) -> float:
    """Seconds for `batch(timed)` after `batch(warm_up)` opened the connections (steady state)."""
    await batch(warm_up)
    start = time.perf_counter()
    await batch(timed)
    return time.perf_counter() - start


METHODS = {"bare openai SDK": _bare_sdk, "reference batches": _reference_batches, "medvl complete_many": _medvl}
BASELINE = "bare openai SDK"


def _pass_timer(base_url: str, concurrency: int, n: int):
    """`seconds(client, pass)`: one timed pass of `n` fresh requests by that client."""

    def seconds(name: str, part: int) -> float:
        tag = f"{name} C={concurrency} pass {part}"
        warm_up, timed = _requests(concurrency, f"{tag} warm-up"), _requests(n, tag)
        return asyncio.run(METHODS[name](base_url, concurrency, warm_up, timed))

    return seconds


def run(quick: bool = False) -> list[dict]:
    logging.getLogger("medvl.llm").setLevel(logging.WARNING)
    rows = []
    for latency in sorted({latency for _, latency in SETTINGS}):
        with start_mock_server_process(latency_s=latency) as server:
            for concurrency, _ in (s for s in SETTINGS if s[1] == latency):
                bound = concurrency / latency
                n = concurrency * (2 if quick else 4)  # rounds of C per pass: the same time per setting
                # SDK, reference, medvl, then medvl, reference, SDK
                totals = mirrored(list(METHODS), (1, 2), _pass_timer(server.base_url, concurrency, n))
                sdk_rate = 2 * n / sum(totals[BASELINE])
                for name, times in totals.items():
                    rate = 2 * n / sum(times)
                    rows.append({"bench": "llm_throughput", "setting": f"C={concurrency} L={latency}",
                                 "client": name, "requests": 2 * n, "req_per_s": rate, "bound_req_per_s": bound,
                                 "fraction_of_bound": rate / bound, "vs_bare_sdk": rate / sdk_rate})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer requests")
    rows = run(quick=parser.parse_args().quick)
    print(f"{'setting':<16}{'client':<22}{'req/s':>8}{'C/L':>7}{'of C/L':>8}{'vs SDK':>8}")
    for row in rows:
        print(f"{row['setting']:<16}{row['client']:<22}{row['req_per_s']:>8.1f}{row['bound_req_per_s']:>7.0f}"
              f"{row['fraction_of_bound']:>8.2f}{row['vs_bare_sdk']:>8.2f}")


if __name__ == "__main__":
    main()
