"""`local`: a saved native model answering in batches through `medvl.model.generate.Generator`
(left-padded, grouped by length, greedy unless the generation settings sample). Each request's
`seed` seeds its own sampling, its `should_stop` ends its row at the next token, and its `inputs`
(the server's admission encoded it) are used as they are. It streams
token by token (`Generator.stream`) and can be served: `processor` and `context_length` are the
model's."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from medvl.config import ConfigError
from medvl.engine.base import Engine, EngineConfig, Reply, ReplyStream, Request, register_engine

__all__ = ["LocalEngine"]


def _reply(result: Any) -> Reply:
    return Reply(result.text, result.prompt_tokens, result.new_tokens, result.finish_reason)


class LocalEngine(Engine):
    """An engine around a loaded `Generator` (`medvl chat`, tests) or, by name, a model folder."""

    def __init__(self, generator: Any):
        from medvl.model.generate import context_length

        self.generator = generator
        self.processor = generator.processor
        self.context_length = context_length(generator.model.config)

    def run(self, requests: Sequence[Request], settings: Any = None) -> list[Reply]:
        settings = settings or self.generator.settings
        results = self.generator.generate(
            [r.messages for r in requests], [r.images for r in requests], settings,
            seeds=[settings.seed if r.seed is None else r.seed for r in requests],
            should_stop=[r.should_stop for r in requests], inputs=[r.inputs for r in requests])
        return [_reply(result) for result in results]

    def stream(self, request: Request, settings: Any = None) -> ReplyStream:
        stream = self.generator.stream(request.messages, request.images, settings, seed=request.seed,
                                       should_stop=request.should_stop, inputs=request.inputs)
        return ReplyStream(iter(stream), lambda: None if stream.result is None else _reply(stream.result))


@register_engine("local", servable=True)
def local_engine(config: EngineConfig, settings: Any) -> LocalEngine:
    """The saved model folder `config.model`, loaded (a folder that is not one: one line, `load_model`)."""
    from medvl.model.generate import load_generator

    if not config.model:
        raise ConfigError("backend.model must name a saved model folder for the local engine")
    generator = load_generator(config.model, dtype=config.dtype, device=config.device, settings=settings)
    return LocalEngine(generator)
