"""The OpenAI-compatible API, driven by the official `openai` client against a real uvicorn server."""

from __future__ import annotations

import io
import json
import re
import threading
from collections import Counter

import httpx
import openai
import pytest
from PIL import Image
from serve_helpers import assert_openai_error, data_url, image_message, png_bytes, reference

from medvl.model.checkpoint import DISCLAIMER


def _images(*seeds: int) -> tuple[list[str], list[Image.Image]]:
    blobs = [png_bytes(seed) for seed in seeds]
    return [data_url(b) for b in blobs], [Image.open(io.BytesIO(b)).convert("RGB") for b in blobs]


def test_completion_matches_generate_and_carries_usage_and_disclaimer(serve, generator):
    urls, images = _images(0, 1)
    expected = reference(generator, "What is shown?", images, 12)
    with serve() as url:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
        assert [m.id for m in client.models.list().data] == ["tiny"]
        answer = client.chat.completions.create(model="tiny", messages=image_message("What is shown?", urls),
                                                max_tokens=12)
        health = httpx.get(f"{url}/health").json()
    assert answer.choices[0].message.content == expected
    assert answer.choices[0].finish_reason in ("stop", "length")
    assert answer.usage.completion_tokens <= 12 and answer.usage.prompt_tokens > 2 * 16  # two images' tokens
    assert answer.usage.total_tokens == answer.usage.prompt_tokens + answer.usage.completion_tokens
    assert answer.model_extra["medvl"]["disclaimer"] == DISCLAIMER
    assert health["status"] == "ok" and health["stats"]["generate_calls"] == 1


def test_streaming_chunks_join_to_the_answer(serve, generator):
    urls, images = _images(2)
    expected = reference(generator, "Describe.", images, 10)
    with serve() as url:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
        chunks = list(client.chat.completions.create(
            model="tiny", messages=image_message("Describe.", urls), max_completion_tokens=10, stream=True,
            stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[0].model_extra["medvl"]["disclaimer"] == DISCLAIMER
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.strip() == expected
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes in (["stop"], ["length"])
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens <= 10


def test_raw_sse_ends_with_done(serve):
    urls, _ = _images(3)
    body = {"model": "tiny", "messages": image_message("Hi", urls), "max_tokens": 4, "stream": True}
    with serve() as url:
        response = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=60)
    events = [line for line in response.text.split("\n\n") if line]
    assert response.headers["content-type"].startswith("text/event-stream")
    assert all(e.startswith("data: ") for e in events) and events[-1] == "data: [DONE]"


def test_stop_strings_cut_the_answer_streaming_and_not(serve, generator):
    expected = reference(generator, "Tell me.", [], 16)
    words = expected.split()
    assert len(words) >= 3, expected
    stop = words[2]
    cut = expected[: expected.index(stop)]
    messages = [{"role": "user", "content": "Tell me."}]
    with serve() as url:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
        plain = client.chat.completions.create(model="tiny", messages=messages, max_tokens=16, stop=[stop])
        streamed = client.chat.completions.create(model="tiny", messages=messages, max_tokens=16, stop=stop,
                                                  stream=True)
        streamed_text = "".join(c.choices[0].delta.content or "" for c in streamed if c.choices)
    assert plain.choices[0].message.content == cut and plain.choices[0].finish_reason == "stop"
    assert streamed_text == cut


def test_concurrent_requests_are_batched_and_each_gets_its_own_answer(serve, generator):
    questions = ["What is shown?", "Is there a fracture?", "Which organ?", "Describe the image in detail.",
                 "Any abnormality?", "What modality is this?"]
    urls, images = _images(*range(len(questions)))
    expected = [reference(generator, q, [img], 8) for q, img in zip(questions, images, strict=True)]
    answers: dict[int, str] = {}
    with serve(batch_wait_ms=300, max_batch_size=8) as url:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
        barrier = threading.Barrier(len(questions))

        def ask(i: int) -> None:
            barrier.wait()
            reply = client.chat.completions.create(model="tiny", messages=image_message(questions[i], [urls[i]]),
                                                   max_tokens=8)
            answers[i] = reply.choices[0].message.content

        threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(questions))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        stats = httpx.get(f"{url}/health").json()["stats"]
    assert [answers[i] for i in range(len(questions))] == expected
    assert stats["requests"] == len(questions)
    assert stats["generate_calls"] < len(questions) and stats["largest_batch"] > 1


def test_each_request_is_rendered_and_tokenised_once(serve, generator, monkeypatch):
    """Admission encodes the prompt to measure it; the engine answers from that encoding."""
    processor_class, calls = type(generator.processor), Counter()
    for name in ("apply_chat_template", "__call__"):
        def counted(self, *args, _name=name, _original=getattr(processor_class, name), **kwargs):
            calls[_name] += 1
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(processor_class, name, counted)
    urls, _ = _images(3)
    with serve() as url:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
        calls.clear()  # admission measured its image tokens at start-up
        client.chat.completions.create(model="tiny", messages=image_message("What is shown?", urls), max_tokens=4)
        assert calls == {"apply_chat_template": 1, "__call__": 1}
        calls.clear()
        chunks = client.chat.completions.create(model="tiny", messages=image_message("Which organ?", urls),
                                                max_tokens=4, stream=True)
        assert list(chunks) and calls == {"apply_chat_template": 1, "__call__": 1}


def test_system_prompt_and_disclaimer_note(serve, generator):
    with serve(system_prompt="You are a radiology assistant.", disclaimer_note=True) as url:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
        answer = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "Hi"}],
                                                max_tokens=6).choices[0].message.content
    messages = [{"role": "system", "content": "You are a radiology assistant."}, {"role": "user", "content": "Hi"}]
    plain = generator.generate([messages], [[]], generator.settings.model_copy(update={"max_new_tokens": 6}))
    assert answer == f"{plain[0].text}\n\n({DISCLAIMER})"


def test_a_system_prompt_that_leaves_no_room_is_refused_at_start(serve):
    """In the words and counts a request with that system message gets (its own wording counted the system
    prompt and the question together), naming the config key."""
    from medvl.config import ConfigError

    system = "You are a careful radiology assistant. " * 10
    with pytest.raises(ConfigError) as raised:
        with serve(system_prompt=system, limits={"max_prompt_tokens": 40}):
            pass
    found = re.fullmatch(r"system_prompt: the system prompt is too long: it takes (\d+) tokens, a one-word question "
                         r"\d+; the server allows 40 prompt tokens \(limits.max_prompt_tokens=40, the model's context "
                         r"512 less limits.default_max_tokens=256\); shorten it", str(raised.value))
    assert found, raised.value
    with serve(limits={"max_prompt_tokens": 40}) as url:  # a request with that system message: the same count
        body = {"model": "tiny", "messages": [{"role": "system", "content": system}, {"role": "user", "content": "Why?"}]}
        error = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=60).json()["error"]["message"]
    assert error.startswith(f"the system prompt is too long: it takes {found[1]} tokens, the other messages "), error
    with pytest.raises(ConfigError, match=r"^limits: a one-word question alone takes \d+ prompt tokens; the server "
                                          r"allows 3 prompt tokens .*; raise limits.max_prompt_tokens$"):
        with serve(system_prompt="Be brief.", limits={"max_prompt_tokens": 3}):
            pass  # the limits, not the system prompt, leave no room
    with serve(system_prompt="Be brief.", limits={"max_prompt_tokens": 40}):
        pass  # a short one starts


@pytest.mark.parametrize("body,status,code", [
    ({"model": "tiny", "messages": [{"role": "user", "content": "x"}], "n": 2}, 400, "unsupported_parameter"),
    ({"model": "tiny", "messages": [{"role": "user", "content": "x"}], "logprobs": True}, 400,
     "unsupported_parameter"),
    ({"model": "tiny", "messages": []}, 400, "invalid_request"),
    ({"model": "tiny", "messages": [{"role": "robot", "content": "x"}]}, 400, "invalid_request"),
    ({"model": "tiny", "messages": [{"role": "user", "content": "x"}], "temperature": 5}, 400, "invalid_request"),
    ({"model": "other", "messages": [{"role": "user", "content": "x"}]}, 404, "model_not_found"),
    ({"model": "tiny", "messages": [{"role": "assistant", "content": [
        {"type": "image_url", "image_url": {"url": "data:,"}}]}]}, 400, "invalid_value"),
])
def test_bad_requests_get_openai_errors(serve, body, status, code):
    with serve() as url:
        assert_openai_error(httpx.post(f"{url}/v1/chat/completions", json=body), status, code)
        assert_openai_error(httpx.get(f"{url}/v1/nowhere"), 404)


def test_text_that_is_not_utf8_is_a_400_naming_the_message(serve):
    # a lone surrogate sent as a JSON escape: the tokenizer's own TypeError text was the answer before
    bodies = [([{"role": "user", "content": "What \ud800?"}], "messages[0].content is not UTF-8 text "
               "(lone surrogate U+D800 at character 6)"),
              ([{"role": "system", "content": "ok"}, {"role": "user", "content": [{"type": "text", "text": "x\udcff"}]}],
               "messages[1].content is not UTF-8 text (byte 0xff at character 2)")]
    with serve() as url:
        for messages, message in bodies:
            body = json.dumps({"model": "tiny", "messages": messages})  # "\\ud800": the escape a client sends
            response = httpx.post(f"{url}/v1/chat/completions", content=body,
                                  headers={"Content-Type": "application/json"})
            error = assert_openai_error(response, 400, "invalid_value")
            assert error["message"] == message and error["param"] == message.split(" ")[0]


def test_openai_client_raises_typed_errors(serve):
    with serve() as url:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
        with pytest.raises(openai.BadRequestError) as caught:
            client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "x"}], n=3)
    assert caught.value.body["code"] == "unsupported_parameter"


def test_serve_command_merges_yaml_set_and_flags(tiny_model_dir, tmp_path, monkeypatch, medvl):
    from typer.testing import CliRunner

    import medvl.serve.server as server
    from medvl.cli import build_app

    seen = []
    monkeypatch.setattr(server, "serve", seen.append)
    config = tmp_path / "serve.yaml"
    config.write_text("port: 9001\nmax_batch_size: 4\nimages: {max_images: 3}\n")
    args = ["serve", str(tiny_model_dir), "--config", str(config), "--set", "limits.max_tokens=64",
            "--batch-wait-ms", "25", "--image-root", str(tmp_path), "--allow-image-host", "images.example.org",
            "--allow-host", "api.example.org"]
    result = CliRunner().invoke(build_app(), args)
    assert result.exit_code == 0, result.output
    (settings,) = seen
    assert (settings.engine.model, settings.port, settings.max_batch_size, settings.batch_wait_ms) == (
        str(tiny_model_dir), 9001, 4, 25.0)
    assert settings.limits.max_tokens == 64 and settings.images.max_images == 3
    assert settings.images.local_root == tmp_path and settings.images.allowed_hosts == ["images.example.org"]
    assert settings.allowed_hosts == ["api.example.org"]
    bad = medvl("serve", tiny_model_dir, "--set", "limits.max_tokenz=1")
    assert bad.code == 2 and "max_tokenz: unknown key" in bad.err
    bad = medvl("serve", tiny_model_dir, "--port", "70000")  # a flag's value is checked as an override's is
    assert bad.code == 2 and "port: Input should be less than or equal to 65535 (got 70000)" in bad.err
    # overrides are positional `key=value`, as every other command takes them (`--set` still works)
    positional = ["serve", str(tiny_model_dir), "limits.max_tokens=32", "port=9002", "--config", str(config)]
    assert CliRunner().invoke(build_app(), positional).exit_code == 0
    assert (seen[-1].limits.max_tokens, seen[-1].port, seen[-1].max_batch_size) == (32, 9002, 4)
