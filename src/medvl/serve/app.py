"""The OpenAI-compatible HTTP API: `create_app(engine, config)` → a FastAPI app.

The answers come from a generation engine (`medvl.engine`: `local`, or `vllm` where installed) that
can be served: it carries the model's processor, with which admission measures prompts.

Routes: `POST /v1/chat/completions` (streaming and not), `GET /v1/models`, `GET /health`.
Before a handler runs, `middleware.RequestGuard` has checked the Host header, draining, the API
key, requests in flight and the body's size and arrival time. The chat handler then admits the
request (429 at once when the batcher's queue is full; then `admission`: message count, text, a
token estimate and the exact prompt length, none of it on the event loop or the model thread),
decodes its images (400 on any policy or limit breach), queues it for the batcher (429 when full) and waits for the answer until the request's
deadline (504), watching for the client to leave: either way the request's model row stops.
A stream always ends with a final event — the finish chunk, or an error event — and `[DONE]`.
`drain(app)` is the SIGTERM path (called by `server`).

Every answer carries the research-only disclaimer in a `medvl` field and an `X-Medvl-Disclaimer`
header; with `disclaimer_note` it is also appended to the answer text.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import secrets
import time
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, AsyncIterator

from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import Receive, Scope, Send

from medvl.config import ConfigError
from medvl.engine import Engine, EngineNotServable, Reply
from medvl.model.checkpoint import DISCLAIMER
from medvl.serve.admission import Admission
from medvl.serve.batcher import Batcher, Job
from medvl.serve.config import ServeConfig
from medvl.serve.control import RequestControl, client_gone, shutting_down
from medvl.serve.image_urls import ImageResolver
from medvl.serve.middleware import DISCLAIMER_HEADERS, RequestGuard, error_response
from medvl.serve.protocol import (
    APIError,
    AssistantMessage,
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    Choice,
    ChunkChoice,
    Notice,
    Usage,
    apply_stop,
    conversation_of,
    new_id,
)
from medvl.serve.session import sampling_settings, system_prompt_too_long

__all__ = ["EngineNotServable", "create_app", "drain", "resolve_api_key"]

log = logging.getLogger(__name__)


def resolve_api_key(config: ServeConfig) -> str | None:
    """The configured key (from the environment variable `api_key_env`), or None."""
    if not config.api_key_env:
        return None
    return os.environ.get(config.api_key_env) or None


def create_app(engine: Engine, config: ServeConfig, resolver: ImageResolver | None = None) -> FastAPI:
    """The API app; the batching worker starts with the app's lifespan and stops with it."""
    if engine.processor is None or engine.context_length is None:
        raise EngineNotServable(f"{type(engine).__name__} cannot be served: it has no model processor to "
                                "measure prompts with (serve a local model folder)")
    model_name = config.model_name or (Path(config.engine.model).name if config.engine.model else "medvl")
    resolver = resolver or ImageResolver(config.images)
    limits = config.limits
    context = engine.context_length
    admission = Admission(engine.processor, limits)
    _check_system_prompt(config, admission, context)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.batcher = Batcher(engine, config.max_batch_size, config.batch_wait_ms, limits.max_queue)
        try:
            yield
        finally:
            await run_in_threadpool(app.state.batcher.close)

    app = FastAPI(title="medvl", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.draining = False
    app.add_middleware(RequestGuard, limits=limits, api_key=resolve_api_key(config), host_names=config.host_names(),
                       draining=lambda: app.state.draining)

    @app.exception_handler(APIError)
    async def api_error(_: Request, exc: APIError) -> JSONResponse:
        return error_response(exc)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return error_response(APIError(exc.status_code, str(exc.detail), None))

    @app.exception_handler(Exception)
    async def unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error")
        return error_response(APIError(500, f"internal error: {type(exc).__name__}", "internal_error"))

    @app.get("/health")
    async def health(request: Request) -> dict[str, Any]:
        batcher: Batcher = request.app.state.batcher
        return {"status": "ok", "model": model_name, "waiting": batcher.waiting, "stats": vars(batcher.stats),
                "disclaimer": DISCLAIMER}

    @app.get("/v1/models")
    async def models() -> JSONResponse:
        card = {"id": model_name, "object": "model", "created": 0, "owned_by": "medvl"}
        return JSONResponse({"object": "list", "data": [card]}, headers=DISCLAIMER_HEADERS)

    async def admitted_job(body: ChatCompletionRequest, control: RequestControl) -> Job:
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
        if body.image_count() > config.images.max_images:
            raise APIError(400, f"{body.image_count()} images exceed this server's limit of "
                           f"{config.images.max_images}", "too_many_images", "messages")
        prompt_limit = min(limits.max_prompt_tokens, context - max_tokens)
        admission.check_estimate(body, prompt_limit)
        messages, urls = conversation_of(body, config.system_prompt)
        images = [await run_in_threadpool(resolver.load, url) for url in urls]
        inputs = await run_in_threadpool(admission.encode, messages, images, prompt_limit)
        temperature = config.default_temperature if body.temperature is None else body.temperature
        settings = sampling_settings(max_tokens, temperature, body.top_p or 1.0, seed=0)  # seeds go per row
        seed = secrets.randbits(63) if body.seed is None else body.seed  # no seed: fresh randomness
        return Job(messages, images, settings, seed, control, stream=body.stream, inputs=inputs)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Any:
        control = RequestControl(limits.request_timeout_s)
        request.app.state.batcher.check_room()  # a full queue refuses before any parsing, image or prompt work
        body = await run_in_threadpool(admission.parse, await request.body())
        job = await admitted_job(body, control)
        request.app.state.batcher.submit(job)
        if body.stream:
            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            return _JobStream(job, _sse(job, model_name, body.stop_list(), include_usage, config.disclaimer_note),
                              media_type="text/event-stream", headers={**DISCLAIMER_HEADERS, "Cache-Control": "no-cache"})
        result = await _outcome(job, request)
        text, stopped = apply_stop(result.text, body.stop_list())
        finish = "stop" if stopped else result.finish_reason
        if config.disclaimer_note:
            text = _with_note(text)
        completion = ChatCompletion(model=model_name, usage=Usage.of(result),
                                    choices=[Choice(message=AssistantMessage(content=text), finish_reason=finish)])
        return JSONResponse(completion.model_dump(), headers=DISCLAIMER_HEADERS)

    return app


def _check_system_prompt(config: ServeConfig, admission: Admission, context: int) -> None:
    """Refuse at start a `system_prompt` that leaves no room for a one-word question at the default
    `max_tokens` (every request without its own system message would get a 400), in the words and
    counts a request gets (`system_prompt_too_long`)."""
    if not config.system_prompt:
        return
    limits = config.limits
    limit = min(limits.max_prompt_tokens, context - limits.default_max_tokens)
    question = [{"role": "user", "content": "Why?"}]
    tokens = admission.prompt_tokens([{"role": "system", "content": config.system_prompt}, *question], [])
    if tokens <= limit:
        return
    allowed = (f"the server allows {limit} prompt tokens (limits.max_prompt_tokens={limits.max_prompt_tokens}, the "
               f"model's context {context} less limits.default_max_tokens={limits.default_max_tokens})")
    alone = admission.prompt_tokens(question, [])
    if alone <= limit:
        raise ConfigError(f"system_prompt: {system_prompt_too_long(tokens, 'a one-word question', alone)}; "
                          f"{allowed}; shorten it")
    fix = "raise limits.max_prompt_tokens" if limit == limits.max_prompt_tokens else "lower limits.default_max_tokens"
    raise ConfigError(f"limits: a one-word question alone takes {alone} prompt tokens; {allowed}; {fix}")


async def drain(app: FastAPI, grace_s: float) -> None:
    """SIGTERM: new requests get 503 and waiting ones 503 now; answers being generated get `grace_s`
    to finish, then their requests get 503 (a stream: a final error event)."""
    app.state.draining = True
    batcher: Batcher = app.state.batcher
    batcher.drain()
    deadline = time.monotonic() + grace_s
    while batcher.running and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    batcher.stop_running(shutting_down())


async def _outcome(job: Job, request: Request) -> Reply:
    """The job's result. Its deadline passing or its client leaving stops the job (raising 504 or 499);
    an error it ends with is raised."""
    result = asyncio.ensure_future(job.events.get())
    gone = asyncio.ensure_future(_disconnected(request))
    try:
        done, _ = await asyncio.wait({result, gone}, timeout=job.control.remaining(),
                                     return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
    if result in done:
        kind, value = result.result()
        if kind == "error":
            raise value
        return value
    result.cancel()
    if gone in done:
        job.control.cancel(client_gone())
    else:
        job.control.expire()
    raise job.control.reason


async def _disconnected(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


def _with_note(text: str) -> str:
    return f"{text}\n\n({DISCLAIMER})"


class _JobStream(StreamingResponse):
    """A streamed answer whose job stops when the response ends for any reason (a no-op once the job
    is done): the client left, even before the first chunk, or the server cancelled the response."""

    def __init__(self, job: Job, content: AsyncIterator[str], **kwargs: Any):
        super().__init__(content, **kwargs)
        self.job = job

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.job.control.cancel(client_gone())


async def _sse(job: Job, model: str, stops: list[str], include_usage: bool, note: bool) -> AsyncIterator[str]:
    """OpenAI's stream: a role chunk, content chunks, a finish chunk, [usage chunk], `[DONE]`.

    An error (deadline, shutdown) ends it with an error event and `[DONE]`. Stop strings may span
    deltas, so the last `max(len(stop)) - 1` characters are held back until the next delta shows
    they do not start one.
    """
    completion_id = new_id()

    def event(body: dict[str, Any]) -> str:
        return f"data: {json.dumps(body, ensure_ascii=False)}\n\n"

    def chunk(delta: dict[str, str] | None, finish: str | None = None, usage: Usage | None = None,
              disclaimer: bool = False) -> str:
        choices = [] if delta is None else [ChunkChoice(delta=delta, finish_reason=finish)]
        return event(ChatCompletionChunk(id=completion_id, model=model, choices=choices, usage=usage,
                                         medvl=Notice() if disclaimer else None).body())

    yield chunk({"role": "assistant", "content": ""}, disclaimer=True)
    hold = max((len(s) for s in stops), default=1) - 1
    pending, stopped = "", False
    while True:
        try:
            kind, value = await asyncio.wait_for(job.events.get(), job.control.remaining())
        except TimeoutError:
            job.control.expire()
            kind, value = "error", job.control.reason
        if kind == "error":
            yield event(value.body())
            break
        if kind == "delta" and not stopped:
            pending += value
            cut, stopped = apply_stop(pending, stops)
            ready = cut if stopped else cut[: max(len(cut) - hold, 0)]
            if ready:
                yield chunk({"content": ready})
            pending = "" if stopped else pending[len(ready):]
        elif kind == "done":
            tail = _with_note(pending) if note else pending
            if tail:
                yield chunk({"content": tail})
            finish = "stop" if stopped else value.finish_reason
            yield chunk({}, finish, disclaimer=True)
            if include_usage:
                yield chunk(None, usage=Usage.of(value))
            break
    yield "data: [DONE]\n\n"
