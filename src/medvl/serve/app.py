"""The OpenAI-compatible HTTP API: `create_app(generator, config)` → a FastAPI app.

Routes: `POST /v1/chat/completions` (streaming and not), `GET /v1/models`, `GET /health`.
Guards, outermost first: a cap on requests in flight (503), a body-size limit (413 before the
JSON is parsed), Bearer API-key auth on /v1 when a key is configured (401), request validation
(400, OpenAI error shape rather than FastAPI's 422), image policy and limits (400), the bounded
batching queue (429). Every
answer carries the research-only disclaimer in a `medvl` field and an `X-Medvl-Disclaimer`
header; with `disclaimer_note` it is also appended to the answer text.
"""

from __future__ import annotations

import hmac
import json
import logging
import os
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator

from fastapi import Depends, FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from medvl.model.checkpoint import DISCLAIMER
from medvl.model.generate import GenerationSettings, Generator
from medvl.serve.batcher import Batcher, Job
from medvl.serve.config import ServeConfig
from medvl.serve.image_urls import ImageResolver
from medvl.serve.protocol import (
    APIError,
    ChatCompletionRequest,
    apply_stop,
    chunk_body,
    completion_body,
    conversation_of,
    new_id,
    usage_body,
)
from medvl.serve.session import context_length, sampling_settings

__all__ = ["create_app", "resolve_api_key"]

log = logging.getLogger(__name__)
_HEADERS = {"X-Medvl-Disclaimer": DISCLAIMER}


def resolve_api_key(config: ServeConfig) -> str | None:
    """The configured key (from the environment variable `api_key_env`), or None."""
    if not config.api_key_env:
        return None
    return os.environ.get(config.api_key_env) or None


class RequestGuard:
    """ASGI middleware, outermost: at most `max_in_flight` requests at once (503), and bodies over
    `max_body` bytes refused with 413 before anything parses them (counted as they arrive, so a
    body without Content-Length is bounded too)."""

    def __init__(self, app: ASGIApp, max_body: int, max_in_flight: int):
        self.app, self.max_body, self.max_in_flight = app, max_body, max_in_flight
        self.in_flight = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        if self.in_flight >= self.max_in_flight:
            error = APIError(503, f"the server is handling {self.max_in_flight} requests; retry shortly",
                             "server_overloaded", headers={"Retry-After": "1"})
            return await _send_error(error, scope, receive, send)
        self.in_flight += 1
        try:
            await self._bounded(scope, receive, send)
        finally:
            self.in_flight -= 1

    async def _bounded(self, scope: Scope, receive: Receive, send: Send) -> None:
        too_large = APIError(413, f"request body exceeds {self.max_body} bytes", "request_too_large")
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_body:
            return await _send_error(too_large, scope, receive, send)
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                break
            size += len(message.get("body", b""))
            if size > self.max_body:
                return await _send_error(too_large, scope, receive, send)
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


def _error_response(error: APIError) -> JSONResponse:
    return JSONResponse(error.body(), status_code=error.status, headers={**_HEADERS, **error.headers})


async def _send_error(error: APIError, scope: Scope, receive: Receive, send: Send) -> None:
    await _error_response(error)(scope, receive, send)


def create_app(generator: Generator, config: ServeConfig, resolver: ImageResolver | None = None) -> FastAPI:
    """The API app; the batching worker starts with the app's lifespan and stops with it."""
    model_name = config.model_name or (config.model_dir.name if config.model_dir else "medvl")
    api_key = resolve_api_key(config)
    resolver = resolver or ImageResolver(config.images)
    limits = config.limits
    context = context_length(generator)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.batcher = Batcher(generator, config.max_batch_size, config.batch_wait_ms, limits.max_queue)
        try:
            yield
        finally:
            await run_in_threadpool(app.state.batcher.close)

    app = FastAPI(title="medvl", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.add_middleware(RequestGuard, max_body=limits.max_body_bytes, max_in_flight=limits.max_in_flight)

    @app.exception_handler(APIError)
    async def api_error(_: Request, exc: APIError) -> JSONResponse:
        return _error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        param = ".".join(str(p) for p in first["loc"] if p != "body") or None
        error = APIError(400, f"{param or 'request'}: {first['msg']}", "invalid_request", param)
        return await api_error(_, error)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return await api_error(_, APIError(exc.status_code, str(exc.detail), None))

    @app.exception_handler(Exception)
    async def unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error")
        return await api_error(_, APIError(500, f"internal error: {type(exc).__name__}", "internal_error"))

    async def authorized(request: Request) -> None:
        if api_key is None:
            return
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), api_key.encode()):
            raise APIError(401, "missing or invalid API key (send 'Authorization: Bearer <key>')",
                           "invalid_api_key", headers={"WWW-Authenticate": "Bearer"})

    @app.get("/health")
    async def health(request: Request) -> dict[str, Any]:
        batcher: Batcher = request.app.state.batcher
        return {"status": "ok", "model": model_name, "waiting": batcher.waiting,
                "stats": vars(batcher.stats), "disclaimer": DISCLAIMER}

    @app.get("/v1/models", dependencies=[Depends(authorized)])
    async def models() -> JSONResponse:
        card = {"id": model_name, "object": "model", "created": 0, "owned_by": "medvl"}
        return JSONResponse({"object": "list", "data": [card]}, headers=_HEADERS)

    @app.post("/v1/chat/completions", dependencies=[Depends(authorized)])
    async def chat_completions(body: ChatCompletionRequest, request: Request) -> Any:
        if body.model not in (None, model_name):
            raise APIError(404, f"model {body.model!r} does not exist; this server has {model_name!r}",
                           "model_not_found", "model")
        problem = body.unsupported()
        if problem:
            raise problem
        max_tokens = body.requested_max_tokens() or limits.default_max_tokens
        if max_tokens > min(limits.max_tokens, context - 1):
            raise APIError(400, f"max_tokens={max_tokens} exceeds this server's limit of "
                           f"{min(limits.max_tokens, context - 1)} (the model's context is {context})",
                           "invalid_value", "max_tokens")
        messages, urls = conversation_of(body, config.system_prompt)
        if len(urls) > config.images.max_images:
            raise APIError(400, f"{len(urls)} images exceed this server's limit of {config.images.max_images}",
                           "too_many_images", "messages")
        images = [await run_in_threadpool(resolver.load, url) for url in urls]
        job = Job(messages=messages, images=images, settings=_settings(body, max_tokens, config),
                  prompt_limit=min(limits.max_prompt_tokens, context - max_tokens), stream=body.stream)
        request.app.state.batcher.submit(job)
        kind, value = await job.events.get()
        if kind == "error":
            raise value
        if body.stream:
            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            return StreamingResponse(_sse(job, model_name, body.stop_list(), include_usage, config.disclaimer_note),
                                     media_type="text/event-stream", headers={**_HEADERS, "Cache-Control": "no-cache"})
        kind, result = await job.events.get()
        if kind == "error":
            raise result
        text, stopped = apply_stop(result.text, body.stop_list())
        finish = "stop" if stopped else result.finish_reason
        if config.disclaimer_note:
            text = _with_note(text)
        return JSONResponse(completion_body(new_id(), model_name, result, text, finish), headers=_HEADERS)

    return app


def _settings(body: ChatCompletionRequest, max_tokens: int, config: ServeConfig) -> GenerationSettings:
    temperature = config.default_temperature if body.temperature is None else body.temperature
    return sampling_settings(max_tokens, temperature, body.top_p or 1.0, body.seed or 0)


def _with_note(text: str) -> str:
    return f"{text}\n\n({DISCLAIMER})"


async def _sse(job: Job, model: str, stops: list[str], include_usage: bool, note: bool) -> AsyncIterator[str]:
    """OpenAI's stream: a role chunk, content chunks, a finish chunk, [usage chunk], `[DONE]`.

    Stop strings may span deltas, so the last `max(len(stop)) - 1` characters are held back
    until the next delta shows they do not start a stop string.
    """
    completion_id = new_id()

    def event(body: dict[str, Any]) -> str:
        return f"data: {json.dumps(body, ensure_ascii=False)}\n\n"

    yield event(chunk_body(completion_id, model, {"role": "assistant", "content": ""}, disclaimer=True))
    hold = max((len(s) for s in stops), default=1) - 1
    pending, stopped = "", False
    while True:
        kind, value = await job.events.get()
        if kind == "error":
            yield event(value.body())
            break
        if kind == "delta" and not stopped:
            pending += value
            cut, stopped = apply_stop(pending, stops)
            ready = cut if stopped else cut[: max(len(cut) - hold, 0)]
            if ready:
                yield event(chunk_body(completion_id, model, {"content": ready}))
            pending = "" if stopped else pending[len(ready):]
        elif kind == "done":
            tail = _with_note(pending) if note else pending
            if tail:
                yield event(chunk_body(completion_id, model, {"content": tail}))
            finish = "stop" if stopped else value.finish_reason
            yield event(chunk_body(completion_id, model, {}, finish, disclaimer=True))
            if include_usage:
                yield event(chunk_body(completion_id, model, None,
                                       usage=usage_body(value.prompt_tokens, value.new_tokens)))
            break
    yield "data: [DONE]\n\n"
