"""Turn a request's `image_url` into a decoded image, under the server's `ImagePolicy`.

Three sources, each refused unless the policy allows it:
- `data:image/...;base64,` URLs: always accepted, decoded by `medvl.io.images.decode_data_url`.
- local files (`file:///abs/path`, `/abs/path`, `rel/path`): only inside `local_root`. The path
  is resolved with every symlink followed, then must still lie under the resolved root, so
  `file:///etc/passwd`, `../` traversal and symlinks pointing out of the root are refused; so
  are paths the system cannot take (a NUL character, a name too long) and anything but a
  regular file (a FIFO would hold a worker thread until someone writes to it).
- `http(s)://` URLs: only for hosts listed in `allowed_hosts`. The host is resolved once and
  every address must be public (not loopback, private, link-local, reserved or multicast), so
  `http://127.0.0.1`, `http://localhost` and `http://169.254.169.254` never get a request.
  The connection then goes to that checked address (Host header and TLS SNI keep the name),
  so a DNS answer that changes between check and fetch cannot redirect it; redirects are not
  followed; the body is read up to `max_image_bytes` and within `fetch_timeout_s` in all (a
  server trickling bytes cannot hold a worker thread for longer).

Every refusal is an `APIError(400)` whose message says why; decoding uses the one image loader
with the policy's pixel limit, so a decompression bomb is a 400 too. Images larger than
`max_side` are shrunk once decoded, so a queued request holds little memory.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import stat
import time
from pathlib import Path
from typing import Any, Callable
from urllib.parse import unquote, urlsplit

import httpx
from PIL import Image

from medvl.io.images import ImageLoadError, decode_data_url, load_image
from medvl.serve.config import ImagePolicy
from medvl.serve.protocol import APIError

__all__ = ["ImageResolver", "public_addresses", "shrink"]

Resolve = Callable[[str, int], list[str]]


def shrink(image: Image.Image, max_side: int | None) -> Image.Image:
    """`image` shrunk in place (aspect kept) so that no side exceeds `max_side` (None: as it is)."""
    if max_side is not None and max(image.size) > max_side:
        image.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    return image


def _system_resolve(host: str, port: int) -> list[str]:
    return sorted({info[4][0] for info in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)})


def public_addresses(host: str, port: int, resolve: Resolve = _system_resolve) -> list[str]:
    """The addresses `host` resolves to, all checked to be public; raises APIError otherwise."""
    try:
        addresses = resolve(host, port)
    except OSError as exc:
        raise _refused(f"cannot resolve image host {host!r}: {exc}") from exc
    if not addresses:
        raise _refused(f"image host {host!r} has no address")
    for address in addresses:
        ip = ipaddress.ip_address(address.split("%")[0])
        if not ip.is_global or ip.is_multicast:
            raise _refused(f"image host {host!r} resolves to non-public address {ip}")
    return addresses


class ImageResolver:
    """`load(url)` → RGB image, or APIError(400) saying why the URL is refused or unreadable."""

    def __init__(self, policy: ImagePolicy, resolve: Resolve = _system_resolve,
                 transport: httpx.BaseTransport | None = None):
        self.policy = policy
        self.root = Path(os.path.realpath(policy.local_root)) if policy.local_root else None
        self.allowed_hosts = {h.lower().rstrip(".") for h in policy.allowed_hosts}
        self._resolve = resolve
        self._transport = transport

    def load(self, url: str) -> Image.Image:
        return shrink(self._decode(url), self.policy.max_side)

    def _decode(self, url: str) -> Image.Image:
        scheme = urlsplit(url).scheme.lower()
        try:
            if scheme == "data":
                return decode_data_url(url, max_bytes=self.policy.max_image_bytes,
                                       max_pixels=self.policy.max_pixels)
            if scheme in ("http", "https"):
                return load_image(self._fetch(url), max_pixels=self.policy.max_pixels)
            if scheme in ("", "file"):
                return load_image(self.local_path(url), max_pixels=self.policy.max_pixels)
        except ImageLoadError as exc:
            raise APIError(400, f"image could not be used: {exc.reason}: {exc.detail}",
                           f"image_{exc.reason}") from exc
        raise _refused(f"image URL scheme {scheme!r} is not supported (use data:, file: or http(s):)")

    def local_path(self, url: str) -> Path:
        """The real path of a local image URL, refused unless it lies inside `local_root`."""
        if self.root is None:
            raise _refused("local image files are not allowed (the server has no image root)")
        if url.lower().startswith("file:"):
            parts = urlsplit(url)
            if parts.netloc not in ("", "localhost"):
                raise _refused(f"file URL host {parts.netloc!r} is not allowed")
            raw = unquote(parts.path)
        else:
            raw = url
        try:
            real = Path(os.path.realpath(Path(raw) if os.path.isabs(raw) else self.root / raw))
            if real != self.root and self.root not in real.parents:
                raise _refused(f"image path {raw[:200]!r} is outside the allowed image root")
            found = real.stat()
        except FileNotFoundError:
            return real  # the loader names it missing
        except (OSError, ValueError) as exc:  # a NUL character, a name too long for the system
            why = getattr(exc, "strerror", None) or exc
            raise _refused(f"image path {raw[:200]!r} cannot be used: {why}") from None
        if not stat.S_ISREG(found.st_mode):  # opening a FIFO would wait for a writer
            raise _refused(f"image path {raw[:200]!r} is not a regular file")
        if found.st_size > self.policy.max_image_bytes:
            raise APIError(400, f"image file exceeds {self.policy.max_image_bytes} bytes", "image_too_large")
        return real

    def _fetch(self, url: str) -> bytes:
        parts = urlsplit(url)
        host = (parts.hostname or "").lower().rstrip(".")
        if not host or host not in self.allowed_hosts:
            raise _refused(f"remote image host {host or url!r} is not in the allowed list")
        port = parts.port or (443 if parts.scheme == "https" else 80)
        address = public_addresses(host, port, self._resolve)[0]
        pinned = parts._replace(netloc=_netloc(address, parts.port)).geturl()
        headers = {"Host": parts.netloc.rsplit("@", 1)[-1]}
        extensions: dict[str, Any] = {"sni_hostname": host} if parts.scheme == "https" else {}
        limit, seconds = self.policy.max_image_bytes, self.policy.fetch_timeout_s
        deadline = time.monotonic() + seconds  # httpx's timeout bounds each read, not their sum
        try:
            with httpx.Client(transport=self._transport, timeout=seconds,
                              follow_redirects=False, trust_env=False) as client:
                with client.stream("GET", pinned, headers=headers, extensions=extensions) as response:
                    if response.status_code != 200:
                        raise _refused(f"image URL answered HTTP {response.status_code}")
                    data = bytearray()
                    for block in response.iter_bytes():
                        data += block
                        if len(data) > limit:
                            raise APIError(400, f"remote image exceeds {limit} bytes", "image_too_large")
                        if time.monotonic() > deadline:
                            raise _refused(f"image URL did not deliver its image within {seconds:g} s "
                                           "(images.fetch_timeout_s)")
                    return bytes(data)
        except httpx.HTTPError as exc:
            raise _refused(f"image URL could not be fetched: {type(exc).__name__}") from exc


def _netloc(address: str, port: int | None) -> str:
    host = f"[{address}]" if ":" in address else address
    return f"{host}:{port}" if port else host


def _refused(message: str) -> APIError:
    return APIError(400, message, "image_url_refused", "messages")
