"""`RateLimiter`: the pacer of requests-per-minute and tokens-per-minute quotas, on aiolimiter.

aiolimiter's leaky bucket (`AsyncLimiter`) does the timing. medvl sizes the bucket to one second's
worth (at least one request's worth), so the quota is spread evenly over the minute rather than
spent in a burst at its start: providers enforce their per-minute limits at sub-minute granularity,
and an even pace is what avoids 429s. Two things are added around it:
- waiters are served first come, first served (aiolimiter alone lets smaller amounts overtake,
  which could hold a long prompt back indefinitely);
- an amount larger than the bucket is not refused: it is taken in bucket-sized parts, each waiting
  its turn, so the average rate still holds.
"""

from __future__ import annotations

import asyncio

from aiolimiter import AsyncLimiter

__all__ = ["RateLimiter"]


class RateLimiter:
    """Pace `acquire(amount)` calls to `per_minute` units per minute (within one event loop)."""

    def __init__(self, per_minute: float):
        if per_minute <= 0:
            raise ValueError(f"per_minute must be positive, got {per_minute}")
        rate = per_minute / 60.0
        capacity = max(rate, 1.0)
        self._bucket = AsyncLimiter(capacity, time_period=capacity / rate)
        self._turn = asyncio.Lock()

    async def acquire(self, amount: float = 1.0) -> None:
        """Wait until `amount` units have been let through the bucket, in arrival order."""
        async with self._turn:
            while amount > 0:
                part = min(amount, self._bucket.max_rate)
                await self._bucket.acquire(part)
                amount -= part
