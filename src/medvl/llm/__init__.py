"""OpenAI-compatible LLM access shared by curation, evaluation (the LLM judge) and benchmarks.

- `config.LLMConfig`: endpoint, model, concurrency, rate limits, retries, cache folder, prices.
- `client.LLMClient`: async chat client (bounded, paced, retried, cached, accounted) with
  `complete`, `complete_many`, `run_many` and the dry-run `estimate`; `usage.UsageTotals` and
  `usage.CostEstimate` (what it spent, what a batch would cost); `completion`: how a 200's body is
  read (its fields checked, its usage counted); `failures`: how a failed attempt is read (error
  kinds, retry-after) and when the endpoint is given up (a rejected key, no such model, no quota,
  never reached or never answering).
- `messages`: `ChatRequest`, `ChatReply`, `LLMError`, `EndpointUnusable` (`EndpointUnreachable`,
  `KeyRejected`), token estimates, `image_part`.
- `cache.ResponseCache`: the persistent sqlite reply cache; `limits.RateLimiter`: the pacer.
- `mock_server`: a scriptable OpenAI-compatible server for tests and `bench/`.

Import from the sub-modules (`from medvl.llm.client import LLMClient`); this package imports
nothing itself, so `medvl.llm.config` stays cheap to load for config schemas.
"""
