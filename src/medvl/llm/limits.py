"""`RateLimiter`: an async token bucket for requests-per-minute and tokens-per-minute quotas.

The bucket refills continuously at `per_minute / 60` units per second and holds at most one
second's worth (at least one request's worth), so the quota is spread evenly over the minute rather
than spent in a burst at its start: providers enforce their per-minute limits at sub-minute
granularity, and an even pace is what avoids 429s. Waiters are served first come, first served.
A request larger than the bucket waits for a full bucket and then drives it negative (it is not
refused), so the average rate still holds.
"""

from __future__ import annotations

import asyncio
import time

__all__ = ["RateLimiter"]


class RateLimiter:
    """Pace `acquire(amount)` calls to `per_minute` units per minute (within one event loop)."""

    def __init__(self, per_minute: float):
        if per_minute <= 0:
            raise ValueError(f"per_minute must be positive, got {per_minute}")
        self.rate = per_minute / 60.0
        self.capacity = max(self.rate, 1.0)
        self._level = self.capacity
        self._stamp = time.monotonic()
        self._lock = asyncio.Lock()

    def _refill(self) -> None:
        now = time.monotonic()
        self._level = min(self.capacity, self._level + (now - self._stamp) * self.rate)
        self._stamp = now

    async def acquire(self, amount: float = 1.0) -> None:
        """Wait until `amount` units fit in the bucket, then take them."""
        async with self._lock:
            needed = min(amount, self.capacity)
            self._refill()
            while self._level < needed:
                await asyncio.sleep((needed - self._level) / self.rate)
                self._refill()
            self._level -= amount
