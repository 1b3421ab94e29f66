"""Abandoned and overdue work stops: client disconnects, request deadlines, and SIGTERM's drain.

The tiny model is slowed to ~50 ms a token, so an answer left to run would take seconds; each test
shows the model is freed long before that.
"""

from __future__ import annotations

import json
import threading
import time

import httpx
import pytest
from serve_helpers import assert_openai_error, raw_socket, slow_tokens, wait_until

CHAT = "/v1/chat/completions"


def _ask(max_tokens: int, stream: bool = False) -> dict:
    return {"model": "tiny", "messages": [{"role": "user", "content": "Tell me everything."}],
            "max_tokens": max_tokens, "stream": stream}


def _stats(url: str) -> dict:
    return httpx.get(url + "/health").json()["stats"]


@pytest.fixture
def slow(tiny_model):
    with slow_tokens(tiny_model[0], 0.05):
        yield


def test_a_client_that_leaves_stops_its_generation(serve, slow):
    with serve(max_batch_size=1) as url:
        with pytest.raises(httpx.ReadTimeout):  # gives up after 0.5 s of a ~20 s answer
            httpx.post(url + CHAT, json=_ask(400), timeout=0.5)
        assert wait_until(lambda: _stats(url)["stopped"] == 1, 5)
        start = time.monotonic()
        assert httpx.post(url + CHAT, json=_ask(2), timeout=60).status_code == 200
        assert time.monotonic() - start < 5


def test_a_stream_cut_midway_stops_its_generation(serve, slow):
    with serve() as url:
        with httpx.stream("POST", url + CHAT, json=_ask(400, stream=True), timeout=60) as response:
            lines = response.iter_lines()
            assert next(lines).startswith("data: ")
        assert wait_until(lambda: _stats(url)["stopped"] == 1, 5)
        assert httpx.post(url + CHAT, json=_ask(2), timeout=10).status_code == 200


def test_a_stream_left_before_its_first_chunk_stops_too(serve, slow):
    body = json.dumps(_ask(400, stream=True)).encode()
    with serve() as url:
        sock = raw_socket(url)
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                     + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
        sock.close()  # gone before reading a byte
        assert wait_until(lambda: _stats(url)["stopped"] == 1, 5)


def test_requests_abandoned_in_the_queue_never_run(serve, slow):
    with serve(max_batch_size=1, limits={"max_queue": 3}) as url:
        running = threading.Thread(target=httpx.post, args=(url + CHAT,), kwargs={"json": _ask(60), "timeout": 60})
        running.start()
        assert wait_until(lambda: _stats(url)["generate_calls"] == 1, 10)
        for _ in range(3):  # they fill the queue, then give up
            with pytest.raises(httpx.ReadTimeout):
                httpx.post(url + CHAT, json=_ask(60), timeout=0.3)
        health = httpx.get(url + "/health").json()
        assert health["waiting"] == 0 and health["stats"]["stopped"] == 3  # their places are free again
        running.join(60)
        assert httpx.post(url + CHAT, json=_ask(2), timeout=60).status_code == 200
        assert _stats(url)["generate_calls"] == 2  # the abandoned three never reached the model


def test_the_deadline_answers_504_and_frees_the_model(serve, slow):
    with serve(limits={"request_timeout_s": 1.0}) as url:
        start = time.monotonic()
        assert_openai_error(httpx.post(url + CHAT, json=_ask(400), timeout=60), 504, "request_timeout")
        assert time.monotonic() - start < 3
        streamed = httpx.post(url + CHAT, json=_ask(400, stream=True), timeout=60).text
        events = [e for e in streamed.split("\n\n") if e]
        assert json.loads(events[-2][len("data: "):])["error"]["code"] == "request_timeout"
        assert events[-1] == "data: [DONE]"
        assert wait_until(lambda: _stats(url)["stopped"] == 2, 5)
        assert httpx.post(url + CHAT, json=_ask(2), timeout=60).status_code == 200


def test_shutdown_drains_with_json_503_and_a_final_stream_event(serve, slow, generator):
    from medvl.engine.local import LocalEngine
    from medvl.serve.config import ServeConfig
    from medvl.serve.server import ServerThread

    config = ServeConfig(port=0, model_name="tiny", api_key_env=None, max_batch_size=1,
                         limits={"drain_timeout_s": 0.5})
    server = ServerThread(LocalEngine(generator), config)
    url = server.__enter__()
    events: list[str] = []
    queued: list[httpx.Response] = []

    def stream() -> None:
        with httpx.stream("POST", url + CHAT, json=_ask(400, stream=True), timeout=60) as response:
            events.extend(line for line in response.iter_lines() if line)

    threads = [threading.Thread(target=stream),
               threading.Thread(target=lambda: queued.append(httpx.post(url + CHAT, json=_ask(5), timeout=60)))]
    threads[0].start()
    assert wait_until(lambda: _stats(url)["stream_calls"] == 1, 10)
    threads[1].start()
    assert wait_until(lambda: httpx.get(url + "/health").json()["waiting"] == 1, 10)
    start = time.monotonic()
    server.__exit__(None, None, None)  # what SIGTERM does: uvicorn's should_exit
    for thread in threads:
        thread.join(30)
    assert time.monotonic() - start < 10
    assert_openai_error(queued[0], 503, "shutting_down")
    assert json.loads(events[-2][len("data: "):])["error"]["code"] == "shutting_down"
    assert events[-1] == "data: [DONE]"
