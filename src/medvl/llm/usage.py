"""What an `LLMClient` has spent (`UsageTotals`) and what a batch would cost unsent (`CostEstimate`).

Both are plain counters: the client fills them in (`LLMClient.usage`, `LLMClient.estimate`) and
prices tokens with its config's `price_input_per_mtok` / `price_output_per_mtok`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

__all__ = ["CostEstimate", "UsageTotals"]


@dataclass
class UsageTotals:
    """What a client has spent: HTTP attempts (retries included), cache hits, failures, tokens, USD.

    `cache_hits` counts replies read from the cache or shared with an identical request in flight;
    tokens and cost count what the provider bills as far as its bodies say: every 200 received, a
    garbled or content-filtered one too, never a cache hit (`medvl.llm.client`, "Accounting").
    """

    requests_sent: int = 0
    replies: int = 0
    cache_hits: int = 0
    retries: int = 0
    failures: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        return (
            f"LLM: {self.replies} replies ({self.requests_sent} requests sent, {self.retries} retries), "
            f"{self.cache_hits} cache hits, {self.failures} failures; tokens {self.prompt_tokens} prompt + "
            f"{self.completion_tokens} completion; cost ${self.cost_usd:.4f}"
        )


@dataclass
class CostEstimate:
    """A dry run: what `complete_many(requests)` would send and cost at most.

    `n_to_send` counts distinct uncached requests (identical ones are sent once); `prompt_tokens` is
    the chars/4 + per-image approximation over those; `max_completion_tokens` their `max_tokens`
    sum; `cost_usd` prices both, an upper bound up to the prompt approximation.
    """

    n_requests: int
    n_cached: int
    n_to_send: int
    prompt_tokens: int
    max_completion_tokens: int
    cost_usd: float

    def summary(self) -> str:
        return (
            f"{self.n_requests} requests: {self.n_cached} cached, {self.n_to_send} to send; "
            f"~{self.prompt_tokens} prompt tokens + at most {self.max_completion_tokens} completion tokens; "
            f"at most ~${self.cost_usd:.4f}"
        )
