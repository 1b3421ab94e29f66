"""Running the API: `serve(config)` for `medvl serve`, `ServerThread` for tests and benchmarks.

`check_exposure` runs before the model loads: a non-loopback host without an API key is an
error, so a typo such as `--host 0.0.0.0` cannot put an unauthenticated model on the network.
"""

from __future__ import annotations

import logging
import threading
import time
from types import TracebackType

import uvicorn

from medvl.model.generate import Generator
from medvl.serve.app import create_app, resolve_api_key
from medvl.serve.config import ServeConfig, UnsafeExposureError, is_loopback

__all__ = ["UnsafeExposureError", "check_exposure", "build_server", "serve", "ServerThread"]

log = logging.getLogger(__name__)


def check_exposure(config: ServeConfig) -> None:
    if is_loopback(config.host) or resolve_api_key(config) is not None:
        return
    where = f"environment variable {config.api_key_env}" if config.api_key_env else "api_key_env (unset)"
    raise UnsafeExposureError(
        f"refusing to listen on {config.host!r} without an API key: anyone who can reach this address "
        f"could use the model. Set a key in {where}, or listen on 127.0.0.1.")


def build_server(generator: Generator, config: ServeConfig, log_level: str = "info") -> uvicorn.Server:
    check_exposure(config)
    app = create_app(generator, config)
    return uvicorn.Server(uvicorn.Config(
        app, host=config.host, port=config.port, log_level=log_level, access_log=log_level == "debug",
        limit_concurrency=2 * config.limits.max_in_flight + 16, timeout_graceful_shutdown=10,
    ))


def serve(config: ServeConfig) -> None:
    """Load the model named by `config.model_dir` and serve until interrupted."""
    check_exposure(config)
    if config.model_dir is None:
        raise ValueError("ServeConfig.model_dir is required")
    generator = Generator.from_pretrained(config.model_dir, dtype=config.dtype, device=config.device)
    key = "on" if resolve_api_key(config) else "off"
    log.info("serving %s on http://%s:%d (API key %s, batch ≤ %d, wait %.0f ms)", config.model_dir,
             config.host, config.port, key, config.max_batch_size, config.batch_wait_ms)
    build_server(generator, config).run()


class ServerThread:
    """`with ServerThread(generator, config) as url:` serves in a background thread (port 0 = any free)."""

    def __init__(self, generator: Generator, config: ServeConfig, log_level: str = "warning"):
        self.server = build_server(generator, config, log_level)
        self.thread = threading.Thread(target=self.server.run, name="medvl-server", daemon=True)
        self.url = ""

    @property
    def app(self):  # the FastAPI app (its state holds the batcher once started)
        return self.server.config.app

    def __enter__(self) -> str:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the API server did not start")
            time.sleep(0.02)
        host, port = self.server.servers[0].sockets[0].getsockname()[:2]
        self.url = f"http://{host}:{port}"
        return self.url

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.server.should_exit = True
        self.thread.join(30)
