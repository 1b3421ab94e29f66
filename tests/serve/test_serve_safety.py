"""Safety of `medvl serve`: auth, exposure, image sources, size/token limits, bounded queue."""

from __future__ import annotations

import http.server
import os
import re
import socket
import threading
import time

import httpx
import pytest
from serve_helpers import Gated, assert_openai_error, bomb_png, data_url, image_message, png_bytes

from medvl.serve.config import ImagePolicy, ListenAddressError, ServeConfig, UnsafeExposureError, check_listen_address
from medvl.serve.image_urls import ImageResolver
from medvl.serve.protocol import APIError
from medvl.serve.server import check_exposure

CHAT = "/v1/chat/completions"
KEY = "s3cret-of-16-chars"


def _ask(url: str, image_urls: list[str], **extra) -> httpx.Response:
    body = {"model": "tiny", "messages": image_message("What is shown?", image_urls), "max_tokens": 4, **extra}
    return httpx.post(url + CHAT, json=body, timeout=60)


def test_api_key_is_required_when_configured(serve, monkeypatch):
    monkeypatch.setenv("MEDVL_TEST_KEY", KEY)
    body = {"model": "tiny", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}
    with serve(api_key_env="MEDVL_TEST_KEY") as url:
        assert_openai_error(httpx.post(url + CHAT, json=body), 401, "invalid_api_key")
        wrong = httpx.post(url + CHAT, json=body, headers={"Authorization": "Bearer nope"})
        assert_openai_error(wrong, 401, "invalid_api_key")
        assert_openai_error(httpx.get(url + "/v1/models"), 401, "invalid_api_key")
        ok = httpx.post(url + CHAT, json=body, headers={"Authorization": f"Bearer {KEY}"}, timeout=60)
        assert ok.status_code == 200 and ok.json()["choices"][0]["message"]["role"] == "assistant"
        assert httpx.get(url + "/health").status_code == 200  # liveness needs no key


def test_refuses_non_loopback_host_without_key(monkeypatch):
    monkeypatch.delenv("MEDVL_API_KEY", raising=False)
    with pytest.raises(UnsafeExposureError, match="without an API key"):
        check_exposure(ServeConfig(host="0.0.0.0"))
    with pytest.raises(UnsafeExposureError):
        check_exposure(ServeConfig(host="192.168.1.5", api_key_env=None))
    check_exposure(ServeConfig(host="127.0.0.1"))
    check_exposure(ServeConfig(host="::1"))
    monkeypatch.setenv("MEDVL_API_KEY", KEY)
    check_exposure(ServeConfig(host="192.168.1.5"))  # its own address is an allowed Host name
    with pytest.raises(UnsafeExposureError, match="name the host names"):  # every interface: which names?
        check_exposure(ServeConfig(host="0.0.0.0"))
    check_exposure(ServeConfig(host="0.0.0.0", allowed_hosts=["api.example.org"]))
    check_exposure(ServeConfig(host="0.0.0.0", allowed_hosts=["*"]))


def test_short_api_keys_are_refused(monkeypatch):
    monkeypatch.setenv("MEDVL_API_KEY", "k" * 15)
    for host in ("127.0.0.1", "192.168.1.5"):
        with pytest.raises(UnsafeExposureError, match="15 characters; use at least 16"):
            check_exposure(ServeConfig(host=host))


def test_cli_serve_refuses_public_host_without_key(tiny_model_dir, monkeypatch, medvl):
    monkeypatch.delenv("MEDVL_API_KEY", raising=False)
    result = medvl("serve", str(tiny_model_dir), "--host", "0.0.0.0")
    assert result.code == 2 and "without an API key" in result.err and len(result.err.strip().splitlines()) == 1


@pytest.mark.parametrize("args,expected", [
    (["--port", "taken"], "is in use; choose another with --port"),
    (["--host", "192.0.2.1", "--allow-host", "x"], "cannot listen on 192.0.2.1:"),  # TEST-NET-1: no machine's
    (["--host", "no-such-host.invalid", "--allow-host", "x"], "cannot listen on 'no-such-host.invalid'"),
])
def test_cli_serve_refuses_an_address_it_cannot_listen_on_before_the_model_loads(args, expected, tmp_path,
                                                                                  monkeypatch, medvl):
    monkeypatch.setenv("MEDVL_API_KEY", KEY)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        args = [str(taken.getsockname()[1]) if arg == "taken" else arg for arg in args]
        result = medvl("serve", tmp_path, *args)  # an empty folder: the check comes before the model loads
    assert result.code == 2 and result.err.count("error:") == 1 and expected in result.err, result.err


def test_serve_can_listen_on_ipv6():
    try:
        with socket.socket(socket.AF_INET6) as taken:
            taken.bind(("::1", 0))
            taken.listen()
            port = taken.getsockname()[1]
            with pytest.raises(ListenAddressError, match=f"port {port} on ::1 is in use"):
                check_listen_address("::1", port)
    except OSError:
        pytest.skip("no IPv6 loopback here")
    check_listen_address("::1", port)  # uvicorn serves IPv6 (only the web UI refuses it: Gradio cannot)


@pytest.fixture
def image_root(tmp_path):
    root = tmp_path / "root"
    (root / "sub").mkdir(parents=True)
    (root / "sub" / "ok.png").write_bytes(png_bytes(1))
    (tmp_path / "secret.png").write_bytes(png_bytes(2))
    os.symlink(tmp_path / "secret.png", root / "escape.png")
    os.symlink(root / "sub" / "ok.png", root / "inside.png")
    return root


def test_local_images_only_under_the_root(serve, image_root):
    with serve(images=ImagePolicy(local_root=image_root)) as url:
        for allowed in ["sub/ok.png", f"file://{image_root}/sub/ok.png", str(image_root / "inside.png")]:
            assert _ask(url, [allowed]).status_code == 200, allowed
        refused = ["file:///etc/passwd", "/etc/passwd", "../secret.png", "sub/../../secret.png",
                   f"file://{image_root}/../secret.png", "escape.png", "file://otherhost/etc/passwd"]
        for path in refused:
            assert_openai_error(_ask(url, [path]), 400, "image_url_refused")
    with serve() as url:  # no root configured: every local path is refused
        assert_openai_error(_ask(url, [str(image_root / "sub/ok.png")]), 400, "image_url_refused")


def test_local_paths_the_system_cannot_take_are_400s(image_root):
    os.mkfifo(image_root / "pipe.png")  # opening it would wait for a writer
    (image_root / "folder.png").mkdir()
    resolver = ImageResolver(ImagePolicy(local_root=image_root))
    for path, why in [("a\x00b.png", "cannot be used"), ("file:///a%00b.png", "cannot be used"),
                      ("x" * 5000, "cannot be used"), ("pipe.png", "not a regular file"),
                      ("folder.png", "not a regular file")]:
        with pytest.raises(APIError, match=why) as caught:
            resolver.load(path)
        assert (caught.value.status, caught.value.code) == (400, "image_url_refused")
    with pytest.raises(APIError) as missing:
        resolver.load("nowhere.png")
    assert missing.value.code == "image_missing"


class _Counter(http.server.BaseHTTPRequestHandler):
    hits = 0

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        type(self).hits += 1
        self.send_response(200)
        self.end_headers()
        self.wfile.write(png_bytes(0))

    def log_message(self, *args) -> None:
        pass


def test_remote_urls_refused_and_internal_addresses_never_contacted(serve):
    listener = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Counter)
    threading.Thread(target=listener.serve_forever, daemon=True).start()
    port = listener.server_address[1]
    internal = [f"http://127.0.0.1:{port}/x.png", f"http://localhost:{port}/x.png",
                "http://169.254.169.254/latest/meta-data/", "http://10.0.0.1/x.png", "http://[::1]/x.png"]
    try:
        with serve() as url:  # remote images off
            for image in internal + ["https://example.org/x.png"]:
                assert_openai_error(_ask(url, [image]), 400, "image_url_refused")
        hosts = ["127.0.0.1", "localhost", "169.254.169.254", "10.0.0.1", "::1"]
        with serve(images=ImagePolicy(allowed_hosts=hosts)) as url:  # listed, yet internal: still refused
            for image in internal:
                error = assert_openai_error(_ask(url, [image]), 400, "image_url_refused")
                assert "non-public" in error["message"]
    finally:
        listener.shutdown()
    assert _Counter.hits == 0


def test_allowed_public_host_is_fetched_at_the_checked_address():
    seen = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append((request.url.host, request.headers["host"], request.extensions.get("sni_hostname")))
        if request.url.path == "/moved.png":
            return httpx.Response(302, headers={"location": "http://127.0.0.1/x.png"})
        return httpx.Response(200, content=png_bytes(3))

    policy = ImagePolicy(allowed_hosts=["images.example.org", "mixed.example.org"])
    resolver = ImageResolver(policy, transport=httpx.MockTransport(answer), resolve=lambda host, port: {
        "images.example.org": ["93.184.216.34"], "mixed.example.org": ["93.184.216.34", "192.168.0.7"]}[host])
    assert resolver.load("https://images.example.org/a.png").size == (40, 48)
    assert seen == [("93.184.216.34", "images.example.org", "images.example.org")]
    with pytest.raises(APIError, match="HTTP 302"):  # redirects are not followed
        resolver.load("http://images.example.org/moved.png")
    with pytest.raises(APIError, match="non-public address 192.168.0.7"):
        resolver.load("http://mixed.example.org/a.png")
    with pytest.raises(APIError, match="not in the allowed list"):
        resolver.load("http://evil.example.org/a.png")


def test_a_remote_image_trickled_slowly_is_cut_off_at_the_fetch_timeout():
    def trickle():
        for _ in range(30):  # 3 s in all, each block well within the per-read timeout
            time.sleep(0.1)
            yield b"x" * 100

    resolver = ImageResolver(ImagePolicy(allowed_hosts=["images.example.org"], fetch_timeout_s=0.5),
                             transport=httpx.MockTransport(lambda _: httpx.Response(200, content=trickle())),
                             resolve=lambda host, port: ["93.184.216.34"])
    start = time.monotonic()
    with pytest.raises(APIError, match=r"did not deliver its image within 0.5 s") as caught:
        resolver.load("https://images.example.org/slow.png")
    assert caught.value.code == "image_url_refused" and time.monotonic() - start < 1.5


def test_large_images_are_shrunk_on_arrival():
    resolver = ImageResolver(ImagePolicy(max_side=100))
    assert resolver.load(data_url(png_bytes(0, size=(300, 150)))).size == (100, 50)
    assert ImageResolver(ImagePolicy(max_side=None)).load(data_url(png_bytes(0, size=(300, 150)))).size == (300, 150)


def test_body_size_limit_gives_413(serve):
    big = data_url(b"\x89PNG" + os.urandom(200_000))
    with serve(limits={"max_body_bytes": 64 * 1024}) as url:
        assert_openai_error(_ask(url, [big]), 413, "request_too_large")

        def chunks():  # no Content-Length: the limit is counted while reading
            for _ in range(100):
                yield b" " * 1024

        chunked = httpx.post(url + CHAT, content=chunks(), headers={"content-type": "application/json"})
        assert_openai_error(chunked, 413, "request_too_large")
        assert _ask(url, [data_url(png_bytes(0))]).status_code == 200


def test_image_limits_give_400(serve):
    with serve(images=ImagePolicy(max_images=2, max_image_bytes=50_000)) as url:
        assert_openai_error(_ask(url, [data_url(bomb_png())]), 400, "image_too_large")
        assert_openai_error(_ask(url, [data_url(png_bytes(0))] * 3), 400, "too_many_images")
        assert_openai_error(_ask(url, [data_url(png_bytes(0, size=(300, 300)))]), 400, "image_too_large")
        assert_openai_error(_ask(url, ["data:image/png;base64,bm90IGFuIGltYWdl"]), 400, "image_not_image")
        assert_openai_error(_ask(url, ["data:text/html;base64,PGI+"]), 400, "image_bad_data_url")
        assert_openai_error(_ask(url, ["ftp://example.org/a.png"]), 400, "image_url_refused")


def test_token_limits_give_400(serve):
    long_text = "word " * 400
    with serve(limits={"max_tokens": 32, "max_prompt_tokens": 64}) as url:
        assert_openai_error(_ask(url, [], max_tokens=33), 400, "invalid_value")
    with serve() as url:  # the tiny model's context is 512 positions
        assert_openai_error(_ask(url, [], max_tokens=600), 400, "invalid_value")
    with serve(limits={"max_tokens": 32, "max_prompt_tokens": 64}) as url:
        body = {"model": "tiny", "messages": [{"role": "user", "content": long_text}], "max_tokens": 4}
        assert_openai_error(httpx.post(url + CHAT, json=body, timeout=60), 400, "context_length_exceeded")
        body["stream"] = True  # refused before the stream starts, so still a plain 400
        assert_openai_error(httpx.post(url + CHAT, json=body, timeout=60), 400, "context_length_exceeded")
        body = {"model": "tiny", "max_tokens": 4, "messages": [  # the system message is what does not fit
            {"role": "system", "content": "word " * 60}, {"role": "user", "content": "Hi"}]}
        error = assert_openai_error(httpx.post(url + CHAT, json=body, timeout=60), 400, "context_length_exceeded")
        assert re.fullmatch(r"the system prompt is too long: it takes \d+ tokens, the other messages \d+; the prompt "
                            r"has \d+ tokens \(images included\); this request allows at most \d+ \(prompt limit and "
                            r"context length, minus max_tokens\)", error["message"]), error


def test_full_queue_answers_429_before_any_work(serve, generator, monkeypatch):
    gated = Gated(generator)
    results: dict[str, int] = {}
    decoded = []
    monkeypatch.setattr(ImageResolver, "load", lambda self, url: decoded.append(url))
    body = {"model": "tiny", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}
    with serve(gen=gated, max_batch_size=1, batch_wait_ms=0, limits={"max_queue": 1}) as url:

        def send(name: str) -> None:
            results[name] = httpx.post(url + CHAT, json=body, timeout=60).status_code

        threads = [threading.Thread(target=send, args=(name,)) for name in ("running", "queued")]
        try:
            threads[0].start()
            assert gated.entered.wait(30)
            threads[1].start()
            deadline = time.monotonic() + 30
            while httpx.get(url + "/health").json()["waiting"] < 1 and time.monotonic() < deadline:
                time.sleep(0.02)
            refused = _ask(url, [data_url(png_bytes(0))])
            assert_openai_error(refused, 429, "queue_full")
            assert refused.headers["retry-after"] == "1" and decoded == []  # its image was never decoded
        finally:
            gated.gate.set()
            for thread in threads:
                thread.join(30)
    assert results == {"running": 200, "queued": 200}


def test_requests_in_flight_are_capped_with_503(serve, generator):
    gated = Gated(generator)
    body = {"model": "tiny", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}
    with serve(gen=gated, limits={"max_in_flight": 1}) as url:
        first = threading.Thread(target=httpx.post, args=(url + CHAT,), kwargs={"json": body, "timeout": 60})
        try:
            first.start()
            assert gated.entered.wait(30)
            assert_openai_error(httpx.get(url + "/health"), 503, "server_overloaded")
        finally:
            gated.gate.set()
            first.join(30)
        assert httpx.get(url + "/health").status_code == 200
