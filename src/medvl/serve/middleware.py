"""`RequestGuard`, the API's outermost ASGI layer: what is checked before any handler runs.

In order, from the request line and headers alone: the `Host` header against the allow-list
(400: DNS rebinding), draining (503 after SIGTERM), the API key on /v1 (401, so a keyless client
never gets a body byte read), the cap on requests in flight (503), then the body: any body outside
/v1, where no route reads one (413: the paths that need no key read no body either), one that is
not `application/json` (415: a web page can post text/plain or untyped bodies cross-site without
a CORS preflight, JSON only after one, which this server never grants) and a declared
Content-Length over `max_body_bytes` (413). Then the body is read whole, counted as it arrives
(413 without Content-Length too) and within `body_timeout_s` of the headers (408: slow bodies). These early
answers close the connection, so the unread rest of a body is never taken for a next request.
The handler then gets the body replayed from memory.
"""

from __future__ import annotations

import asyncio
import hmac
from typing import Callable

from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from medvl.model.checkpoint import DISCLAIMER
from medvl.serve.config import Limits, is_loopback
from medvl.serve.control import shutting_down
from medvl.serve.protocol import APIError

__all__ = ["RequestGuard", "error_response", "host_allowed", "DISCLAIMER_HEADERS"]

DISCLAIMER_HEADERS = {"X-Medvl-Disclaimer": DISCLAIMER}


def error_response(error: APIError, close: bool = False) -> JSONResponse:
    headers = {**DISCLAIMER_HEADERS, **error.headers, **({"Connection": "close"} if close else {})}
    return JSONResponse(error.body(), status_code=error.status, headers=headers)


def host_allowed(header: str, names: list[str] | None) -> bool:
    """Whether a `Host` header (port optional) names a loopback address or one of `names` (None: any)."""
    if names is None:
        return True
    host = header.strip().lower()
    if host.startswith("["):
        host = host[1:host.find("]")] if "]" in host else ""
    elif host.count(":") == 1:
        host = host.split(":")[0]
    host = host.rstrip(".")
    return bool(host) and (is_loopback(host) or host in names)


class _TooLarge(Exception):
    pass


class _Gone(Exception):
    pass


class RequestGuard:
    def __init__(self, app: ASGIApp, limits: Limits, api_key: str | None, host_names: list[str] | None,
                 draining: Callable[[], bool]):
        self.app, self.limits, self.api_key, self.host_names = app, limits, api_key, host_names
        self.draining = draining
        self.in_flight = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        refusal = self._refusal(scope)
        if refusal is not None:
            return await error_response(refusal, close=True)(scope, receive, send)
        self.in_flight += 1
        try:
            await self._with_body(scope, receive, send)
        finally:
            self.in_flight -= 1

    def _refusal(self, scope: Scope) -> APIError | None:
        headers = dict(scope["headers"])
        host = headers.get(b"host", b"").decode("latin-1")
        if not host_allowed(host, self.host_names):
            return APIError(400, f"Host {host!r} is not served here (allowed_hosts; a guard against DNS rebinding)",
                            "invalid_host")
        if self.draining():
            return shutting_down()
        if self.api_key is not None and scope["path"].startswith("/v1") and not self._key_matches(headers):
            return APIError(401, "missing or invalid API key (send 'Authorization: Bearer <key>')",
                            "invalid_api_key", headers={"WWW-Authenticate": "Bearer"})
        if self.in_flight >= self.limits.max_in_flight:
            return APIError(503, f"the server is handling {self.limits.max_in_flight} requests; retry shortly",
                            "server_overloaded", headers={"Retry-After": "1"})
        return self._body_refusal(scope["path"], headers)

    def _body_refusal(self, path: str, headers: dict[bytes, bytes]) -> APIError | None:
        """A body refused from the headers alone: any body outside /v1 (no route there reads one, so a
        keyless client gets none read), one that is not JSON (a web page can send text/plain or no type
        without CORS' preflight; JSON needs one, which this server never grants), one declared too large."""
        declared = headers.get(b"content-length", b"")
        if b"transfer-encoding" not in headers and not declared.strip(b"0"):
            return None  # no body
        if not path.startswith("/v1"):
            return APIError(413, f"{path} takes no request body", "request_too_large")
        media_type = headers.get(b"content-type", b"").partition(b";")[0].strip().lower()
        if media_type != b"application/json":
            return APIError(415, f"the body must be JSON: send 'Content-Type: application/json' (got "
                            f"{media_type.decode('latin-1') or 'none'})", "unsupported_media_type")
        if declared.isdigit() and int(declared) > self.limits.max_body_bytes:
            return self._too_large()
        return None

    def _key_matches(self, headers: dict[bytes, bytes]) -> bool:
        scheme, _, token = headers.get(b"authorization", b"").decode("latin-1").partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), self.api_key.encode())

    def _too_large(self) -> APIError:
        return APIError(413, f"request body exceeds {self.limits.max_body_bytes} bytes", "request_too_large")

    async def _with_body(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            async with asyncio.timeout(self.limits.body_timeout_s):
                body = await self._read(receive)
        except TimeoutError:
            late = APIError(408, f"the request body did not arrive within {self.limits.body_timeout_s:g} s "
                            "(limits.body_timeout_s)", "request_timeout")
            return await error_response(late, close=True)(scope, receive, send)
        except _TooLarge:
            return await error_response(self._too_large(), close=True)(scope, receive, send)
        except _Gone:
            return None
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _read(self, receive: Receive) -> bytes:
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise _Gone
            size += len(message.get("body", b""))
            if size > self.limits.max_body_bytes:
                raise _TooLarge
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                return b"".join(chunks)
