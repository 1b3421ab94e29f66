"""The engine interface: `Request` in, `Reply` out, batched, one failure never sinking a batch.

A `Request` is one conversation in medvl's content parts (`{"type": "image"}` where each image
goes, as `medvl.records.to_messages` makes them) plus the decoded images in that order, and the
caller's own `item`, which engines pass by (baselines may read it). Three optional hooks serve
callers that share an engine between clients (a server): `seed`, the request's own sampling seed
(default: the generation settings' seed); `should_stop`, asked while the request waits and runs;
once it answers True the request ends with finish reason "cancelled"; and `inputs`, the prompt as
the engine's `processor` encoded it already (`medvl.model.generate.encode_prompts` of this one
conversation), which an engine that encodes with that processor uses instead of encoding again.

`Engine.generate(requests, settings)` answers a batch with one `Reply` per request, in order, all
with the same generation settings (None: the engine's own). An engine implements `run` for a whole
batch; `generate` does the rest, in this one place: requests already stopped are not started, and
when `run` raises, the batch is retried one request at a time, so only the request that fails gets
a reply with `error` set (a `UserError` — a setting to fix — is raised as it is).

`Engine.stream(request, settings)` gives one answer's text as it is made (a `ReplyStream`); an
engine that cannot stream answers whole, as one delta. An engine that can be served (`medvl serve`)
also sets `processor` (the model's processor: the server measures prompts with it before they are
queued) and `context_length`.

Engines are registered by name (`@register_engine("local")` on a class, or a function, taking
`(EngineConfig, GenerationSettings)`; `servable=True` for one `medvl serve` may run);
`make_engine(config, settings)` builds the one `config.kind` names, `check_servable(kind)` refuses
a kind the server cannot run, naming those it can.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import Field, field_validator

from medvl.config import Config
from medvl.errors import UserError
from medvl.llm.config import LLMConfig
from medvl.registry import Registry

if TYPE_CHECKING:
    from medvl.model.generate import GenerationSettings

__all__ = ["ENGINES", "Engine", "EngineConfig", "EngineFailed", "EngineNotServable", "Reply", "ReplyStream",
           "Request", "check_servable", "make_engine", "register_engine", "servable_engines", "to_openai_messages"]

log = logging.getLogger(__name__)


@dataclass
class Request:
    messages: list[dict[str, Any]]
    images: list[Any] = field(default_factory=list)  # decoded PIL images, in the order of the image parts
    item: Any = None  # the caller's own (evaluation: the benchmark item); engines pass it by
    seed: int | None = None  # this request's sampling seed (None: the generation settings' seed)
    should_stop: Callable[[], bool] | None = None  # True once the request is no longer wanted
    inputs: Any = None  # the prompt already encoded by the engine's processor (None: the engine encodes it)

    def stopped(self) -> bool:
        return self.should_stop is not None and self.should_stop()


@dataclass
class Reply:
    text: str | None
    prompt_tokens: int | None = None
    new_tokens: int | None = None
    finish_reason: str = "stop"  # "stop", "length", "cancelled" (its should_stop said so), or "error"
    error: str | None = None

    @classmethod
    def failed(cls, exc: BaseException) -> "Reply":
        return cls(None, finish_reason="error", error=f"{type(exc).__name__}: {exc}")


class ReplyStream:
    """The text deltas of one answer (iterate once); `reply` is its `Reply` once the loop has ended."""

    def __init__(self, deltas: Iterator[str], reply: Callable[[], Reply | None]):
        self._deltas, self._reply = deltas, reply

    def __iter__(self) -> Iterator[str]:
        return self._deltas

    @property
    def reply(self) -> Reply | None:
        return self._reply()


class Engine(ABC):
    """Answers batches of requests; subclasses implement `run` (and may implement `stream`)."""

    processor: Any = None  # set by engines that can be served (see the module notes)
    context_length: int | None = None

    def generate(self, requests: Sequence[Request], settings: GenerationSettings | None = None) -> list[Reply]:
        """One reply per request, in order (see the module notes: stopped requests, the one-by-one retry)."""
        replies: list[Reply | None] = [Reply(None, finish_reason="cancelled") if r.stopped() else None
                                       for r in requests]
        todo = [index for index, reply in enumerate(replies) if reply is None]
        for index, reply in zip(todo, self._answer([requests[i] for i in todo], settings) if todo else []):
            replies[index] = reply
        return replies  # type: ignore[return-value]

    def stream(self, request: Request, settings: GenerationSettings | None = None) -> ReplyStream:
        """One answer's text as it is made; this default answers whole (one delta) through `generate`.
        A failed answer raises `EngineFailed` from the loop."""
        answered: list[Reply] = []

        def deltas() -> Iterator[str]:
            reply = self.generate([request], settings)[0]
            if reply.error is not None:
                raise EngineFailed(reply.error)
            answered.append(reply)
            if reply.text:
                yield reply.text

        return ReplyStream(deltas(), lambda: answered[0] if answered else None)

    def _answer(self, requests: list[Request], settings: GenerationSettings | None) -> list[Reply]:
        try:
            return self.run(requests, settings)
        except UserError:
            raise
        except Exception as exc:
            if len(requests) == 1:
                return [Reply.failed(exc)]
            log.warning("batch of %d failed (%s); retrying one at a time", len(requests), exc)
            return [reply for request in requests for reply in self.generate([request], settings)]

    @abstractmethod
    def run(self, requests: Sequence[Request], settings: GenerationSettings | None = None) -> list[Reply]:
        """Answer a whole batch, one reply per request in order (may raise: `generate` then retries)."""


class EngineFailed(RuntimeError):
    """A streamed answer failed (its `Reply.error`)."""


class EngineNotServable(UserError, ValueError):
    """`medvl serve` was given an engine it cannot run (one without the model's processor)."""


EngineFactory = Callable[["EngineConfig", "GenerationSettings"], Engine]
ENGINES: Registry[EngineFactory] = Registry("engine", package="medvl.engine")
_SERVABLE: set[str] = set()


def register_engine(name: str, servable: bool = False) -> Callable[[EngineFactory], EngineFactory]:
    """Decorate an `Engine` class (or a function) that takes `(EngineConfig, GenerationSettings)`;
    `servable`: its engines set `processor` and `context_length`, so `medvl serve` may run it."""
    if servable:
        _SERVABLE.add(name)
    return ENGINES.register(name)


def servable_engines() -> list[str]:
    """The registered engines `medvl serve` can run."""
    return [name for name in ENGINES.names() if name in _SERVABLE]


def check_servable(kind: str) -> str:
    """`kind`, when `medvl serve` can run it; else one line naming the engines it can."""
    served = servable_engines()
    if kind not in served:
        what = "cannot be served (it has no model processor)" if kind in ENGINES else "is not a known engine"
        raise EngineNotServable(f"engine {kind!r} {what}; medvl serve runs: {', '.join(served)}")
    return kind


class EngineConfig(Config):
    """Which engine answers, and what it needs (`medvl.engine.base` lists the kinds)."""

    kind: str = Field("local", description="a registered engine: local, openai, vllm")
    model: str | None = Field(None, description="local: a saved model folder; vllm: a folder or hub id")
    dtype: str = "auto"
    device: str | None = None
    llm: LLMConfig | None = Field(None, description="openai: the endpoint (base_url, model, api_key_env, ...)")
    max_image_side: int | None = Field(1024, ge=16, description="openai/vllm: longest image side sent")
    vllm_args: dict[str, Any] = Field(default_factory=dict, description="vllm: extra vllm.LLM(...) arguments")

    # kinds a caller handles itself besides the registered engines (eval: its majority baseline)
    other_kinds: ClassVar[tuple[str, ...]] = ()

    @field_validator("kind")
    @classmethod
    def _registered(cls, kind: str) -> str:
        return ENGINES.check(kind, *cls.other_kinds)

    def label(self) -> str:
        if self.kind == "openai" and self.llm is not None:
            return f"openai:{self.llm.model}"
        return f"{self.kind}:{self.model}" if self.model else self.kind


def make_engine(config: EngineConfig, settings: "GenerationSettings") -> Engine:
    """The engine `config.kind` names, built from its settings."""
    return ENGINES.get(config.kind)(config, settings)


def to_openai_messages(messages: list[dict[str, Any]], images: Sequence[Any], max_side: int | None) -> list[dict]:
    """medvl content parts → OpenAI parts, each `{"type": "image"}` replaced by a data-URL image part."""
    from medvl.llm.messages import image_part

    queue = iter(images)
    converted = []
    for message in messages:
        content = message["content"]
        if not isinstance(content, str):
            content = [image_part(next(queue), max_side) if p["type"] == "image" else p for p in content]
        converted.append({"role": message["role"], "content": content})
    return converted
