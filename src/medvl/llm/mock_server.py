"""A scriptable OpenAI-compatible chat server on 127.0.0.1, for tests and benchmarks.

`POST /v1/chat/completions` answers each request by the next behaviour of a script (beyond its end:
"ok"); `GET /v1/models` lists the model. Behaviours:

- `"ok"`: a valid reply whose text is `responder(body)`, with `usage`. A responder may instead
  return a behaviour dict (below), which makes the behaviour depend on the request's content.
- `"malformed"`: a 200 whose body is not valid JSON. `"empty_choices"`: a 200 with `choices: []`.
  `"null_content"`: a 200 whose message content is null.
- `{"status": 429, "retry_after": 0.1}`: an error status (any code), with `Retry-After` and
  `retry-after-ms` headers when `retry_after` is given; `"headers"` adds others (name: value), and
  `"error"` replaces the body's `error` object.
- `{"timeout": seconds}`: sleep that long before answering (longer than the client's timeout).
- `{"text": "..."}` or `{"reply_json": {...}}`: a valid reply with that text (or JSON as text);
  optional `"finish_reason"`, `"model"` and `"usage"` (a dict sent as it is; null omits it) in the
  same dict.
- any dict may add `"latency"` to override the server's latency for that request.

With `MockServer(..., api_key=KEY)`, a request whose `Authorization` header is not `Bearer KEY` gets
a 401 in OpenAI's shape (code `invalid_api_key`) before its body is read, and is neither recorded
nor counted against the script. Its message echoes the key that was sent, as a careless proxy
might: a client must not pass it on to its user.

The script is a list (applied in arrival order) or a function of the request index. Each request
sleeps `latency_s` asynchronously, so C concurrent clients are really served concurrently.

In-process: `with MockServer(script=[...]) as server: server.base_url`, then `server.requests`
(received bodies), `server.count_by_key()` (requests per `body_key`, the client's cache key) and
`server.max_in_flight`. As a process: `python -m medvl.llm.mock_server --port 0 --latency 0.05
--script script.json --log requests.jsonl` prints `READY <base_url>` and appends one line per
request to the log (`{"index", "key", "behaviour", "time"}`), so a test that kills a client can
count what was received; `start_mock_server_process(...)` starts it and waits until it is ready.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import json
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, Self

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from medvl.io.server_thread import start_in_thread
from medvl.llm.messages import body_key, estimate_prompt_tokens, estimate_text_tokens

__all__ = ["MockServer", "MockServerProcess", "default_responder", "main", "start_mock_server_process"]

Behaviour = str | dict[str, Any]
Script = list[Behaviour] | Callable[[int], Behaviour]
Responder = Callable[[dict[str, Any]], str | dict[str, Any]]

MALFORMED_BODY = '{"id": "chatcmpl-mock", "object": "chat.completion", "choices": [{"index": 0, "mess'


def default_responder(body: dict[str, Any]) -> str:
    """A deterministic reply derived from the request: JSON when `response_format` asks for it."""
    key = body_key(body)[:12]
    last = _last_user_text(body.get("messages", []))
    response_format = body.get("response_format") or {}
    if response_format.get("type") in {"json_object", "json_schema"}:
        return json.dumps({"reply": f"mock reply {key}", "echo": last[:200]})
    return f"mock reply {key}: {last[:200]}"


def _last_user_text(messages: list[dict[str, Any]]) -> str:
    for message in reversed(messages):
        content = message.get("content")
        if isinstance(content, str):
            return content
        texts = [p.get("text", "") for p in content or [] if p.get("type") == "text"]
        if texts:
            return " ".join(texts)
    return ""


class _State:
    """What the server has seen, shared between its event-loop thread and the test thread."""

    def __init__(self, responder: Responder, script: Script | None, latency_s: float, log_path: Path | None,
                 api_key: str | None):
        self.responder, self.script, self.latency_s, self.api_key = responder, script, latency_s, api_key
        self.requests: list[dict[str, Any]] = []
        self.arrival_times: list[float] = []  # time.monotonic() of each request
        self.in_flight = 0
        self.max_in_flight = 0
        self._log = log_path.open("a", encoding="utf-8") if log_path else None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.stopping = asyncio.Event()  # replaced by one made in the server's loop at startup

    def behaviour(self, index: int) -> Behaviour:
        if callable(self.script):
            return self.script(index)
        if self.script is not None and index < len(self.script):
            return self.script[index]
        return "ok"

    def record(self, body: dict[str, Any], behaviour: Behaviour) -> None:
        index = len(self.requests)
        self.requests.append(body)
        self.arrival_times.append(time.monotonic())
        if self._log is not None:
            entry = {"index": index, "key": body_key(body), "behaviour": behaviour, "time": time.time()}
            self._log.write(json.dumps(entry) + "\n")
            self._log.flush()

    async def sleep_unless_stopping(self, seconds: float) -> None:
        """Sleep, but end early when the server stops (so shutdown never waits on a fake timeout)."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.stopping.wait(), seconds)

    def wake_sleepers(self) -> None:
        if self.loop is not None and not self.loop.is_closed():
            self.loop.call_soon_threadsafe(self.stopping.set)

    def close(self) -> None:
        if self._log is not None:
            self._log.close()


def _create_app(state: _State) -> FastAPI:
    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        state.loop, state.stopping = asyncio.get_running_loop(), asyncio.Event()
        yield

    app = FastAPI(title="medvl mock OpenAI server", lifespan=lifespan)

    async def check_key(request: Request, call_next: Callable[[Request], Any]) -> Response:
        sent = request.headers.get("authorization", "").removeprefix("Bearer ")
        if sent == state.api_key:
            return await call_next(request)
        error = {"message": f"Incorrect API key provided: {sent}", "type": "invalid_request_error",
                 "code": "invalid_api_key"}
        return JSONResponse({"error": error}, status_code=401)

    if state.api_key is not None:  # only then: a middleware costs every request (bench/ measures them)
        app.middleware("http")(check_key)

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [{"id": "mock", "object": "model", "owned_by": "medvl"}]}

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> Response:
        try:
            body = await request.json()
        except json.JSONDecodeError as exc:
            return JSONResponse({"error": {"message": f"body is not JSON: {exc}", "type": "invalid_request_error"}},
                                status_code=400)
        behaviour = state.behaviour(len(state.requests))
        if behaviour == "ok":
            answer = state.responder(body)
            behaviour = answer if isinstance(answer, dict) else {"text": answer}
        state.record(body, behaviour)
        spec = behaviour if isinstance(behaviour, dict) else {}
        state.in_flight += 1
        state.max_in_flight = max(state.max_in_flight, state.in_flight)
        try:
            await asyncio.sleep(spec.get("latency", state.latency_s))
            if "timeout" in spec:
                await state.sleep_unless_stopping(spec["timeout"])
        finally:
            state.in_flight -= 1
        if "status" in spec:
            headers = dict(spec.get("headers", {}))
            if spec.get("retry_after") is not None:
                headers |= {"retry-after": str(spec["retry_after"]),
                            "retry-after-ms": str(int(spec["retry_after"] * 1000))}
            said = {"message": f"mock status {spec['status']}", "type": "mock_error", "code": None}
            error = spec.get("error", said)
            return JSONResponse({"error": error}, status_code=spec["status"], headers=headers)
        if behaviour == "malformed":
            return Response(MALFORMED_BODY, media_type="application/json")
        return JSONResponse(_completion(body, behaviour, spec))

    return app


def _completion(body: dict[str, Any], behaviour: Behaviour, spec: dict[str, Any]) -> dict[str, Any]:
    """A chat.completion body; its text is null for "null_content" (and unused for "empty_choices")."""
    text = json.dumps(spec["reply_json"]) if "reply_json" in spec else spec.get("text")
    choice = {
        "index": 0,
        "message": {"role": "assistant", "content": text},
        "finish_reason": spec.get("finish_reason", "stop"),
    }
    reply: dict[str, Any] = {
        "id": f"chatcmpl-{body_key(body)[:16]}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": spec.get("model", body.get("model", "mock")),
        "choices": [] if behaviour == "empty_choices" else [choice],
    }
    usage = spec.get("usage", "auto")
    if usage == "auto":
        prompt = estimate_prompt_tokens(body.get("messages", []), image_tokens=85)
        completion = estimate_text_tokens(text or "")
        usage = {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}
    if usage is not None:
        reply["usage"] = usage
    return reply


class MockServer:
    """The mock server in a background thread of this process (a context manager)."""

    def __init__(
        self,
        responder: Responder | None = None,
        script: Script | None = None,
        latency_s: float = 0.0,
        port: int = 0,
        *,
        log_path: str | Path | None = None,
        api_key: str | None = None,
    ):
        self._state = _State(responder or default_responder, script, latency_s,
                             Path(log_path) if log_path else None, api_key)
        self._port = port
        self._server: Any = None
        self._thread: threading.Thread | None = None

    @property
    def requests(self) -> list[dict[str, Any]]:
        """The JSON bodies received so far, in arrival order."""
        return self._state.requests

    @property
    def arrival_times(self) -> list[float]:
        """`time.monotonic()` at each request's arrival, in arrival order."""
        return self._state.arrival_times

    @property
    def max_in_flight(self) -> int:
        """The most requests the server was handling at once."""
        return self._state.max_in_flight

    def count_by_key(self) -> Counter[str]:
        """How many times each request (by `body_key`, the client's cache key) was received."""
        return Counter(body_key(body) for body in self._state.requests)

    def start(self) -> MockServer:
        import uvicorn

        # proto IPPROTO_TCP lets asyncio set TCP_NODELAY on accepted connections (without it,
        # Nagle + delayed ACK add ~40 ms to every reply on a kept-alive connection).
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", self._port))
        self._port = sock.getsockname()[1]
        config = uvicorn.Config(
            _create_app(self._state),
            log_level="warning",
            access_log=False,
            timeout_graceful_shutdown=5,
            backlog=4096,
        )
        self._server = uvicorn.Server(config)
        self._thread = start_in_thread(self._server, "medvl-mock-openai", sockets=[sock])
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._state.wake_sleepers()
            self._server.should_exit = True
            self._thread.join(timeout=10)
            self._server = None
        self._state.close()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._port}/v1"

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @staticmethod
    def subprocess(**kwargs: Any) -> MockServerProcess:
        """Start the server as a separate process (see `start_mock_server_process`)."""
        return start_mock_server_process(**kwargs)


class MockServerProcess:
    """A mock server running as a child process; `stop()` (or the context manager) ends it."""

    def __init__(self, process: subprocess.Popen, base_url: str, log_path: Path | None):
        self.process, self.base_url, self.log_path = process, base_url, log_path

    def logged(self) -> list[dict[str, Any]]:
        """The request log entries written so far (needs `log_path`)."""
        if self.log_path is None or not self.log_path.exists():
            return []
        lines = self.log_path.read_text(encoding="utf-8").splitlines()
        return [json.loads(line) for line in lines if line.strip()]

    def count_by_key(self) -> Counter[str]:
        return Counter(entry["key"] for entry in self.logged())

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_mock_server_process(
    *,
    script: list[Behaviour] | None = None,
    script_path: str | Path | None = None,
    latency_s: float = 0.0,
    port: int = 0,
    log_path: str | Path | None = None,
    responder: str | None = None,
    startup_timeout_s: float = 60.0,
) -> MockServerProcess:
    """Run `python -m medvl.llm.mock_server` and wait for its READY line.

    `script` is written next to the log (or to a temporary file) when `script_path` is not given;
    `responder` is an import path `package.module:function`.
    """
    import tempfile

    if script is not None and script_path is None:
        folder = Path(log_path).parent if log_path else Path(tempfile.mkdtemp(prefix="medvl-mock-"))
        script_path = folder / "mock-script.json"
        script_path.write_text(json.dumps(script), encoding="utf-8")
    command = [sys.executable, "-m", "medvl.llm.mock_server", "--port", str(port), "--latency", str(latency_s)]
    if script_path is not None:
        command += ["--script", str(script_path)]
    if log_path is not None:
        command += ["--log", str(log_path)]
    if responder is not None:
        command += ["--responder", responder]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    result: list[str] = []
    reader = threading.Thread(target=lambda: result.append(process.stdout.readline()), daemon=True)
    reader.start()
    reader.join(startup_timeout_s)
    line = result[0] if result else ""
    if not line.startswith("READY "):
        process.kill()
        raise RuntimeError(f"mock OpenAI server process did not start (got {line!r})")
    return MockServerProcess(process, line.split()[1], Path(log_path) if log_path else None)


def _import_responder(spec: str) -> Responder:
    module, _, name = spec.partition(":")
    return getattr(importlib.import_module(module), name)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Scriptable mock OpenAI chat server on 127.0.0.1.")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port (printed on the READY line)")
    parser.add_argument("--latency", type=float, default=0.0, help="seconds each request sleeps")
    parser.add_argument("--script", type=Path, help="JSON list of behaviours, applied in arrival order")
    parser.add_argument("--log", type=Path, help="append one JSON line per received request")
    parser.add_argument("--responder", help="reply text function, as package.module:function")
    args = parser.parse_args(argv)
    script = json.loads(args.script.read_text(encoding="utf-8")) if args.script else None
    responder = _import_responder(args.responder) if args.responder else None
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    with MockServer(responder, script, args.latency, args.port, log_path=args.log) as server:
        print(f"READY {server.base_url}", flush=True)
        stop.wait()


if __name__ == "__main__":
    main()
