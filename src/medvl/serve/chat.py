"""`medvl chat`: a terminal REPL (rich) and a one-shot answer for scripts.

REPL: each line is a question; the answer streams token by token. Commands:
`/image PATH...` attaches images to the next question (several per turn; quote paths with
spaces), `/clear` forgets the conversation, `/help`, `/quit` (or end of input, or Ctrl-C at the
prompt). Ctrl-C while an answer streams stops that answer and returns to the prompt. Images from
earlier turns stay in the conversation, as do the answers. When the history outgrows the
model's context, the oldest exchanges are dropped, and the REPL says so. A question that cannot be
asked (too long on its own, not UTF-8) gets one line saying why; its attached images wait.
"""

from __future__ import annotations

import shlex
from contextlib import closing
from pathlib import Path
from typing import Sequence

from PIL import Image
from rich.console import Console
from rich.markup import escape
from rich.panel import Panel

from medvl.errors import UserError
from medvl.io.images import ImageLoadError, load_image
from medvl.model.checkpoint import DISCLAIMER
from medvl.serve.session import ChatSession

__all__ = ["HELP", "UnreadableImage", "one_shot", "read_images", "repl"]

HELP = """Commands:
  /image PATH [PATH...]  attach image(s) to your next question
  /clear                 forget the conversation and attached images
  /help                  show this help
  /quit                  leave (Ctrl-D works too)
Anything else is a question."""
COMMANDS = ("/image", "/clear", "/help", "/quit", "/exit")


class UnreadableImage(UserError, ValueError):
    """An image given to a one-shot question that cannot be read (the message names it and why)."""


def read_images(paths: Sequence[Path]) -> list[Image.Image]:
    """The images of a one-shot question, read before the model loads (`UnreadableImage` names the
    first that cannot be read, and why)."""
    try:
        return [load_image(path) for path in paths]
    except ImageLoadError as exc:
        raise UnreadableImage(str(exc)) from None


def one_shot(session: ChatSession, question: str, images: Sequence[Image.Image]) -> str:
    """Answer one question about `images` (`ContextOverflow` for a question too long for the model,
    `NotUtf8Text` for one that is not UTF-8)."""
    for image in images:
        session.attach(image)
    return session.ask(question)


def repl(session: ChatSession, images: Sequence[Path] = (), console: Console | None = None) -> None:
    """Run the chat loop until /quit or end of input."""
    console = console or Console(highlight=False)
    console.print(Panel(DISCLAIMER, title="medvl chat", border_style="yellow"))
    console.print(HELP, markup=False)
    _attach(session, [str(p) for p in images], console)
    dropped = session.dropped
    while True:
        try:
            line = console.input("[bold cyan]you[/]> ").strip()
        except (EOFError, KeyboardInterrupt):
            console.print()  # the prompt's line is left open: "bye" goes on a line of its own
            break
        if line.startswith("/"):
            if not _command(session, line, console):
                break
            continue
        if not line:
            continue
        console.print("[bold green]medvl[/]> ", end="")
        with closing(session.stream(line)) as answer:  # closed however the loop ends: the model stops at once
            try:
                for delta in answer:
                    console.print(delta, end="", markup=False)
            except UserError as exc:  # too long for the context, not UTF-8: not asked
                console.print(f"[red]not asked: {escape(str(exc))}[/]{_pending_note(session)}", soft_wrap=True)
                continue
            except KeyboardInterrupt:  # Ctrl-C while answering: stop this answer, keep the conversation
                console.print("\n[dim](stopped; this question is not kept, attached images stay attached)[/]")
                continue
        console.print()
        if session.dropped > dropped:
            console.print(f"[dim](dropped {session.dropped - dropped} oldest exchange(s) to fit the context)[/]")
            dropped = session.dropped
    console.print("bye")


def _command(session: ChatSession, line: str, console: Console) -> bool:
    """Run a /command; False means quit."""
    try:
        name, *args = shlex.split(line)
    except ValueError as exc:
        console.print(f"[red]cannot parse command: {escape(str(exc))}[/]")
        return True
    if name not in COMMANDS:
        console.print(f"[red]unknown command {escape(name)}[/] (try /help)")
    elif args and name != "/image":  # "/clear images" must not clear the conversation
        console.print(f"[red]{escape(name)} takes no arguments[/] (try /help)")
    elif name in ("/quit", "/exit"):
        return False
    elif name == "/clear":
        session.clear()
        console.print("conversation cleared")
    elif name == "/image" and not args:
        console.print("usage: /image PATH [PATH...]", markup=False)
    elif name == "/image":
        _attach(session, args, console)
    else:
        console.print(HELP, markup=False)
    return True


def _pending_note(session: ChatSession) -> str:
    """After a question that was not asked: the attached images wait for the next one (say how to drop them)."""
    if not session.pending:
        return ""
    count = len(session.pending)
    return f" [dim]({count} attached image(s) stay attached for the next question; /clear drops them)[/]"


def _attach(session: ChatSession, paths: Sequence[str], console: Console) -> None:
    for path in paths:
        try:
            session.attach(load_image(Path(path).expanduser()))
        except ImageLoadError as exc:
            console.print(f"[red]image not attached: {escape(str(exc))}[/]")
            continue
        console.print(f"attached {path} ({len(session.pending)} image(s) for the next question)", markup=False)
