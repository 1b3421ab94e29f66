"""How `LLMClient` reads a failed attempt: an `LLMError` for its request, or the endpoint given up.

A status reply becomes an `LLMError` of kind "rate_limited" (429), "server_error" (5xx) or
"http_error" (others), carrying a `retry-after-ms` / `Retry-After` header's seconds
(`status_error`; a header that is no number of seconds from 0 up, or no date, is ignored: the
backoff applies); `connect_failure` says why an attempt made no connection at all.

Some failures stop the run instead (`EndpointUnusable`, a `UserError`), as every further item would
fail the same way. The first request to meet one decides for all: requests in flight stop at their
next attempt (they do not finish their own retry schedules) and later ones fail at once, sending
nothing. What was finished stays (cached replies, the caller's outputs): a rerun resumes. An
`EndpointWatch` holds that verdict for one client.

A rejected key (`KeyRejected`): a 401, not retried, whatever came before (a key revoked mid-run
fails every later request too), or `FORBIDDEN_IN_A_ROW` 403s with no reply between them (a key
without access to the model is refused every time; a proxy or firewall that forbids one request
for its content refuses only it, which then fails alone, status 403 and the server's message, so a
rerun is not stopped at that item again). Its one line names the endpoint, the status, the server's
own message (with the key masked, should the server echo it; no traceback carries the reply) and
the variable to set (`api_key_env`); it never holds the key.

A model the endpoint does not have: a 404, whatever came before (the model name is the same for
every request: a wrong `llm.model`, or a `llm.base_url` whose path is wrong, or a model unloaded
mid-run). An account out of quota: a 429 whose error code is "insufficient_quota" (OpenAI's; it
does not pass with waiting, unlike a rate limit). Each is one line naming the endpoint, the
status, the server's message and the setting to fix.

An endpoint never reached (`EndpointUnreachable`): a request has spent all its retries failing to
connect (connection refused, host name not found, no connection within `timeout_s / 2`) and no
attempt of this client has ever reached the server, so the base_url is wrong or the server is down,
and every further item would pay the same retries for nothing. The first request keeps its full
retry schedule (a vLLM server still loading its weights gets that long to come up). Once any
attempt has reached the server (any reply, any HTTP status, even a reply that timed out), later
connection failures are per-request errors: a server that restarts mid-run does not stop a long
job. Cache hits never touch the endpoint, so a rerun whose replies are all cached needs no server.

An endpoint that never answers (`EndpointUnusable`): the same verdict for a request that spent all
its retries connecting but getting no answer (no reply within `timeout_s`: a server that accepts and
hangs, or trickles its body; the connection dropped mid-reply; redirects in a loop) while no
attempt of this client has ever had an answer (a reply or any HTTP status). Without it every item
paid `(max_retries + 1) * timeout_s` (14 minutes with the defaults). Once anything has answered,
such failures are per request again.
"""

from __future__ import annotations

import math
import os
import socket
from email.utils import parsedate_to_datetime
from http import HTTPStatus
from time import time
from typing import Any

import openai

from medvl.llm.config import LLMConfig
from medvl.llm.messages import EndpointUnreachable, EndpointUnusable, KeyRejected, LLMError

__all__ = ["FORBIDDEN_IN_A_ROW", "NO_KEY", "EndpointWatch", "connect_failure", "retry_after", "status_error"]

RESUME = "finished items are kept: rerun to resume"
FORBIDDEN_IN_A_ROW = 3  # 403s with no reply between them that stop the run (module notes)
NO_ANSWER = frozenset({"timeout", "connection"})  # LLMError kinds of an attempt that got no answer
NO_KEY = "EMPTY"  # sent when $api_key_env is not set (a vLLM server started without --api-key takes any)


class EndpointWatch:
    """Whether one client's endpoint is still worth sending to (module notes), shared by all its requests."""

    def __init__(self, config: LLMConfig):
        self.config = config
        self.reached = False  # an attempt got past connecting
        self.answered = False  # an attempt got a reply or an HTTP status
        self.given_up: EndpointUnusable | None = None  # why the endpoint was given up, once it was
        self.forbidden_in_a_row = 0  # 403s since the last reply

    def raise_if_given_up(self) -> None:
        """Before an attempt: another request gave the endpoint up, so send nothing more."""
        if self.given_up is not None:
            raise type(self.given_up)(*self.given_up.args)

    def attempt_ended(self, error: BaseException | None) -> None:
        """Note whether an attempt (`error` None: it got a reply) reached the server, and had an answer."""
        connect_s = self.config.connect_timeout_s
        if error is None or (isinstance(error, LLMError) and connect_failure(error, connect_s) is None):
            self.reached = True  # a reply, an HTTP status, or at least a connection
        if error is None or (isinstance(error, LLMError) and error.kind not in NO_ANSWER):
            self.answered = True

    def replied(self) -> None:
        self.forbidden_in_a_row = 0

    def status_failure(self, exc: openai.APIStatusError, sent: str, key: str) -> EndpointUnusable | LLMError:
        """An HTTP status reply (`sent`: the API key sent) as its request's `LLMError`, or the endpoint
        given up (module notes)."""
        config, status = self.config, exc.status_code
        if status in (401, 403):
            return self._rejected(exc, sent, key)
        if status == 404:
            models = f"{config.base_url.rstrip('/')}/models"
            return self._give_up(EndpointUnusable(
                f"LLM endpoint {config.base_url} has no model {config.model} ({_status_line(exc, sent)}); "
                f"set llm.model to a model it serves (GET {models} lists them) or fix llm.base_url; {RESUME}"
            ))
        if status == 429 and _error_code(exc.body) == "insufficient_quota":
            return self._give_up(EndpointUnusable(
                f"LLM endpoint {config.base_url} says the account is out of quota "
                f"({_status_line(exc, sent)}); add credit to the account of the key in "
                f"${config.api_key_env}, or set another key there; {RESUME}"
            ))
        return status_error(exc, key)

    def _rejected(self, exc: openai.APIStatusError, sent: str, key: str) -> EndpointUnusable | LLMError:
        """A 401 or the `FORBIDDEN_IN_A_ROW`th 403 in a row stops the run; another 403 fails its request."""
        if exc.status_code == 403:
            self.forbidden_in_a_row += 1
            if self.forbidden_in_a_row < FORBIDDEN_IN_A_ROW:
                said = _said_without_key(exc, sent) or "Forbidden"
                return LLMError("http_error", said, status=403, key=key)
        return self._give_up(self._key_rejected(exc, sent))

    def unreachable(self, error: LLMError) -> EndpointUnusable | None:
        """After a request's last attempt: the endpoint given up when its retries were all spent on
        connecting, or on waiting for an answer, and nothing has ever answered (module notes), else None."""
        if self.answered or error.kind not in NO_ANSWER:
            return None
        config = self.config
        attempts = f"{config.max_retries + 1} attempts"
        cause = None if self.reached else connect_failure(error, config.connect_timeout_s)
        if cause is not None:
            return self._give_up(EndpointUnreachable(
                f"LLM endpoint {config.base_url} is unreachable: {cause} ({attempts}, no connection ever "
                f"made); check llm.base_url and that the server is up; {RESUME}"
            ))
        return self._give_up(EndpointUnusable(
            f"LLM endpoint {config.base_url} never answered: {error.message} ({attempts}, no reply or "
            f"status ever came); check the server and llm.base_url, or raise llm.timeout_s if it is only "
            f"slow; {RESUME}"
        ))

    def _key_rejected(self, exc: openai.APIStatusError, sent: str) -> KeyRejected:
        """A 401/403 as one line: the endpoint, the status, the server's message (without `sent`, the
        key), the variable to set."""
        config, status = self.config, exc.status_code
        reply = _status_line(exc, sent)
        if status == 403:
            reply += f"; {FORBIDDEN_IN_A_ROW} requests in a row"
        variable = f"${config.api_key_env}"
        if sent == NO_KEY:
            problem = f"rejected the API key ({reply}): {variable} is not set; set it to the endpoint's key"
        else:
            which = f"a key with access to model {config.model}" if status == 403 else "a valid key"
            problem = f"rejected the API key in {variable} ({reply}); set {which} in {variable}"
        return KeyRejected(f"LLM endpoint {config.base_url} {problem} (llm.api_key_env names the variable); "
                           f"{RESUME}")

    def _give_up(self, error: EndpointUnusable) -> EndpointUnusable:
        """Later attempts of every request raise the first such error (module notes)."""
        self.given_up = self.given_up or error
        return error


def status_error(exc: openai.APIStatusError, key: str) -> LLMError:
    """An HTTP status reply (other than a rejected key) as its request's `LLMError`."""
    status = exc.status_code
    kind = "rate_limited" if status == 429 else "server_error" if status >= 500 else "http_error"
    return LLMError(kind, exc.message, status=status, key=key, retry_after=retry_after(exc.response.headers))


def connect_failure(error: BaseException | None, connect_timeout_s: float) -> str | None:
    """Why an attempt made no connection ("connection refused", ...), from the transport's
    ConnectError / ConnectTimeout among its causes; None when it connected or is no transport error.
    The classes are matched by name: openai 3 runs on httpx2 and httpcore2, older ones on httpx."""
    chain: list[BaseException] = []
    while error is not None and len(chain) < 32:
        chain.append(error)
        error = error.__cause__ or error.__context__
    names = {type(link).__name__ for link in chain}
    if "ConnectTimeout" in names:
        return f"no connection within {connect_timeout_s:g} s"
    if "ConnectError" not in names:
        return None
    root = chain[-1]
    if isinstance(root, socket.gaierror):
        return f"host name not found: {root.strerror}"
    if isinstance(root, OSError) and root.errno:
        return os.strerror(root.errno).lower()
    return str(root) or type(root).__name__


def retry_after(headers: Any) -> float | None:
    """Seconds from `retry-after-ms` or `Retry-After` (seconds or an HTTP date), if present and
    readable: a negative, infinite or NaN figure is none."""
    seconds = _seconds(headers.get("retry-after-ms"))
    if seconds is not None:
        return seconds / 1000
    value = headers.get("retry-after")
    seconds = _seconds(value)
    if value is None or seconds is not None:
        return seconds
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - time())
    except (TypeError, ValueError, OverflowError):
        return None


def _seconds(value: str | None) -> float | None:
    """A header's number, when it is a finite one from 0 up."""
    try:
        seconds = float(value) if value is not None else math.nan
    except ValueError:
        return None
    return seconds if math.isfinite(seconds) and seconds >= 0 else None


def _status_line(exc: openai.APIStatusError, sent: str) -> str:
    """"404 Not Found: <the server's message, without `sent`, at most 200 characters>"."""
    status = exc.status_code
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:  # a status no RFC names
        phrase = "HTTP status"
    said = _said_without_key(exc, sent)
    line = f"{status} {phrase}"
    if said and said.lower() != phrase.lower():
        line += f": {said if len(said) <= 200 else said[:199] + '…'}"
    return line


def _said_without_key(exc: openai.APIStatusError, sent: str) -> str:
    """The server's message on one line, with `sent` (the key, should it be echoed) masked before any
    cut, so no piece of it shows."""
    return " ".join(_error_message(exc.body).split()).replace(sent, "***")


def _error_code(body: object) -> str:
    """The `code` (else `type`) of an OpenAI-shaped error body, else ""."""
    error = body.get("error", body) if isinstance(body, dict) else None
    code = (error.get("code") or error.get("type")) if isinstance(error, dict) else None
    return code if isinstance(code, str) else ""


def _error_message(body: object) -> str:
    """The message of a JSON error body: OpenAI's `{"error": {"message": ...}}`, vLLM's
    `{"error": "..."}`, or `{"message": ...}`; else ""."""
    error = body.get("error", body) if isinstance(body, dict) else None
    message = error.get("message") if isinstance(error, dict) else error
    return message if isinstance(message, str) else ""
