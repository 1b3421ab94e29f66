"""`LLMClient`: the async OpenAI-compatible chat client shared by curation, evaluation and benchmarks.

Per request (`complete`): the request is resolved (model and every effective parameter filled in,
so it is exactly the JSON body sent) and keyed; a cached reply is returned at once; an identical
request already in flight is awaited instead of sent again; otherwise it is sent through the
concurrency bound (`max_concurrency`) and the rate limiters, retried, cached the moment it arrives,
and accounted (`usage`).

Retry policy (tenacity): 429, 5xx, timeouts and connection errors are retried up to `max_retries`
times with exponential backoff and jitter (`backoff_initial_s * 2**n + U(0, backoff_initial_s)`,
at most `backoff_max_s`); a `retry-after-ms` / `Retry-After` header on the error replaces the
backoff (capped at `backoff_max_s`). 400/422 are not retried (401/403/404: `medvl.llm.failures`).
A 200 whose body is not a usable chat completion (not JSON, no choices, null content: how a body
is read is `medvl.llm.completion`) is re-sent `bad_response_retries` times (default once: a garbled
body is usually a proxy hiccup, but paying repeatedly for a server that always garbles is worse),
then fails with kind "bad_response". finish_reason "content_filter" fails at once.

Accounting (`usage`): `requests_sent` counts HTTP attempts, `replies` the replies received (each
once, however many attempts it took); tokens and cost count every 200 body's stated usage, the
bodies that failed (garbled, content-filtered) included, as the provider bills those too; a reply
without readable usage is estimated. Cache hits and shared replies cost nothing.

Errors are never cached. Each attempt takes one concurrency slot; backoff sleeps hold none (but in
`complete_many` a worker waiting out a backoff does not start another request meanwhile).

Some failures stop the run instead of failing their request (`EndpointUnusable`: a rejected API
key, a model not found, an account out of quota, an endpoint never reached or never answering):
`medvl.llm.failures`, which also maps HTTP statuses to error kinds.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from typing import Any

import openai
from openai import AsyncOpenAI
from tenacity import AsyncRetrying, RetryCallState, stop_after_attempt, wait_exponential_jitter
from tqdm.auto import tqdm

from medvl.llm.cache import ResponseCache
from medvl.llm.completion import billed_usage, read_completion
from medvl.llm.config import LLMConfig
from medvl.llm.failures import NO_KEY, EndpointWatch
from medvl.llm.limits import RateLimiter
from medvl.llm.messages import (
    ChatReply,
    ChatRequest,
    EndpointUnreachable,
    EndpointUnusable,
    KeyRejected,
    LLMError,
    Usage,
    estimate_prompt_tokens,
    image_part,
)
from medvl.llm.usage import CostEstimate, UsageTotals

__all__ = [
    "ChatReply",
    "ChatRequest",
    "CostEstimate",
    "EndpointUnreachable",
    "EndpointUnusable",
    "KeyRejected",
    "LLMClient",
    "LLMConfig",
    "LLMError",
    "ResponseCache",
    "Usage",
    "UsageTotals",
    "image_part",
]

log = logging.getLogger("medvl.llm")

Result = ChatReply | LLMError


@dataclass
class _Runtime:
    """The event-loop-bound parts of a client (rebuilt when it is used from another loop)."""

    loop: asyncio.AbstractEventLoop
    api: AsyncOpenAI
    slots: asyncio.Semaphore
    request_limiter: RateLimiter | None
    token_limiter: RateLimiter | None
    inflight: dict[str, asyncio.Future[ChatReply]]


class LLMClient:
    """Chat completions against `config.base_url`, cached, bounded, paced, retried and accounted.

    The HTTP client, concurrency slots and limiters belong to the event loop that uses them and are
    rebuilt when another loop (e.g. the next `run_many`) takes over: use a client from one loop at a
    time. `run_many` runs its own loop, so call `complete_many` from async code instead.
    """

    def __init__(self, config: LLMConfig, cache: ResponseCache | None = None):
        self.config = config
        self.cache = cache if cache is not None else (ResponseCache(config.cache_dir) if config.cache_dir else None)
        self.usage = UsageTotals()
        self._runtime: _Runtime | None = None
        self._endpoint = EndpointWatch(config)  # whether the endpoint is given up (`medvl.llm.failures`)

    # ----------------------------------------------------------------------------- requests
    def resolve(self, request: ChatRequest) -> ChatRequest:
        """The request with the model and every effective parameter filled in; `.key` is its cache key."""
        config = self.config
        params = {
            "model": config.model,
            "temperature": config.temperature,
            config.max_tokens_field: config.max_tokens,
            **config.extra_body,
            **request.params,
        }
        return ChatRequest(request.messages, params)

    def cost(self, prompt_tokens: int, completion_tokens: int) -> float:
        config = self.config
        return (prompt_tokens * config.price_input_per_mtok + completion_tokens * config.price_output_per_mtok) / 1e6

    def estimate(self, requests: Iterable[ChatRequest]) -> CostEstimate:
        """Count what would be sent and its cost, sending nothing."""
        resolved = [self.resolve(r) for r in requests]
        keys = [r.key for r in resolved]
        cached = self.cache.contains(sorted(set(keys))) if self.cache is not None else set()
        to_send = {r.key: r for r in resolved if r.key not in cached}
        image_tokens = self.config.image_token_estimate
        prompt = sum(estimate_prompt_tokens(r.messages, image_tokens) for r in to_send.values())
        completion = sum(self._max_tokens(r) for r in to_send.values())
        return CostEstimate(
            n_requests=len(resolved),
            n_cached=sum(key in cached for key in keys),
            n_to_send=len(to_send),
            prompt_tokens=prompt,
            max_completion_tokens=completion,
            cost_usd=self.cost(prompt, completion),
        )

    def _max_tokens(self, resolved: ChatRequest) -> int:
        return int(resolved.params.get(self.config.max_tokens_field, self.config.max_tokens))

    # ------------------------------------------------------------------------------ sending
    async def complete(self, request: ChatRequest) -> ChatReply:
        """One reply (from the cache when present); raises `LLMError`, or `EndpointUnusable`."""
        resolved = self.resolve(request)
        key = resolved.key
        hit = self.cache.get(key) if self.cache is not None else None
        if hit is not None:
            self.usage.cache_hits += 1
            return hit
        runtime = self._loop_runtime()
        shared = runtime.inflight.get(key)
        if shared is not None:  # an identical request is on its way: wait for its reply
            try:
                reply = await asyncio.shield(shared)
            except (LLMError, EndpointUnusable):
                self.usage.failures += 1
                raise
            self.usage.cache_hits += 1
            return replace(reply, cached=True)
        # Sent from this task (no extra task hop), so a worker's next request goes out on the
        # connection its last reply just freed.
        outcome = runtime.inflight[key] = runtime.loop.create_future()
        try:
            reply = await self._fetch(resolved, runtime)
        except (LLMError, EndpointUnusable) as error:
            self.usage.failures += 1
            outcome.set_exception(error)
            outcome.exception()  # retrieved: no "never retrieved" warning when nobody shared it
            raise
        except BaseException:
            outcome.cancel()
            raise
        else:
            outcome.set_result(reply)
        finally:
            del runtime.inflight[key]
        return reply

    async def complete_many(
        self,
        requests: Iterable[ChatRequest],
        *,
        progress: bool = True,
        on_result: Callable[[int, Result], None] | None = None,
    ) -> list[Result]:
        """Replies in request order, an `LLMError` in place of each failed one; raises
        `EndpointUnusable` (the requests in flight are cancelled).

        `on_result(index, result)` is called as each finishes, so callers can persist at once.
        `max_concurrency` workers pull requests from `requests` (any iterable: it streams) and
        each sends its next request as soon as its last one is answered, on the connection that
        answer freed.
        """
        total = len(requests) if hasattr(requests, "__len__") else None
        source = enumerate(requests)
        results: list[Result | None] = []
        bar = tqdm(total=total, desc=f"LLM {self.config.model}", unit="req", disable=not progress)

        async def worker() -> None:
            for index, request in source:
                results.append(None)
                try:
                    result: Result = await self.complete(request)
                except LLMError as error:
                    result = error
                results[index] = result
                if on_result is not None:
                    on_result(index, result)
                if progress:
                    bar.update(1)
                    bar.set_postfix(cached=self.usage.cache_hits, failed=self.usage.failures, refresh=False)

        workers = [asyncio.ensure_future(worker()) for _ in range(self.config.max_concurrency)]
        try:
            await asyncio.gather(*workers)
        finally:
            for task in workers:
                task.cancel()
            bar.close()
        log.info(self.usage.summary())
        return results  # type: ignore[return-value]

    def run_many(self, requests: Iterable[ChatRequest], **kwargs: Any) -> list[Result]:
        """`complete_many` from synchronous code (runs its own event loop)."""

        async def run() -> list[Result]:
            try:
                return await self.complete_many(requests, **kwargs)
            finally:
                await self.aclose()

        return asyncio.run(run())

    async def aclose(self) -> None:
        """Close the HTTP connections of the current event loop's runtime."""
        if self._runtime is not None and self._runtime.loop is asyncio.get_running_loop():
            await self._runtime.api.close()
            self._runtime = None

    # ------------------------------------------------------------------------------ internals
    def _loop_runtime(self) -> _Runtime:
        loop = asyncio.get_running_loop()
        if self._runtime is None or self._runtime.loop is not loop:
            config = self.config
            api = AsyncOpenAI(
                base_url=config.base_url,
                api_key=os.environ.get(config.api_key_env) or NO_KEY,
                max_retries=0,
                # the whole attempt is bounded by `timeout_s` in `_attempt`
                timeout=openai.Timeout(config.timeout_s, connect=config.connect_timeout_s),
            )
            self._runtime = _Runtime(
                loop=loop,
                api=api,
                slots=asyncio.Semaphore(config.max_concurrency),
                request_limiter=RateLimiter(config.requests_per_minute) if config.requests_per_minute else None,
                token_limiter=RateLimiter(config.tokens_per_minute) if config.tokens_per_minute else None,
                inflight={},
            )
        return self._runtime

    async def _fetch(self, request: ChatRequest, runtime: _Runtime) -> ChatReply:
        """Send with retries; cache and account the reply."""
        config = self.config
        bad_responses = 0

        def should_retry(state: RetryCallState) -> bool:
            nonlocal bad_responses
            error = state.outcome.exception() if state.outcome else None
            self._endpoint.attempt_ended(error)
            if not isinstance(error, LLMError):
                return False
            if error.kind == "bad_response":
                bad_responses += 1
                return bad_responses <= config.bad_response_retries
            return error.retryable

        backoff = wait_exponential_jitter(
            initial=config.backoff_initial_s, max=config.backoff_max_s, jitter=config.backoff_initial_s
        )

        def wait(state: RetryCallState) -> float:
            error = state.outcome.exception() if state.outcome else None
            if isinstance(error, LLMError) and error.retry_after is not None:
                return min(error.retry_after, config.backoff_max_s)
            return backoff(state)

        def before_sleep(state: RetryCallState) -> None:
            self.usage.retries += 1
            error = state.outcome.exception() if state.outcome else None
            level = logging.DEBUG if getattr(error, "kind", "") == "rate_limited" else logging.INFO
            log.log(
                level,
                "LLM request %s: %s; retry %d/%d in %.2fs",
                request.key[:12],
                error,
                state.attempt_number,
                config.max_retries,
                state.upcoming_sleep,
            )

        retrying = AsyncRetrying(
            retry=should_retry,
            stop=stop_after_attempt(config.max_retries + 1),
            wait=wait,
            before_sleep=before_sleep,
            reraise=True,
        )
        try:
            reply = await retrying(self._attempt, request, runtime)
        except LLMError as error:
            unreachable = self._endpoint.unreachable(error)
            if unreachable is not None:  # retries spent on connecting or waiting, and nothing ever answered
                raise unreachable from error
            if error.retryable:
                raise LLMError(
                    "retries_exhausted",
                    f"gave up after {config.max_retries + 1} attempts; last: {error}",
                    status=error.status,
                    key=request.key,
                    cause_kind=error.kind,
                ) from error
            raise
        if self.cache is not None:
            self.cache.put(reply)
        self.usage.replies += 1
        return reply

    async def _attempt(self, request: ChatRequest, runtime: _Runtime) -> ChatReply:
        """One HTTP attempt, mapped to a reply or an `LLMError`."""
        key = request.key
        async with runtime.slots:
            self._endpoint.raise_if_given_up()
            if runtime.request_limiter is not None:
                await runtime.request_limiter.acquire(1)
            if runtime.token_limiter is not None:
                prompt = estimate_prompt_tokens(request.messages, self.config.image_token_estimate)
                await runtime.token_limiter.acquire(prompt + self._max_tokens(request))
            self.usage.requests_sent += 1
            try:
                async with asyncio.timeout(self.config.timeout_s):
                    completion = await runtime.api.post("/chat/completions", cast_to=object, body=request.body)
            except openai.APIStatusError as exc:  # no traceback: the reply may echo the key
                raise self._endpoint.status_failure(exc, runtime.api.api_key, key) from None
            except (openai.APITimeoutError, TimeoutError) as exc:
                raise LLMError("timeout", f"no reply within {self.config.timeout_s:g} s", key=key) from exc
            except openai.APIConnectionError as exc:  # the transport's words say what happened
                raise LLMError("connection", str(exc.__cause__ or exc), key=key) from exc
            except (ValueError, TypeError, openai.APIResponseValidationError) as exc:
                raise LLMError("bad_response", f"reply body is not a chat completion: {exc}", key=key) from exc
        self._endpoint.replied()
        try:
            reply = read_completion(completion, request, self.config.image_token_estimate)
        except LLMError:
            self._account(billed_usage(completion))
            raise
        self._account(reply.usage)
        return reply

    def _account(self, usage: Usage) -> None:
        """Add the tokens of a 200 body, and their cost, to `usage`."""
        self.usage.prompt_tokens += usage.prompt_tokens
        self.usage.completion_tokens += usage.completion_tokens
        self.usage.cost_usd += self.cost(usage.prompt_tokens, usage.completion_tokens)

    def __getstate__(self) -> dict[str, Any]:  # picklable into worker processes; runtime rebuilt there
        return {"config": self.config, "cache": self.cache}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["config"], state["cache"])
