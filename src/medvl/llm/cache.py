"""`ResponseCache`: a persistent, process- and thread-safe store of chat replies keyed by request.

One sqlite3 database (`replies.sqlite3` in the cache folder) in WAL mode, so several worker
processes read and write it at once (writers wait up to `busy_timeout_s` for the lock; so does the
switch to WAL, which SQLite refuses at once, without waiting, while another process opening the
same new database holds its lock: the tasks of `engine.workers > 1` start together). Each reply
is committed the moment it arrives: a run killed at any point (SIGKILL included) keeps every reply
it received, and the re-run reads them instead of paying again. `synchronous=NORMAL` makes commits
survive a killed process; only a power loss can drop the last few.

Schema (table `replies`, one row per request key):
`key` TEXT PRIMARY KEY (sha256 of the full request body), `model`, `text`, `finish_reason`,
`prompt_tokens`, `completion_tokens`, `created` (unix time). Only successful replies are stored;
errors never are, so a re-run retries them. Requests with temperature > 0 are cached too: the cache
makes re-runs deterministic (delete the folder, or change a parameter such as `seed`, to resample).

The connection is opened lazily per process (a forked or unpickled cache reopens it).
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from pathlib import Path

from medvl.llm.messages import ChatReply, Usage

__all__ = ["ResponseCache"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS replies (
    key TEXT PRIMARY KEY,
    model TEXT NOT NULL,
    text TEXT NOT NULL,
    finish_reason TEXT NOT NULL,
    prompt_tokens INTEGER NOT NULL,
    completion_tokens INTEGER NOT NULL,
    created REAL NOT NULL
)
"""


class ResponseCache:
    """Replies by request key, in `<folder>/replies.sqlite3`."""

    FILENAME = "replies.sqlite3"

    def __init__(self, folder: str | Path, *, busy_timeout_s: float = 60.0):
        self.folder = Path(folder)
        self.path = self.folder / self.FILENAME
        self.busy_timeout_s = busy_timeout_s
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        self._pid = -1

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None or self._pid != os.getpid():
            self.folder.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(
                self.path, timeout=self.busy_timeout_s, check_same_thread=False, isolation_level=None
            )
            _switch_to_wal(conn, self.busy_timeout_s)
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute(_SCHEMA)
            self._conn, self._pid = conn, os.getpid()
        return self._conn

    def get(self, key: str) -> ChatReply | None:
        """The stored reply for `key` (marked `cached=True`), or None."""
        with self._lock:
            row = self._connection().execute(
                "SELECT model, text, finish_reason, prompt_tokens, completion_tokens FROM replies WHERE key = ?",
                (key,),
            ).fetchone()
        if row is None:
            return None
        model, text, finish_reason, prompt_tokens, completion_tokens = row
        return ChatReply(text, finish_reason, Usage(prompt_tokens, completion_tokens), True, key, model)

    def put(self, reply: ChatReply) -> None:
        """Store (and commit) a reply; an existing entry for the same key is kept."""
        with self._lock:
            self._connection().execute(
                "INSERT OR IGNORE INTO replies VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    reply.key,
                    reply.model,
                    reply.text,
                    reply.finish_reason,
                    reply.usage.prompt_tokens,
                    reply.usage.completion_tokens,
                    time.time(),
                ),
            )

    def contains(self, keys: list[str]) -> set[str]:
        """The subset of `keys` that have a stored reply."""
        found: set[str] = set()
        with self._lock:
            conn = self._connection()
            for start in range(0, len(keys), 500):
                chunk = keys[start : start + 500]
                marks = ",".join("?" * len(chunk))
                rows = conn.execute(f"SELECT key FROM replies WHERE key IN ({marks})", chunk)
                found.update(key for (key,) in rows)
        return found

    def __len__(self) -> int:
        with self._lock:
            return self._connection().execute("SELECT COUNT(*) FROM replies").fetchone()[0]

    def close(self) -> None:
        with self._lock:
            if self._conn is not None and self._pid == os.getpid():
                self._conn.close()
            self._conn = None

    def __getstate__(self) -> dict:
        return {"folder": self.folder, "busy_timeout_s": self.busy_timeout_s}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["folder"], busy_timeout_s=state["busy_timeout_s"])


def _switch_to_wal(conn: sqlite3.Connection, timeout_s: float) -> None:
    """`PRAGMA journal_mode=WAL`, retried for up to `timeout_s`: SQLite answers "database is locked"
    at once, not after the busy timeout, when another connection holds the lock the switch needs."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as error:
            if "locked" not in str(error) or time.monotonic() > deadline:
                raise
            time.sleep(0.02)
