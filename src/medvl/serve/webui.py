"""`medvl webui`: a Gradio chat page over a native medvl model.

One `gr.ChatInterface` in multimodal mode: several images per message (upload or drop),
multi-turn history (earlier images stay in the conversation), generation settings (max new
tokens, temperature — 0 is greedy —, top-p) and the research-only disclaimer above the chat.
The answer streams in. Uploads obey the same `ImagePolicy` as `medvl serve`: bytes per file
(Gradio's `max_file_size`), pixels per image (checked from the header), images per
conversation, and the shrink to `max_side`. Gradio hands the function its own history; `conversation_of_history`
turns it back into medvl messages plus images, whatever content shape Gradio uses (plain
strings, `{"path": ...}` file dicts, or typed `text`/`file` parts).

Bad input is answered with `REFUSED` and the reason, and logged as one line (a `gr.Error` would
print a traceback and leave Gradio's chat input disabled until the page is reloaded); the refused
exchange is left out of the history, so a bad upload does not spoil the conversation. Before
the model loads, `launch` checks what would otherwise fail inside Gradio with a traceback: a
login variable that is set but not `user:password`, an IPv6 address (Gradio cannot serve one), an
address that is not this machine's and a port already in use. Without a login (so on loopback), the
page answers only requests whose `Host` header is a loopback name, the address it listens on or a
name given in `allowed_hosts`, as `medvl serve` does: a web page the user visits cannot rebind its own
name to 127.0.0.1 and use the model (Gradio has no such check; with a login, the login is the guard).

Uploads are medical images: Gradio copies them into its cache folder, and by default keeps them
there for good. The page deletes its uploads older than `UPLOADS_KEPT_S` every hour and all of
them when it stops; SIGTERM stops it as Ctrl-C does (closing the server, so the uploads go).
"""

from __future__ import annotations

import logging
import math
import os
import signal
import threading
from contextlib import closing
from pathlib import Path
from typing import Any, Iterator, Sequence

from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware

from medvl.errors import UserError
from medvl.io.images import ImageLoadError, load_image
from medvl.model.checkpoint import DISCLAIMER
from medvl.model.generate import GenerationSettings, Generator, context_length, load_generator
from medvl.serve.config import (MIN_API_KEY_CHARS, ImagePolicy, UnsafeExposureError, check_listen_address,
                                is_loopback)
from medvl.serve.image_urls import shrink
from medvl.serve.session import (ContextOverflow, NotUtf8Text, check_answer_room, check_text, fit_context,
                                 sampling_settings, user_turn)

__all__ = ["REFUSED", "WebUIConfigError", "answer", "build_demo", "conversation_of_history", "launch", "login_from_env"]

log = logging.getLogger(__name__)
REFUSED = "Not answered: "  # the reply to bad input, followed by the reason
UPLOADS_KEPT_S = 24 * 3600  # an upload older than this is deleted (an open conversation needs its images)
TITLE = "medvl — medical vision-language assistant (research preview)"


class WebUIConfigError(UserError, ValueError):
    """A login variable or an IPv6 address the page cannot start with (the message says which)."""


def login_from_env(variable: str) -> tuple[str, str] | None:
    """(user, password) from the environment variable `variable`; None when it is unset or empty.
    Set to anything but `user:password` (both non-empty) is an error, not a page without a login; a
    password shorter than serve's API key minimum (`MIN_API_KEY_CHARS`) is refused like a short key."""
    value = os.environ.get(variable, "")
    if not value:
        return None
    user, sep, password = value.partition(":")
    if not (sep and user and password):
        raise WebUIConfigError(f"${variable} must be user:password (both non-empty); unset it to serve "
                               "without a login on 127.0.0.1")
    if len(password) < MIN_API_KEY_CHARS:
        raise WebUIConfigError(f"the password in ${variable} has {len(password)} characters; use at least "
                               f"{MIN_API_KEY_CHARS}, as for serve's API key (for example `openssl rand -hex 12`)")
    return user, password


def refuse_ipv6(host: str) -> None:
    """Gradio builds its URLs without brackets, so it cannot serve an IPv6 address (`medvl serve` can)."""
    if ":" in host:
        raise WebUIConfigError(f"the web UI cannot listen on the IPv6 address {host!r} (Gradio builds its URLs "
                               "without brackets); use 127.0.0.1, or 0.0.0.0 with a login")


class _Refused(ValueError):
    """A message the page does not answer; the reason becomes the reply."""


def _split_content(content: Any) -> tuple[list[str], list[str]]:
    """(texts, image paths) of one Gradio message's content, in order."""
    items = content if isinstance(content, (list, tuple)) else [content]
    texts: list[str] = []
    paths: list[str] = []
    for item in items:
        if isinstance(item, str):
            texts.append(item)
        elif isinstance(item, dict) and item.get("type") == "text":
            texts.append(str(item.get("text", "")))
        elif isinstance(item, dict) and item.get("type") == "file":
            paths.append(str(item["file"]["path"]))
        elif isinstance(item, dict) and "path" in item:
            paths.append(str(item["path"]))
    return texts, paths


def conversation_of_history(history: list[dict[str, Any]], message: dict[str, Any]
                            ) -> tuple[list[dict[str, Any]], list[str]]:
    """medvl messages and image paths from Gradio's history plus the new multimodal message.

    Gradio may split one user turn into several consecutive user messages (files, then text);
    they are merged back into one turn. An exchange the page refused (`REFUSED`) is left out.
    """
    messages: list[dict[str, Any]] = []
    paths: list[str] = []
    turn_texts: list[str] = []
    turn_paths: list[str] = []

    def close_user_turn() -> None:
        if turn_texts or turn_paths:
            messages.append(user_turn("\n".join(t for t in turn_texts if t), len(turn_paths)))
            paths.extend(turn_paths)
            turn_texts.clear()
            turn_paths.clear()

    for entry in history:
        texts, files = _split_content(entry.get("content"))
        if entry.get("role") == "user":
            turn_texts.extend(texts)
            turn_paths.extend(files)
        elif entry.get("role") == "assistant" and "\n".join(texts).startswith(REFUSED):
            turn_texts.clear()  # a refused exchange: its files may be what was wrong
            turn_paths.clear()
        elif entry.get("role") == "assistant":
            close_user_turn()
            messages.append({"role": "assistant", "content": "\n".join(texts)})
    turn_texts.append(message.get("text") or "")
    turn_paths.extend(f if isinstance(f, str) else str(f["path"]) for f in message.get("files") or [])
    close_user_turn()
    return messages, paths


def answer(generator: Generator, policy: ImagePolicy, message: dict[str, Any], history: list[dict[str, Any]],
           max_new_tokens: float, temperature: float, top_p: float) -> Iterator[str]:
    """The page's chat function: the answer so far, growing as it streams. Bad input is answered
    with `REFUSED` and the reason (and a log line), not an exception: after an error Gradio's chat
    input stays disabled until the page is reloaded. A refused exchange is left out of the history."""
    try:
        messages, images, settings = _prepared(generator, policy, message, history, max_new_tokens, temperature,
                                               top_p)
    except _Refused as exc:
        log.info("refused a message: %s", exc)
        yield f"{REFUSED}{exc}"
        return
    text = ""
    with closing(generator.stream(messages, images, settings)) as deltas:
        for delta in deltas:
            text += delta
            yield text
    if not text:
        yield "(the model returned an empty answer)"


def _prepared(generator: Generator, policy: ImagePolicy, message: dict[str, Any], history: list[dict[str, Any]],
              max_new_tokens: float, temperature: float, top_p: float
              ) -> tuple[list[dict[str, Any]], list[Any], GenerationSettings]:
    """(messages, images, settings) of the model call for `message` after `history` (`_Refused` for bad input)."""
    if not (message.get("text") or "").strip() and not message.get("files"):
        raise _Refused("type a question or attach an image")
    numbers = {"max new tokens": max_new_tokens, "temperature": temperature, "top-p": top_p}
    if bad := [f"{name}={value}" for name, value in numbers.items() if not math.isfinite(value)]:
        raise _Refused(f"{', '.join(bad)}: the generation settings must be numbers")  # Gradio lets NaN through
    try:
        check_text(message.get("text") or "", "the question")
    except NotUtf8Text as exc:
        raise _Refused(str(exc)) from None
    messages, paths = conversation_of_history(history, message)
    if len(paths) > policy.max_images:
        raise _Refused(f"{len(paths)} images in this conversation; the limit is {policy.max_images}")
    try:
        images = [shrink(load_image(p, max_pixels=policy.max_pixels), policy.max_side) for p in paths]
    except ImageLoadError as exc:
        raise _Refused(f"{Path(exc.path).name}: {exc.reason} ({exc.detail})") from None
    settings = sampling_settings(int(max_new_tokens), float(temperature), float(top_p))
    try:
        messages, images, _ = fit_context(generator, messages, images, settings.max_new_tokens)
    except ContextOverflow as exc:
        raise _Refused(str(exc)) from None
    return messages, images, settings


def build_demo(generator: Generator, default_max_new_tokens: int = 256, policy: ImagePolicy | None = None) -> Any:
    """The Gradio Blocks app (not launched; launch it with `max_file_size=policy.max_image_bytes`)."""
    import gradio as gr

    policy = policy or ImagePolicy()

    def respond(message: dict[str, Any], history: list[dict[str, Any]], max_new_tokens: float,
                temperature: float, top_p: float) -> Iterator[str]:
        yield from answer(generator, policy, message, history, max_new_tokens, temperature, top_p)

    most_tokens = min(max(1024, default_max_new_tokens), context_length(generator.model.config) - 1)  # room for a question
    settings_inputs = [
        gr.Slider(1, most_tokens, value=min(default_max_new_tokens, most_tokens), step=1, label="max new tokens"),
        gr.Slider(0.0, 2.0, value=0.0, step=0.05, label="temperature (0 = greedy)"),
        gr.Slider(0.05, 1.0, value=1.0, step=0.05, label="top-p"),
    ]
    textbox = gr.MultimodalTextbox(file_count="multiple", file_types=["image"], sources=["upload"],
                                   placeholder="Ask about the image(s)…", elem_id="medvl-input")
    return gr.ChatInterface(
        respond, multimodal=True, textbox=textbox, title=TITLE,
        description=f"**{DISCLAIMER}**", additional_inputs=settings_inputs,
        additional_inputs_accordion=gr.Accordion("Generation settings", open=False),
        chatbot=gr.Chatbot(elem_id="medvl-chat", height=480), concurrency_limit=1,
        analytics_enabled=False, flagging_mode="never", delete_cache=(3600, UPLOADS_KEPT_S),
    )


def launch(model_dir: str | Path, host: str = "127.0.0.1", port: int = 7860, dtype: str = "auto",
           device: str | None = None, max_new_tokens: int = 256, auth: tuple[str, str] | None = None,
           block: bool = True, policy: ImagePolicy | None = None, allowed_hosts: Sequence[str] = ()) -> Any:
    """Load the model and serve the page; `block=False` returns the running demo (tests).

    Like `medvl serve`, it refuses a non-loopback host without a login (`auth`), and it applies
    serve's image limits (`policy`, default `ImagePolicy()`). The address and port are checked
    before the model loads (`refuse_ipv6`, then serve's `check_listen_address`).
    """
    if not is_loopback(host) and auth is None:
        raise UnsafeExposureError(f"refusing to serve the web UI on {host!r} without a login: set "
                                  "user:password in the auth environment variable, or use 127.0.0.1")
    refuse_ipv6(host)
    check_listen_address(host, port)
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    policy = policy or ImagePolicy()
    generator = load_generator(model_dir, dtype=dtype, device=device)
    check_answer_room(generator, max_new_tokens)  # the slider's default must fit the context
    demo = build_demo(generator, max_new_tokens, policy)
    demo.queue(max_size=32)
    stop = _stop_signals() if block else None
    demo.launch(server_name=host, server_port=port, prevent_thread_lock=True, show_error=True,
                quiet=True, auth=auth, max_file_size=policy.max_image_bytes,  # Gradio's lines advise share=True
                app_kwargs={"middleware": _host_guard(host, auth, allowed_hosts)})
    log.info("serving the web UI for %s on http://%s:%d (login %s)", model_dir, host, port,
             "on" if auth else "off")
    if stop is not None:
        stop.wait()
        log.info("stopping the web UI")
        demo.close()
    return demo


def _host_guard(host: str, auth: tuple[str, str] | None, names: Sequence[str]) -> list[Middleware]:
    """Without a login: answer only `Host` names that are loopback, `host` or in `names` ('*': any; 400
    otherwise), against DNS rebinding. With a login, none: the login guards the page."""
    if auth is not None:
        return []
    return [Middleware(TrustedHostMiddleware, allowed_hosts=["localhost", "127.0.0.1", host, *names])]


def _stop_signals() -> threading.Event:
    """An event set by Ctrl-C or SIGTERM (from now on: one arriving while the server starts counts too)."""
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    return stop
