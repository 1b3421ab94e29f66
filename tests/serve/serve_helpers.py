"""Helpers for serving tests: test images (a PNG decompression bomb too), messages, reference answers,
a slowed-down model, raw sockets from chosen loopback addresses."""

from __future__ import annotations

import base64
import io
import socket
import struct
import threading
import time
import zlib
from contextlib import contextmanager
from typing import Any, Callable, Iterator

import numpy as np
from PIL import Image

from medvl.model.generate import GenerationSettings, Generator


def png_bytes(seed: int = 0, size: tuple[int, int] = (40, 48)) -> bytes:
    rng = np.random.default_rng(seed)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


def data_url(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode()


def bomb_png(side: int = 100_000) -> bytes:
    """A few hundred bytes whose header declares side x side pixels (a decompression bomb)."""

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\x00" * 1024))
            + chunk(b"IEND", b""))


def image_message(text: str, urls: list[str]) -> list[dict[str, Any]]:
    parts: list[dict[str, Any]] = [{"type": "image_url", "image_url": {"url": u}} for u in urls]
    return [{"role": "user", "content": parts + [{"type": "text", "text": text}]}]


def reference(generator: Generator, text: str, images: list[Image.Image], max_new_tokens: int) -> str:
    """The answer of a one-at-a-time generate call for the same question."""
    messages = [{"role": "user", "content": [{"type": "image"}] * len(images) + [{"type": "text", "text": text}]}]
    settings = GenerationSettings(max_new_tokens=max_new_tokens)
    return generator.generate([messages], [images], settings)[0].text


def assert_openai_error(response: Any, status: int, code: str | None = None) -> dict[str, Any]:
    """The response is `status` with OpenAI's error shape (and `code` when given)."""
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) >= {"message", "type", "code"} and error["message"]
    if code is not None:
        assert error["code"] == code, error
    return error


@contextmanager
def slow_tokens(model: Any, seconds: float) -> Iterator[None]:
    """Every forward pass of `model` (one per generated token) takes at least `seconds`."""
    handle = model.register_forward_pre_hook(lambda *_: time.sleep(seconds))
    try:
        yield
    finally:
        handle.remove()


def raw_socket(url: str, source: str = "127.0.0.1") -> socket.socket:
    """A TCP connection to the server at `url`, from the loopback address `source` (127.0.0.0/8)."""
    host, port = url.rsplit("/", 1)[-1].split(":")
    sock = socket.socket()
    sock.bind((source, 0))
    sock.connect((host, int(port)))
    return sock


def is_closed_by_peer(sock: socket.socket, wait: float = 0.0) -> bool:
    """Whether the server closed `sock` (within `wait` seconds), without sending anything."""
    sock.settimeout(wait or 0.001)
    try:
        return sock.recv(65536) == b""
    except (socket.timeout, BlockingIOError):
        return False
    except ConnectionResetError:
        return True


def wait_until(condition: Callable[[], bool], timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def read_until_closed(sock: socket.socket, timeout: float = 5.0) -> str:
    """Everything the server sends on `sock` until it closes the connection (or `timeout` passes)."""
    sock.settimeout(timeout)
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except (socket.timeout, ConnectionResetError):
        pass
    return data.decode("latin-1")


class Gated:
    """A generator whose generate() waits for a gate, to hold the worker busy."""

    def __init__(self, inner):
        self.inner, self.gate, self.entered = inner, threading.Event(), threading.Event()

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def generate(self, *args, **kwargs):
        self.entered.set()
        self.gate.wait(30)
        return self.inner.generate(*args, **kwargs)
