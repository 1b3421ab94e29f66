"""Running the API: `serve(config)` for `medvl serve`, `ServerThread` for tests and benchmarks.

`check_exposure` runs before the model loads and refuses a server others could misuse: an API
key shorter than `MIN_API_KEY_CHARS`; a non-loopback host without a key (a typo such as
`--host 0.0.0.0` must not put an unauthenticated model on the network); every interface
(`0.0.0.0`, `::`) without the host names clients will use (`allowed_hosts`).

`serve` also checks, before the model loads, that it can listen on the address and port
(`check_listen_address`: a port in use, an address not this machine's).

`build_server` runs uvicorn with medvl's connection guards (`connections`: caps per client and in
all, a header deadline), uvicorn's keep-alive timeout and h11's header size bound, and no
`limit_concurrency` (it answers everyone a plain 503 once idle sockets fill it). Its shutdown
drains first (`app.drain`): on SIGTERM waiting requests get a JSON 503, answers being generated
get `limits.drain_timeout_s` to finish, and streams end with a final event and `[DONE]`.
"""

from __future__ import annotations

import logging
import threading
from socket import socket
from types import TracebackType

import uvicorn

from medvl.config import ConfigError
from medvl.engine import Engine, make_engine
from medvl.io.server_thread import start_in_thread
from medvl.model.generate import GenerationSettings
from medvl.serve.app import create_app, drain, resolve_api_key
from medvl.serve.config import (MIN_API_KEY_CHARS, ServeConfig, UnsafeExposureError, check_listen_address, is_loopback,
                                url_host)
from medvl.serve.connections import guarded_protocol, raise_open_file_limit

__all__ = ["UnsafeExposureError", "check_exposure", "build_server", "serve", "ServerThread"]

log = logging.getLogger(__name__)
HEADER_BYTES = 16 * 1024  # h11's bound on a request's line and headers
FILES_BESIDES_CONNECTIONS = 256  # model files, threads' pipes, the listening socket, logs...


def check_exposure(config: ServeConfig) -> None:
    key = resolve_api_key(config)
    if key is not None and len(key) < MIN_API_KEY_CHARS:
        raise UnsafeExposureError(
            f"the API key in {config.api_key_env} has {len(key)} characters; use at least {MIN_API_KEY_CHARS} "
            "(for example `openssl rand -hex 16`)")
    if is_loopback(config.host):
        return
    if key is None:
        where = f"environment variable {config.api_key_env}" if config.api_key_env else "api_key_env (unset)"
        raise UnsafeExposureError(
            f"refusing to listen on {config.host!r} without an API key: anyone who can reach this address "
            f"could use the model. Set a key in {where}, or listen on 127.0.0.1.")
    if config.host_names() == []:
        raise UnsafeExposureError(
            f"listening on {config.host!r} (every interface): name the host names clients will use "
            "(--allow-host NAME, repeatable, or allowed_hosts in the config; '*' accepts any)")


class _DrainingServer(uvicorn.Server):
    """uvicorn's server whose shutdown drains the app before closing connections."""

    drain_timeout_s = 10.0

    async def shutdown(self, sockets: list[socket] | None = None) -> None:
        app = self.config.app
        if getattr(app.state, "batcher", None) is not None:
            await drain(app, self.drain_timeout_s)
        await super().shutdown(sockets)


def build_server(engine: Engine, config: ServeConfig, log_level: str = "info") -> uvicorn.Server:
    check_exposure(config)
    limits = config.limits
    server = _DrainingServer(uvicorn.Config(
        create_app(engine, config), host=config.host, port=config.port, log_level=log_level,
        access_log=log_level == "debug", http=guarded_protocol(limits), limit_concurrency=None,
        timeout_keep_alive=limits.keep_alive_s, h11_max_incomplete_event_size=HEADER_BYTES,
        timeout_graceful_shutdown=5,
    ))
    server.drain_timeout_s = limits.drain_timeout_s
    return server


def serve(config: ServeConfig) -> None:
    """Load the model `config.engine.model` names into its engine and serve until interrupted
    (SIGTERM drains)."""
    check_exposure(config)
    if config.engine.model is None:
        raise ConfigError("ServeConfig.engine.model (the model folder) is required")
    check_listen_address(config.host, config.port)
    limits = config.limits
    open_files = raise_open_file_limit(limits.max_connections + FILES_BESIDES_CONNECTIONS)
    if open_files < limits.max_connections + FILES_BESIDES_CONNECTIONS:
        fitting = max(open_files - FILES_BESIDES_CONNECTIONS, 1)
        log.warning("the open-file limit is %d: serving at most %d connections, not %d (raise `ulimit -n`)",
                    open_files, fitting, limits.max_connections)
        limits.max_connections = fitting
    engine = make_engine(config.engine, GenerationSettings())
    key = "on" if resolve_api_key(config) else "off"
    log.info("serving %s with the %s engine on http://%s:%d (API key %s, batch ≤ %d, wait %.0f ms)",
             config.engine.model, config.engine.kind, url_host(config.host), config.port, key, config.max_batch_size,
             config.batch_wait_ms)
    build_server(engine, config).run()


class ServerThread:
    """`with ServerThread(engine, config) as url:` serves in a background thread (port 0 = any free)."""

    def __init__(self, engine: Engine, config: ServeConfig, log_level: str = "warning"):
        self.server = build_server(engine, config, log_level)
        self.thread: threading.Thread | None = None
        self.url = ""

    @property
    def app(self):  # the FastAPI app (its state holds the batcher once started)
        return self.server.config.app

    def __enter__(self) -> str:
        self.thread = start_in_thread(self.server, "medvl-server")
        host, port = self.server.servers[0].sockets[0].getsockname()[:2]
        self.url = f"http://{host}:{port}"
        return self.url

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.server.should_exit = True
        if self.thread is not None:
            self.thread.join(30)
