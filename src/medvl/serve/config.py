"""Typed settings of `medvl serve` (and the image policy that `chat`/`webui` share).

Everything a deployment tunes is here, with safe defaults: loopback only (and only loopback
`Host` names), no remote images, local image files only under an explicit root, bounded
connections, header/body read times, bodies, messages, text, images, tokens, queue and request time.
Load from YAML with overrides: `load_config(ServeConfig, "serve.yaml", ["port=9000"])`.
`check_listen_address` is the check `serve` and `webui` make of the address before the model loads.
"""

from __future__ import annotations

import errno
import ipaddress
import socket
from pydantic import DirectoryPath, Field, field_validator

from medvl.config import Config
from medvl.engine import EngineConfig, check_servable
from medvl.errors import UserError

__all__ = ["ImagePolicy", "Limits", "ListenAddressError", "ServeConfig", "ServedEngineConfig", "UnsafeExposureError",
           "check_listen_address", "is_loopback", "is_wildcard", "url_host", "MIN_API_KEY_CHARS"]

MiB = 1024 * 1024
MIN_API_KEY_CHARS = 16


class ImagePolicy(Config):
    """Where request images may come from, and how big they may be."""

    local_root: DirectoryPath | None = Field(
        None, description="local files (file:// or plain paths) are served only from under this existing "
        "folder; None refuses every local path")
    allowed_hosts: list[str] = Field(
        default_factory=list, description="hosts whose http(s) image URLs may be fetched; empty refuses all "
        "remote URLs. Even listed hosts are refused when they resolve to a loopback, private, link-local "
        "or otherwise non-public address")
    max_images: int = Field(8, ge=0, description="images per request")
    max_image_bytes: int = Field(10 * MiB, ge=1, description="encoded bytes of one image")
    max_pixels: int = Field(16_000_000, ge=1, description="width*height of one image (decompression bombs)")
    max_side: int | None = Field(
        2048, ge=64, description="larger images are shrunk on arrival (aspect kept) so queued requests hold "
        "little memory; the vision tower sees a few hundred pixels a side anyway. None keeps them as sent")
    fetch_timeout_s: float = Field(10.0, gt=0, description="a remote image's whole fetch, from connecting to its "
                                   "last byte (name resolution aside)")


class Limits(Config):
    """Bounds on connections, on what one request may ask for, and on how much waits and for how long."""

    max_connections: int = Field(
        512, ge=1, description="open connections in all; a new one beyond this closes the oldest idle one "
        "(one waiting for a request), or is closed itself when none is idle")
    max_connections_per_client: int = Field(64, ge=1, description="open connections from one client address, "
                                            "enforced the same way")
    header_timeout_s: float = Field(
        10.0, gt=0, description="a connection must deliver a request's line and headers within this, counted "
        "from when it opens or its previous answer ends; else it is closed")
    body_timeout_s: float = Field(30.0, gt=0, description="the whole body must arrive within this once the "
                                  "headers are in; else 408")
    keep_alive_s: float = Field(5.0, gt=0, description="an idle keep-alive connection is closed after this")
    max_body_bytes: int = Field(32 * MiB, ge=1024, description="HTTP request body; larger gets 413")
    max_messages: int = Field(256, ge=1, description="messages per request; more get 400 before any parsing "
                              "of them")
    max_content_parts: int = Field(1024, ge=1, description="text and image parts in all messages together; "
                                   "more get 400 before any parsing of them")
    max_text_chars: int = Field(65536, ge=1, description="characters of text in all messages together; more "
                                "get 400 before any tokenising")
    max_prompt_tokens: int = Field(4096, ge=1, description="prompt tokens after image expansion")
    max_tokens: int = Field(1024, ge=1, description="the largest max_tokens a request may ask for")
    default_max_tokens: int = Field(256, ge=1, description="max_tokens when a request gives none")
    max_queue: int = Field(32, ge=1, description="requests waiting for the model; more get 429")
    max_in_flight: int = Field(
        256, ge=1, description="HTTP requests handled at once (reading, queued, running, streaming); more get 503")
    request_timeout_s: float = Field(
        120.0, gt=0, description="from a request's arrival to the end of its answer; a request still queued "
        "or generating then gets 504 (a stream: a final error event) and its model row stops")
    drain_timeout_s: float = Field(
        10.0, ge=0, description="on SIGTERM, how long answers already generating may take to finish; queued "
        "requests get 503 at once, the rest 503 (or a final stream event) when it runs out")


class ServedEngineConfig(EngineConfig):
    """The engine that answers (`medvl.engine.EngineConfig`): `model` is the served folder (the command's
    argument), `kind` one that can be served (local, or vllm where vllm is installed)."""

    @field_validator("kind")
    @classmethod
    def _registered(cls, kind: str) -> str:  # replaces EngineConfig's check: only servable kinds
        return check_servable(kind)


class ServeConfig(Config):
    """`medvl serve`: which engine answers, where to listen, who may call, how requests are batched."""

    engine: ServedEngineConfig = Field(default_factory=ServedEngineConfig)
    model_name: str | None = Field(None, description="the id clients pass as `model`; default: the folder name")
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    allowed_hosts: list[str] | None = Field(
        None, description="names a request's Host header may carry (DNS-rebinding guard); '*' allows any. "
        "None: loopback names (localhost, 127.0.0.1, ::1) plus `host` itself when it is one address")
    api_key_env: str | None = Field(
        "MEDVL_API_KEY", description="environment variable holding the API key; when it is set and "
        f"non-empty, every /v1 call needs `Authorization: Bearer <key>`; at least {MIN_API_KEY_CHARS} characters")
    max_batch_size: int = Field(8, ge=1, description="requests answered by one generate call")
    batch_wait_ms: float = Field(10.0, ge=0, description="how long the first request of a batch waits for more")
    default_temperature: float = Field(
        0.0, ge=0, le=2, description="temperature when a request gives none (0 = greedy, reproducible)")
    system_prompt: str | None = Field(None, description="system message put first when a request has none")
    disclaimer_note: bool = Field(
        False, description="also append the research-only disclaimer to the answer text (it is always in the "
        "response's `medvl.disclaimer` field)")
    images: ImagePolicy = Field(default_factory=ImagePolicy)
    limits: Limits = Field(default_factory=Limits)

    def host_names(self) -> list[str] | None:
        """Host names requests may use besides loopback ones; None when any is allowed."""
        if self.allowed_hosts is not None:
            return None if "*" in self.allowed_hosts else [h.lower().rstrip(".") for h in self.allowed_hosts]
        return [] if is_wildcard(self.host) else [self.host.lower().strip("[]")]


class UnsafeExposureError(UserError, RuntimeError):
    """Refusing to start a server others could misuse (no key, a short key, unnamed hosts)."""


def is_wildcard(host: str) -> bool:
    """True for the listen-on-every-interface addresses (0.0.0.0, ::, empty)."""
    return host.strip("[]") in ("", "0.0.0.0", "::")


def is_loopback(host: str) -> bool:
    """True for addresses only this machine can reach (127.0.0.0/8, ::1, localhost)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class ListenAddressError(UserError, ValueError):
    """An address that is not this machine's, a host name that does not resolve, or a port in use."""


def check_listen_address(host: str, port: int) -> None:
    """Refuse, before the model loads, a `host`:`port` the server could not listen on.

    Every address `host` resolves to is bound once, as the server will bind it (SO_REUSEADDR, as
    uvicorn: a socket still closing is no obstacle; IPv6 sockets IPv6-only, as asyncio makes them)."""
    try:
        addresses = socket.getaddrinfo(host.strip("[]") or None, port, type=socket.SOCK_STREAM,
                                       flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise ListenAddressError(f"cannot listen on {host!r}: {exc.strerror}") from None
    for family, kind, proto, _, address in addresses:
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                probe.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                probe.bind(address)
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    raise ListenAddressError(f"port {port} on {host} is in use; choose another with --port") from None
                raise ListenAddressError(f"cannot listen on {url_host(host)}:{port}: {exc.strerror}") from None


def url_host(host: str) -> str:
    """`host` as a URL writes it: an IPv6 address in brackets."""
    return f"[{host}]" if ":" in host and not host.startswith("[") else host
