"""`medvl serve` against hostile clients: idle and slow sockets, keyless bodies, foreign Host names,
and requests built to make the server work before refusing them."""

from __future__ import annotations

import json
import threading
import time

import httpx
import pytest
from serve_helpers import Gated, assert_openai_error, is_closed_by_peer, raw_socket, read_until_closed, wait_until

from medvl.serve.admission import Admission
from medvl.serve.config import Limits
from medvl.serve.connections import ConnectionTable
from medvl.serve.protocol import APIError

CHAT = "/v1/chat/completions"
KEY = "0123456789abcdef0123"


def _hello(max_tokens: int = 2) -> dict:
    return {"model": "tiny", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": max_tokens}


def test_idle_sockets_cannot_lock_anyone_out(serve):
    limits = {"max_connections": 12, "max_connections_per_client": 4, "header_timeout_s": 1.5}
    with serve(limits=limits) as url:
        hogs = [raw_socket(url, "127.0.0.2") for _ in range(10)]  # one address, more than its share
        assert wait_until(lambda: sum(not is_closed_by_peer(s) for s in hogs) <= 4, 5)
        others = [raw_socket(url, f"127.0.0.{3 + i}") for i in range(12)]  # fills the total with idle ones
        health = httpx.get(url + "/health", timeout=10)  # room is made by closing the oldest idle socket
        assert health.status_code == 200 and health.json()["status"] == "ok"
        assert httpx.post(url + CHAT, json=_hello(), timeout=60).status_code == 200
        start = time.monotonic()  # idle sockets are closed once the header deadline passes
        assert wait_until(lambda: all(is_closed_by_peer(s) for s in hogs + others), 5)
        assert time.monotonic() - start < 3
        for sock in hogs + others:
            sock.close()


def test_trickled_headers_are_cut_off(serve):
    with serve(limits={"header_timeout_s": 1.0}) as url:
        sock = raw_socket(url)
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        start = time.monotonic()
        for _ in range(20):  # one header byte every 0.2 s: still incomplete at the deadline
            if is_closed_by_peer(sock, 0.2):
                break
            sock.sendall(b"X")
        assert is_closed_by_peer(sock, 0.1) and time.monotonic() - start < 2.5
        sock.close()


class _Idle:
    def __init__(self, idle: bool, served: int = 0):
        self.idle, self.served, self.closed = idle, served, False

    def is_idle(self) -> bool:
        return self.idle and not self.closed

    def close_idle(self) -> None:
        self.closed = True


def test_busy_connections_are_never_closed_to_make_room():
    table = ConnectionTable(max_total=3, max_per_client=2)
    kept_alive, busy, fresh = _Idle(True, served=1), _Idle(False), _Idle(True)
    assert table.admit(kept_alive, "a") and table.admit(busy, "a") and table.admit(fresh, "b")
    newcomer = _Idle(True)
    assert table.admit(newcomer, "a")  # a's share is full: its idle connection goes, its busy one stays
    assert kept_alive.closed and not busy.closed
    assert table.admit(_Idle(True), "c")  # the total is full: of the idle ones, the oldest never served goes
    assert fresh.closed and not newcomer.closed
    full = ConnectionTable(max_total=1, max_per_client=1)
    assert full.admit(_Idle(False), "a") and not full.admit(_Idle(True), "b")  # nothing idle: refused


def test_the_key_is_checked_before_the_body_is_read(serve, monkeypatch):
    monkeypatch.setenv("MEDVL_TEST_KEY", KEY)
    with serve(api_key_env="MEDVL_TEST_KEY") as url:
        sock = raw_socket(url)  # announces 20 MB, sends none of it
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 20000000\r\n\r\n")
        answer = read_until_closed(sock)
        assert answer.startswith("HTTP/1.1 401") and "connection: close" in answer.lower()
        assert '"invalid_api_key"' in answer
        sock.close()


@pytest.mark.parametrize("framing", [b"Content-Length: 20000000", b"Transfer-Encoding: chunked"])
def test_paths_that_need_no_key_read_no_body(serve, monkeypatch, framing):
    monkeypatch.setenv("MEDVL_TEST_KEY", KEY)
    with serve(api_key_env="MEDVL_TEST_KEY", limits={"body_timeout_s": 5.0}) as url:
        for path in (b"/health", b"/nowhere"):  # announces a body, sends none of it
            sock = raw_socket(url)
            sock.sendall(b"POST " + path + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n" + framing + b"\r\n\r\n")
            answer = read_until_closed(sock, 2)
            assert answer.startswith("HTTP/1.1 413") and "takes no request body" in answer, answer
            sock.close()
        assert httpx.get(url + "/health", headers={"Content-Length": "0"}).status_code == 200


def test_only_json_bodies_are_read(serve):
    """A web page may post text/plain or untyped bodies to 127.0.0.1 without asking (no CORS preflight)."""
    body = json.dumps(_hello()).encode()
    with serve() as url:
        for media_type in ("text/plain", "application/x-www-form-urlencoded", None):
            headers = {"Content-Type": media_type} if media_type else {}
            refused = httpx.post(url + CHAT, content=body, headers=headers, timeout=60)
            assert_openai_error(refused, 415, "unsupported_media_type")
        typed = {"Content-Type": "Application/JSON; charset=utf-8"}
        assert httpx.post(url + CHAT, content=body, headers=typed, timeout=60).status_code == 200
        assert httpx.get(url + "/health").json()["stats"]["requests"] == 1


def test_slow_bodies_get_408_and_free_their_slot(serve, monkeypatch):
    monkeypatch.setenv("MEDVL_TEST_KEY", KEY)
    with serve(api_key_env="MEDVL_TEST_KEY", limits={"body_timeout_s": 1.0, "max_in_flight": 1}) as url:
        sock = raw_socket(url)
        sock.sendall(f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {KEY}\r\n"
                     "Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{".encode())
        start = time.monotonic()
        answer = read_until_closed(sock)
        assert answer.startswith("HTTP/1.1 408") and '"request_timeout"' in answer
        assert 0.8 < time.monotonic() - start < 3
        sock.close()
        ok = httpx.post(url + CHAT, json=_hello(), headers={"Authorization": f"Bearer {KEY}"}, timeout=60)
        assert ok.status_code == 200


def test_host_header_allow_list(serve):
    body = _hello()
    with serve() as url:
        port = url.rsplit(":", 1)[1]
        for good in (f"127.0.0.1:{port}", f"localhost:{port}", "localhost", "[::1]:80"):
            assert httpx.post(url + CHAT, json=body, headers={"Host": good}, timeout=60).status_code == 200, good
        for bad in ("evil.example", f"attacker.example:{port}", "127.0.0.1.nip.io", ""):
            refused = httpx.post(url + CHAT, json=body, headers={"Host": bad}, timeout=60)
            assert_openai_error(refused, 400, "invalid_host")
        assert_openai_error(httpx.get(url + "/health", headers={"Host": "evil.example"}), 400, "invalid_host")
    with serve(allowed_hosts=["api.example.org"]) as url:
        assert httpx.get(url + "/health", headers={"Host": "api.example.org:443"}).status_code == 200
        assert httpx.get(url + "/health", headers={"Host": "other.example.org"}).status_code == 400
    with serve(allowed_hosts=["*"]) as url:
        assert httpx.get(url + "/health", headers={"Host": "anything.example"}).status_code == 200


@pytest.fixture(scope="module")
def admission(generator):
    return Admission(generator.processor, Limits(max_messages=8, max_content_parts=8, max_text_chars=1000))


def _refusal(call, *args) -> APIError:
    with pytest.raises(APIError) as caught:
        call(*args)
    return caught.value


def test_message_count_is_checked_on_the_raw_body(admission):
    messages = ",".join(['{"role": "user", "content": "x"}'] * 9)
    error = _refusal(admission.parse, f'{{"messages": [{messages}], "broken json'.encode())
    assert (error.status, error.code) == (400, "too_many_messages")  # refused before parsing the JSON
    spaced = ",".join(['{"role" : "user", "content": "role"}'] * 8)  # 8 keys (the value "role" is no key)
    assert len(admission.parse(f'{{"messages": [{spaced}]}}'.encode()).messages) == 8
    escaped = ",".join(['{"r\\u006fle": "user", "content": "x"}'] * 9)  # hidden from the byte count
    assert _refusal(admission.parse, f'{{"messages": [{escaped}]}}'.encode()).code == "too_many_messages"


def test_content_parts_are_counted_before_parsing_and_deep_nesting_is_a_400(admission):
    def body(parts: list[str]) -> bytes:  # one message: a million empty parts took seconds to render
        return f'{{"messages": [{{"role": "user", "content": [{",".join(parts)}]}}]}}'.encode()

    error = _refusal(admission.parse, body(['{"type": "text", "text": ""}'] * 9)[:-3])  # broken JSON: not parsed
    assert (error.status, error.code) == (400, "too_many_content_parts")
    assert len(admission.parse(body(['{"type" : "text", "text": "type"}'] * 8)).messages[0].content) == 8
    hidden = body(['{"t\\u0079pe": "text", "text": ""}'] * 9)  # hidden from the byte count
    assert _refusal(admission.parse, hidden).code == "too_many_content_parts"
    nested = _refusal(admission.parse, b'{"messages": ' + b"[" * 100_000 + b"]" * 100_000 + b"}")
    assert (nested.status, nested.code) == (400, "invalid_json") and "nested too deeply" in nested.message


def test_text_and_estimated_tokens_are_checked_before_tokenising(admission, monkeypatch):
    long = json.dumps({"messages": [{"role": "user", "content": "word " * 201}]}).encode()
    assert _refusal(admission.parse, long).code == "too_much_text"
    request = admission.parse(json.dumps({"messages": [{"role": "user", "content": "x" * 1000}]}).encode())
    monkeypatch.setattr(admission, "prompt_tokens", lambda *_: pytest.fail("tokenised"))
    limit = 1000 // admission.longest_token - 1
    error = _refusal(admission.check_estimate, request, limit)
    assert error.code == "context_length_exceeded" and "at least" in error.message
    admission.check_estimate(request, 1000)  # a bound, not a guess: what could fit goes on to be counted


def test_prompts_are_measured_off_the_model_thread(serve, generator):
    gated = Gated(generator)
    long = {"model": "tiny", "messages": [{"role": "user", "content": "word " * 300}], "max_tokens": 2}
    with serve(gen=gated, limits={"max_prompt_tokens": 64}) as url:
        busy = threading.Thread(target=httpx.post, args=(url + CHAT,), kwargs={"json": _hello(), "timeout": 60})
        try:
            busy.start()
            assert gated.entered.wait(30)  # the model thread is held
            start = time.monotonic()
            assert_openai_error(httpx.post(url + CHAT, json=long, timeout=60), 400, "context_length_exceeded")
            assert time.monotonic() - start < 10
        finally:
            gated.gate.set()
            busy.join(30)


def test_a_huge_many_message_body_is_refused_without_the_model(serve):
    body = json.dumps({"model": "tiny", "messages": [{"role": "user", "content": "hi"}] * 300_000}).encode()
    with serve() as url:
        start = time.monotonic()
        refused = httpx.post(url + CHAT, content=body, headers={"content-type": "application/json"}, timeout=60)
        assert_openai_error(refused, 400, "too_many_messages")
        assert time.monotonic() - start < 5
        health = httpx.get(url + "/health").json()
    assert health["stats"]["requests"] == 0  # the model thread never saw it
