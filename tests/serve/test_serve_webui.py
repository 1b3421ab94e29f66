"""`medvl webui` end to end in a real headless Chromium (Debian's, driven by Playwright).

The page is uploaded a file that is not an image, which is answered with the reason, then two
images and asked a question; the streamed answer must equal the model's greedy answer for those
images (the refused exchange is not history). A second question (with a generation setting changed) must be
answered with the first exchange, images included, as history.
"""

from __future__ import annotations

import re
import shutil
import socket

import pytest
from PIL import Image
from serve_helpers import bomb_png, png_bytes

from medvl.model.checkpoint import DISCLAIMER
from medvl.model.generate import GenerationSettings
from medvl.serve.session import user_turn
from medvl.serve.webui import REFUSED, conversation_of_history

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def test_gradio_history_becomes_medvl_messages():
    history = [
        {"role": "user", "content": [{"type": "file", "file": {"path": "/a.png"}}]},
        {"role": "user", "content": [{"path": "/b.png"}, "look"]},
        {"role": "user", "content": [{"type": "text", "text": "at these"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "ok"}]},
    ]
    messages, paths = conversation_of_history(history, {"text": "and this?", "files": ["/c.png"]})
    assert paths == ["/a.png", "/b.png", "/c.png"]
    assert messages == [user_turn("look\nat these", 2), {"role": "assistant", "content": "ok"},
                        user_turn("and this?", 1)]


def test_webui_refuses_a_public_host_without_login(tmp_path):
    from medvl.serve.config import UnsafeExposureError
    from medvl.serve.webui import launch

    with pytest.raises(UnsafeExposureError, match="without a login"):
        launch(tmp_path / "never-loaded", host="0.0.0.0")


def test_webui_applies_serves_image_limits(generator, tiny_model_dir, tmp_path):
    from medvl.serve.config import ImagePolicy
    from medvl.serve.webui import answer, launch

    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(bomb_png(4100))  # 16.8 MP declared: over serve's 16 MP, under the loader's own 64 MP
    big = tmp_path / "big.png"
    big.write_bytes(png_bytes(0, size=(300, 200)))
    policy = ImagePolicy()
    refused = next(answer(generator, policy, {"text": "What?", "files": [str(bomb)]}, [], 4, 0.0, 1.0))
    assert refused.startswith(f"{REFUSED}bomb.png: too_large")
    refused = next(answer(generator, policy, {"text": "What?", "files": [str(big)] * 9}, [], 4, 0.0, 1.0))
    assert refused == f"{REFUSED}9 images in this conversation; the limit is 8"
    shrunk, sent = [], generator.stream

    def spy(messages, images, settings):
        shrunk.extend(image.size for image in images)
        return sent(messages, images, settings)

    generator.stream = spy
    try:
        list(answer(generator, ImagePolicy(max_side=100), {"text": "What?", "files": [str(big)]}, [], 2, 0.0, 1.0))
    finally:
        del generator.stream
    assert shrunk == [(100, 67)]
    demo = launch(tiny_model_dir, port=_free_port(), block=False)
    try:
        assert demo.max_file_size == policy.max_image_bytes  # uploads: serve's bytes per image
    finally:
        demo.close()


@pytest.mark.parametrize("setup,args,expected", [
    ({"MEDVL_WEBUI_AUTH": "alice"}, [], "$MEDVL_WEBUI_AUTH must be user:password"),  # not a page without login
    ({"MEDVL_WEBUI_AUTH": "alice:"}, ["--host", "0.0.0.0"], "$MEDVL_WEBUI_AUTH must be user:password"),
    ({"MEDVL_WEBUI_AUTH": "alice:hunter2"}, ["--host", "0.0.0.0"], "has 7 characters; use at least 16"),
    ({"MEDVL_WEBUI_AUTH": "a:a-long-password-here"}, ["--host", "::1"], "cannot listen on the IPv6 address '::1'"),
    ({}, ["--port", "taken"], "is in use; choose another with --port"),
])
def test_webui_refuses_what_gradio_would_fail_on_in_one_line(setup, args, expected, tmp_path, monkeypatch, medvl):
    for name, value in setup.items():
        monkeypatch.setenv(name, value)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        args = [str(taken.getsockname()[1]) if arg == "taken" else arg for arg in args]
        result = medvl("webui", str(tmp_path), *args)  # an empty folder: the checks come before the model loads
    assert result.code == 2 and result.err.count("error:") == 1 and expected in result.err, result.err
    assert "Traceback" not in result.err


def test_bad_messages_are_answered_with_the_reason_without_a_traceback(tiny_model_dir, tmp_path, capfd):
    from gradio_client import Client, handle_file

    from medvl.serve.webui import launch

    not_image = tmp_path / "notes.png"
    not_image.write_text("not an image")
    demo = launch(tiny_model_dir, port=_free_port(), block=False)
    try:
        client = Client(demo.local_url, verbose=False)
        for message, reason in [({"text": " ", "files": []}, "type a question or attach an image"),
                                ({"text": "What?", "files": [handle_file(str(not_image))]}, "notes.png: not_image")]:
            assert client.predict(message, 4, 0.0, 1.0, api_name="/respond").startswith(REFUSED + reason)
    finally:
        demo.close()
    assert "Traceback" not in capfd.readouterr().err


def test_a_refused_exchange_is_left_out_of_the_history():
    history = [
        {"role": "user", "content": [{"path": "/notes.png"}, "what?"]},
        {"role": "assistant", "content": f"{REFUSED}notes.png: not_image (...)"},
        {"role": "user", "content": "hello"},
        {"role": "assistant", "content": "hi"},
    ]
    messages, paths = conversation_of_history(history, {"text": "and now?", "files": []})
    assert paths == [] and messages == [user_turn("hello", 0), {"role": "assistant", "content": "hi"},
                                        user_turn("and now?", 0)]


def test_sigterm_stops_the_page_and_deletes_the_uploads(tiny_model_dir, tmp_path):
    """With a question in flight: the process exits 0 within seconds, leaves no child, and the uploaded scan is gone
    from Gradio's cache (Gradio keeps uploads for good unless told otherwise). The console has medvl's serving line,
    not Gradio's (which advises `share=True` in `launch()`, an option the command does not have)."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from gradio_client import Client, handle_file

    scan = tmp_path / "patient scan.png"
    scan.write_bytes(png_bytes(3))
    port = _free_port()
    env = {**os.environ, "GRADIO_TEMP_DIR": str(tmp_path / "gradio-cache")}
    page = subprocess.Popen([sys.executable, "-m", "medvl.cli", "webui", str(tiny_model_dir), "--port", str(port)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                client = Client(f"http://127.0.0.1:{port}/", verbose=False)
                break
            except Exception:
                assert page.poll() is None and time.monotonic() < deadline, page.stderr.read() if page.stderr else ""
                time.sleep(0.5)
        job = client.submit({"text": "Describe it at length.", "files": [handle_file(str(scan))]}, 480, 0.0, 1.0,
                            api_name="/respond")
        while not list((tmp_path / "gradio-cache").rglob("patient scan.png")):
            assert time.monotonic() < deadline and not job.done()
            time.sleep(0.05)
        page.send_signal(signal.SIGTERM)
        assert page.wait(timeout=30) == 0, page.stderr.read() if page.stderr else ""
    finally:
        if page.poll() is None:
            os.killpg(page.pid, signal.SIGKILL)
    assert subprocess.run(["pgrep", "-g", str(page.pid)], capture_output=True).stdout == b""
    assert not list((tmp_path / "gradio-cache").rglob("*.png"))
    stdout, stderr = page.communicate()
    assert "Traceback" not in stderr
    assert f"on http://127.0.0.1:{port} (login off)" in stderr and "share=True" not in stdout + stderr, stdout + stderr


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_upload_ask_and_see_the_answer_in_chromium_after_a_bad_upload(generator, tmp_path, monkeypatch):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("Debian's chromium is not installed (apt-get install -y chromium; .ci/run does it)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright Python package is not installed")
    monkeypatch.setenv("GRADIO_ANALYTICS_ENABLED", "False")
    from medvl.serve.webui import build_demo

    not_image = tmp_path / "notes.png"
    not_image.write_text("not an image")
    paths = []
    for seed in (0, 1):
        paths.append(tmp_path / f"scan{seed}.png")
        paths[-1].write_bytes(png_bytes(seed))
    images = [Image.open(p).convert("RGB") for p in paths]
    first = generator.generate([[user_turn("What is shown?", 2)]], [images], GenerationSettings(max_new_tokens=8))
    history = [user_turn("What is shown?", 2), {"role": "assistant", "content": first[0].text},
               user_turn("Anything else?", 0)]
    second = generator.generate([history], [images], GenerationSettings(max_new_tokens=5))

    demo = build_demo(generator, default_max_new_tokens=8)
    demo.queue()
    port = _free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    try:
        with sync_api.sync_playwright() as playwright:
            browser = playwright.chromium.launch_persistent_context(
                str(tmp_path / "chromium-profile"), executable_path=chromium, args=CHROMIUM_FLAGS, headless=True)
            page = browser.new_page()
            page.goto(f"http://127.0.0.1:{port}/", wait_until="domcontentloaded")
            expect = sync_api.expect
            expect(page.get_by_text(DISCLAIMER)).to_be_visible(timeout=60_000)
            # A bad upload is answered with the reason; the input stays usable (after a gr.Error it
            # stayed disabled) and the refused exchange is not history (the answers below are greedy
            # answers without it).
            page.set_input_files("#medvl-input input[type=file]", [str(not_image)])
            expect(page.locator("#medvl-input").get_by_label("File thumbnail")).to_have_count(1, timeout=30_000)
            page.fill("#medvl-input textarea", "What is this?")
            page.click("#medvl-input [data-testid=submit-button]")
            bot = page.locator("#medvl-chat [data-testid=bot]")
            expect(bot.last).to_have_attribute("aria-label", re.compile(f"^bot's message: {REFUSED}notes.png: not_image"),
                                               timeout=60_000)
            expect(page.locator("#medvl-input textarea")).to_be_enabled(timeout=30_000)
            page.set_input_files("#medvl-input input[type=file]", [str(p) for p in paths])
            expect(page.locator("#medvl-input img")).to_have_count(2, timeout=30_000)
            page.fill("#medvl-input textarea", "What is shown?")
            page.click("#medvl-input [data-testid=submit-button]")
            expect(bot).to_have_count(2, timeout=60_000)
            expect(bot.last).to_have_attribute("aria-label", f"bot's message: {first[0].text}", timeout=60_000)

            page.get_by_text("Generation settings").click()
            tokens = page.get_by_label("max new tokens").first
            tokens.fill("5")
            tokens.press("Enter")
            page.fill("#medvl-input textarea", "Anything else?")
            page.click("#medvl-input [data-testid=submit-button]")
            expect(bot).to_have_count(3, timeout=60_000)
            expect(bot.last).to_have_attribute("aria-label", f"bot's message: {second[0].text}", timeout=60_000)
            browser.close()
    finally:
        demo.close()


def test_the_token_slider_fits_the_models_context(generator, tiny_model_dir):
    """Its default and its maximum leave room for a question: a default past the slider's end made
    every message fail ("Value 5000 is greater than maximum value 1024"), one past the context is refused."""
    from medvl.model.generate import context_length
    from medvl.serve.session import ContextOverflow
    from medvl.serve.webui import build_demo, launch

    context = context_length(generator.model.config)
    slider = next(c for c in build_demo(generator, default_max_new_tokens=256).additional_inputs
                  if getattr(c, "label", "") == "max new tokens")
    assert (slider.value, slider.maximum) == (256, min(1024, context - 1))
    with pytest.raises(ContextOverflow, match=f"max_new_tokens={context} leaves no room for a question"):
        launch(tiny_model_dir, port=_free_port(), max_new_tokens=context, block=False).close()


def test_what_gradio_lets_through_is_refused_with_the_reason(generator):
    """Gradio checks a slider's bounds but lets NaN through (JSON from any client may carry it), and text with
    a lone surrogate (a JSON escape): both were tracebacks from the chat function, now answers saying why."""
    from medvl.serve.config import ImagePolicy
    from medvl.serve.webui import answer

    def reply(text: str, *settings: float) -> str:
        return list(answer(generator, ImagePolicy(), {"text": text, "files": []}, [], *settings))[-1]

    assert reply("What?", float("nan"), 0.0, 1.0) == (
        f"{REFUSED}max new tokens=nan: the generation settings must be numbers")
    assert reply("What?", 4, float("nan"), float("nan")) == (
        f"{REFUSED}temperature=nan, top-p=nan: the generation settings must be numbers")
    assert reply("What \ud800?", 4, 0.0, 1.0) == (
        f"{REFUSED}the question is not UTF-8 text (lone surrogate U+D800 at character 6)")


def test_without_a_login_only_loopback_host_names_are_answered(tiny_model_dir):
    """As `medvl serve`: a page the user visits cannot rebind its own name to 127.0.0.1 and drive the model
    (Gradio answered any Host); names given (a reverse proxy's) are answered too. With a login, the login
    guards the page, and it works."""
    import httpx
    from gradio_client import Client

    from medvl.serve.webui import launch

    port = _free_port()
    demo = launch(tiny_model_dir, port=port, block=False, allowed_hosts=["medvl.lan"])
    try:
        for host, status in [("evil.example", 400), (f"evil.example:{port}", 400), (f"127.0.0.1:{port}", 200),
                             (f"localhost:{port}", 200), ("medvl.lan", 200)]:
            assert httpx.get(f"http://127.0.0.1:{port}/config", headers={"Host": host}).status_code == status, host
    finally:
        demo.close()
    login, port = ("alice", "a-long-password-here"), _free_port()
    demo = launch(tiny_model_dir, port=port, block=False, auth=login)
    try:
        assert httpx.get(f"http://127.0.0.1:{port}/config", headers={"Host": "evil.example"}).status_code == 401
        with pytest.raises(ValueError, match="Could not login"):
            Client(demo.local_url, verbose=False, auth=("alice", "not-the-password!"))
        client = Client(demo.local_url, verbose=False, auth=login)
        assert client.predict({"text": "Hello", "files": []}, 4, 0.0, 1.0, api_name="/respond")
    finally:
        demo.close()
