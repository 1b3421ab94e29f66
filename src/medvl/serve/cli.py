"""`medvl chat`, `medvl serve` and `medvl webui` (heavy imports happen inside the commands).

A command that cannot go on raises a `medvl.errors.UserError`; the `medvl` entry point prints it
as one line and exits 2, as for every other command."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

ModelDir = typer.Argument(..., help="a saved native medvl model folder", exists=True, file_okay=False)


def chat(
    model_dir: Path = ModelDir,
    image: Optional[List[Path]] = typer.Option(
        None, "--image", "-i", help="image for the (first) question; repeatable"),
    question: Optional[str] = typer.Option(None, "--question", "-q", help="answer this one question and exit"),
    max_new_tokens: int = typer.Option(256, min=1),
    temperature: float = typer.Option(0.0, min=0.0, max=2.0, help="0 = greedy (reproducible)"),
    top_p: float = typer.Option(1.0, min=0.01, max=1.0),
    system: Optional[str] = typer.Option(None, help="system prompt"),
    dtype: str = typer.Option("auto", help="auto | float32 | bfloat16 | float16"),
    device: Optional[str] = typer.Option(None, help="e.g. cuda:0 (default: cpu)"),
) -> None:
    """Chat with a model in the terminal; with --question, print one answer (for scripts)."""
    from medvl.model.checkpoint import DISCLAIMER
    from medvl.model.generate import load_generator
    from medvl.serve.chat import one_shot, read_images, repl
    from medvl.serve.session import ChatSession, check_answer_room, check_text, sampling_settings

    if question is not None and not question.strip() and not image:
        raise typer.BadParameter("an empty question and no image: nothing to ask", param_hint="'--question'")
    for text, what in ((question, "--question"), (system, "--system")):  # bytes a terminal could not decode
        if text is not None:
            check_text(text, what)
    images = read_images(image or []) if question is not None else []  # a bad path before the model loads
    generator = load_generator(model_dir, dtype=dtype, device=device)
    check_answer_room(generator, max_new_tokens)  # before the first question, not at each one
    session = ChatSession(generator, sampling_settings(max_new_tokens, temperature, top_p), system)
    if question is None:
        repl(session, image or [])
        return
    answer = one_shot(session, question, images)
    typer.echo(DISCLAIMER, err=True)
    typer.echo(answer)


def serve(
    model_dir: Path = ModelDir,
    overrides: Optional[List[str]] = typer.Argument(
        None, help="key=value config overrides, as every command takes them (e.g. limits.max_tokens=512)"),
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="ServeConfig YAML", exists=True, dir_okay=False),
    host: Optional[str] = typer.Option(None, help="listen address (default 127.0.0.1; others need an API key)"),
    port: Optional[int] = typer.Option(None, help="listen port (default 8000)"),
    api_key_env: Optional[str] = typer.Option(
        None, help="environment variable holding the API key (default MEDVL_API_KEY)"),
    image_root: Optional[Path] = typer.Option(None, help="allow local image files under this folder"),
    allow_image_host: Optional[List[str]] = typer.Option(None, help="allow http(s) images from this host; repeatable"),
    allow_host: Optional[List[str]] = typer.Option(
        None, help="a name clients may use in the Host header besides loopback ones ('*': any); repeatable"),
    max_batch_size: Optional[int] = typer.Option(None, min=1, help="requests per generate call (1 = no batching)"),
    batch_wait_ms: Optional[float] = typer.Option(None, min=0.0, help="how long a batch waits to fill"),
    engine: Optional[str] = typer.Option(
        None, help="generation engine (engine.kind): local (default), or vllm where installed"),
    set_overrides: Optional[List[str]] = typer.Option(
        None, "--set", hidden=True, help="a key=value override (the older spelling of a positional one)"),
) -> None:
    """Serve the OpenAI chat-completions API (FastAPI + uvicorn) with dynamic batching."""
    from medvl.config import load_config
    from medvl.engine import check_servable
    from medvl.serve.config import ServeConfig
    from medvl.serve.server import check_exposure
    from medvl.serve.server import serve as run

    if engine is not None:
        check_servable(engine)  # one line naming the engines it can run, before any other check
    flags = {"engine.model": str(model_dir), "engine.kind": engine, "host": host, "port": port,
             "api_key_env": api_key_env, "max_batch_size": max_batch_size, "batch_wait_ms": batch_wait_ms,
             "images.local_root": image_root, "images.allowed_hosts": allow_image_host or None,
             "allowed_hosts": allow_host or None}  # checked with the file and overrides, as one config
    settings = load_config(ServeConfig, config, [*(set_overrides or []), *(overrides or [])],
                           {key: value for key, value in flags.items() if value is not None})
    check_exposure(settings)
    run(settings)


def webui(
    model_dir: Path = ModelDir,
    host: str = typer.Option("127.0.0.1", help="listen address (others need a login, see --auth-env)"),
    port: int = typer.Option(7860),
    auth_env: str = typer.Option("MEDVL_WEBUI_AUTH", help="environment variable holding user:password"),
    max_new_tokens: int = typer.Option(256, min=1, help="default of the settings slider"),
    allow_host: Optional[List[str]] = typer.Option(
        None, help="without a login: a name browsers may use in the Host header besides loopback ones "
        "(e.g. a reverse proxy's; '*': any); repeatable"),
    dtype: str = typer.Option("auto"),
    device: Optional[str] = typer.Option(None),
) -> None:
    """Serve a Gradio chat page (image uploads, multi-turn, generation settings)."""
    from medvl.serve.webui import launch, login_from_env

    auth = login_from_env(auth_env)
    launch(model_dir, host=host, port=port, dtype=dtype, device=device, max_new_tokens=max_new_tokens, auth=auth,
           allowed_hosts=allow_host or ())


def register(app: typer.Typer) -> None:
    app.command("chat")(chat)
    app.command("serve")(serve)
    app.command("webui")(webui)
