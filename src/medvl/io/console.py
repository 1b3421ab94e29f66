"""What medvl's processes print besides their own output: log lines as `LEVEL name: message` on
stderr (level from `MEDVL_LOG`, default INFO), and libraries' internals kept off the console.

`setup_console` is called by the `medvl` command at start-up and by the worker processes medvl
spawns (curation's pool), so a worker's lines look like the main process's. Libraries' progress bars
and INFO lines go (medvl's own bars and lines, and the libraries' warnings, stay): at INFO the HTTP
clients under openai (httpx; httpx2 for openai 3) log every request, sentence-transformers each model
it loads, and faiss (curation's dedup) each build it fails to load before the one it loads;
transformers draws a bar for loading and for saving weights (off through huggingface_hub's switch,
which both read when they load; `HF_HUB_DISABLE_PROGRESS_BARS=0` brings the bars back). Nothing is
imported here: the settings must be in place before the libraries load.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

__all__ = ["QUIET_ENVIRONMENT", "QUIET_LOGGERS", "setup_console"]

QUIET_LOGGERS = ("httpx", "httpx2", "httpcore", "httpcore2", "sentence_transformers", "faiss")
QUIET_ENVIRONMENT = {"HF_HUB_DISABLE_PROGRESS_BARS": "1", "TOKENIZERS_PARALLELISM": "false"}


def setup_console() -> None:
    """Log medvl's lines to stderr and keep libraries' internals off it (see the module notes); a
    variable the user has set is kept, and a process whose logging is set up already keeps its own."""
    logging.basicConfig(level=os.environ.get("MEDVL_LOG", "INFO"), format="%(levelname)s %(name)s: %(message)s",
                        handlers=[_StderrNow()])
    for chatty in QUIET_LOGGERS:
        logging.getLogger(chatty).setLevel(logging.WARNING)
    for name, value in QUIET_ENVIRONMENT.items():
        os.environ.setdefault(name, value)


class _StderrNow(logging.StreamHandler):
    """A handler writing to `sys.stderr` as it is when a record is emitted, not as it was when the
    handler was made: `main` may run again in one process (tests, notebooks) under a replaced
    stderr, and a handler bound to the first one would write to a closed stream."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property  # type: ignore[override]
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, _: Any) -> None:
        pass
