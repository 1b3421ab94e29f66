"""When one request must stop early: `RequestControl`, shared by the event loop and the model thread.

The event loop cancels a request when its client disconnects or the server drains; its deadline
(`limits.request_timeout_s`, counted from arrival) passes on its own. The model thread asks
`should_stop()` before it starts a queued request and after every token of a running one (the
Generator's per-row hook), so a stopped request leaves its batch at the next token and frees its
place in the queue at once. `reason` is the error its client gets, if it is still there.
"""

from __future__ import annotations

import time

from medvl.serve.protocol import APIError

__all__ = ["RequestControl", "client_gone", "shutting_down"]


def client_gone() -> APIError:
    # 499 is nginx's "client closed request": never delivered, but honest in logs
    return APIError(499, "the client closed the connection", "client_closed_request")


def shutting_down() -> APIError:
    return APIError(503, "the server is shutting down; retry shortly", "shutting_down", headers={"Retry-After": "1"})


class RequestControl:
    """Cancellation and deadline of one request."""

    def __init__(self, timeout_s: float):
        self.timeout_s = timeout_s
        self.deadline = time.monotonic() + timeout_s
        self.reason: APIError | None = None

    def cancel(self, reason: APIError) -> None:
        """Stop the request; the first reason given is kept."""
        if self.reason is None:
            self.reason = reason

    def remaining(self) -> float:
        return max(self.deadline - time.monotonic(), 0.0)

    def expire(self) -> None:
        """Stop the request for running out of time."""
        self.cancel(APIError(504, f"the request was not answered within {self.timeout_s:g} s "
                                  "(limits.request_timeout_s)", "request_timeout"))

    def should_stop(self) -> bool:
        if self.reason is None and time.monotonic() >= self.deadline:
            self.expire()
        return self.reason is not None
