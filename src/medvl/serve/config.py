"""Typed settings of `medvl serve` (and the image policy that `chat`/`webui` share).

Everything a deployment tunes is here, with safe defaults: loopback only, no remote images,
local image files only under an explicit root, bounded bodies, images, tokens and queue.
Load from YAML with overrides: `load_config(ServeConfig, "serve.yaml", ["port=9000"])`.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path

from pydantic import Field

from medvl.config import Config

__all__ = ["ImagePolicy", "Limits", "ServeConfig", "UnsafeExposureError", "is_loopback"]

MiB = 1024 * 1024


class ImagePolicy(Config):
    """Where request images may come from, and how big they may be."""

    local_root: Path | None = Field(
        None, description="local files (file:// or plain paths) are served only from under this folder; "
        "None refuses every local path")
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
    fetch_timeout_s: float = Field(10.0, gt=0)


class Limits(Config):
    """Bounds on what one request may ask for, and on how much waits."""

    max_body_bytes: int = Field(32 * MiB, ge=1024, description="HTTP request body; larger gets 413")
    max_prompt_tokens: int = Field(4096, ge=1, description="prompt tokens after image expansion")
    max_tokens: int = Field(1024, ge=1, description="the largest max_tokens a request may ask for")
    default_max_tokens: int = Field(256, ge=1, description="max_tokens when a request gives none")
    max_queue: int = Field(32, ge=1, description="requests waiting for the model; more get 429")
    max_in_flight: int = Field(
        256, ge=1, description="HTTP requests handled at once (reading, queued, running, streaming); more get "
        "503 (uvicorn also caps raw connections, at 2 * max_in_flight + 16)")


class ServeConfig(Config):
    """`medvl serve`: where to listen, who may call, how requests are batched."""

    model_dir: Path | None = None
    model_name: str | None = Field(None, description="the id clients pass as `model`; default: the folder name")
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    api_key_env: str | None = Field(
        "MEDVL_API_KEY", description="environment variable holding the API key; when it is set and "
        "non-empty, every /v1 call needs `Authorization: Bearer <key>`")
    dtype: str = "auto"
    device: str | None = None
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


class UnsafeExposureError(RuntimeError):
    """Refusing to listen beyond this machine without authentication."""


def is_loopback(host: str) -> bool:
    """True for addresses only this machine can reach (127.0.0.0/8, ::1, localhost)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
