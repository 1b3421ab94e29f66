"""Connection guards under the HTTP handlers: caps on open connections, and a header deadline.

uvicorn's own settings cover part of this: `timeout_keep_alive` closes a connection left idle
after an answer, and h11 bounds the size of a request's headers. Two holes remain, which
`guarded_protocol` closes in uvicorn's h11 protocol:

- A connection that never sends its request line and headers, or trickles them, is never timed
  out. Here it must deliver them within `limits.header_timeout_s` of opening, or of the end of
  its previous answer, or it is closed.
- uvicorn's `limit_concurrency` answers every request with a plain-text 503 once idle sockets
  fill it, `/health` included. Here a new connection beyond `limits.max_connections` in all, or
  beyond `limits.max_connections_per_client` from its address, closes the oldest *idle*
  connection of that pool (one waiting for a request; those that never sent one go first), and
  is closed itself only when none is idle. A connection with a request in progress is never
  closed to make room.

Each connection is a file descriptor: `raise_open_file_limit` lifts the process's soft limit so
that the caps can be reached at all.
"""

from __future__ import annotations

import asyncio
import logging
import resource
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from medvl.serve.config import Limits

__all__ = ["ConnectionTable", "guarded_protocol", "raise_open_file_limit"]

log = logging.getLogger(__name__)


class ConnectionTable:
    """The open connections, oldest first, in all and by client address."""

    def __init__(self, max_total: int, max_per_client: int):
        self.max_total, self.max_per_client = max_total, max_per_client
        self.open: dict[Any, str] = {}  # connection -> client address, in arrival order
        self.by_client: dict[str, dict[Any, None]] = {}

    def admit(self, connection: Any, client: str) -> bool:
        """Make room for a new connection (closing idle ones); False when it must be refused."""
        peers = self.by_client.get(client, {})
        if len(peers) >= self.max_per_client and not self._evict(peers):
            return False
        if len(self.open) >= self.max_total and not self._evict(self.open):
            return False
        self.open[connection] = client
        self.by_client.setdefault(client, {})[connection] = None
        return True

    def forget(self, connection: Any) -> None:
        client = self.open.pop(connection, None)
        peers = self.by_client.get(client) if client is not None else None
        if peers is not None:
            peers.pop(connection, None)
            if not peers:
                del self.by_client[client]

    def _evict(self, pool: dict[Any, Any]) -> bool:
        idle = [connection for connection in pool if connection.is_idle()]
        if not idle:
            return False
        victim = min(idle, key=lambda connection: connection.served > 0)  # never served first, then oldest
        log.debug("closing an idle connection from %s to make room", self.open.get(victim))
        victim.close_idle()
        self.forget(victim)
        return True


def guarded_protocol(limits: Limits) -> type[H11Protocol]:
    """uvicorn's h11 protocol with the header deadline and the connection caps (one table per server)."""
    table = ConnectionTable(limits.max_connections, limits.max_connections_per_client)

    class GuardedH11Protocol(H11Protocol):
        served = 0  # answers completed on this connection
        header_clock: asyncio.TimerHandle | None = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            if table.admit(self, self.client[0] if self.client else ""):
                self._await_headers()
            else:
                log.warning("refusing a connection: %d open, none idle", len(table.open))
                transport.close()

        def connection_lost(self, exc: Exception | None) -> None:
            table.forget(self)
            self._stop_header_clock()
            super().connection_lost(exc)

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            if self.conn.their_state is not h11.IDLE:  # a request's line and headers are complete
                self._stop_header_clock()

        def on_response_complete(self) -> None:
            self.served += 1
            super().on_response_complete()
            if not self.transport.is_closing() and self.conn.their_state is h11.IDLE:
                self._await_headers()

        def is_idle(self) -> bool:
            """Waiting for a request: nothing of one read yet, no answer in progress."""
            in_progress = self.cycle is not None and not self.cycle.response_complete
            return self.conn.their_state is h11.IDLE and not in_progress

        def close_idle(self) -> None:
            self._stop_header_clock()
            if not self.transport.is_closing():
                self.transport.close()

        def _await_headers(self) -> None:
            self._stop_header_clock()
            self.header_clock = self.loop.call_later(limits.header_timeout_s, self.close_idle)

        def _stop_header_clock(self) -> None:
            if self.header_clock is not None:
                self.header_clock.cancel()
                self.header_clock = None

    return GuardedH11Protocol


def raise_open_file_limit(needed: int) -> int:
    """Lift the soft limit on open files towards `needed` (up to the hard limit); the limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        soft = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    return soft
