"""`start_in_thread(server, name)`: run a uvicorn server in a daemon thread, returning once it listens.

The API server's `ServerThread` (tests, benches) and the mock OpenAI server both start this way;
a server that dies or is still not listening after `timeout_s` raises `RuntimeError` naming it.
"""

from __future__ import annotations

import threading
import time
from typing import Any

__all__ = ["start_in_thread"]


def start_in_thread(server: Any, name: str, timeout_s: float = 30.0, **run_kwargs: Any) -> threading.Thread:
    """Start `server.run(**run_kwargs)` (a `uvicorn.Server`) in a daemon thread called `name`; wait until
    `server.started`."""
    thread = threading.Thread(target=server.run, kwargs=run_kwargs, name=name, daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout_s
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError(f"{name} did not start")
        time.sleep(0.01)
    return thread
