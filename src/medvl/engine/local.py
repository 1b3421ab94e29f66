"""`local`: a saved native model answering in batches through `medvl.model.generate.Generator`
(left-padded, grouped by length, greedy unless the generation settings sample). Each request's
`seed` seeds its own sampling, and its `should_stop` ends its row at the next token."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from medvl.config import ConfigError
from medvl.engine.base import Engine, EngineConfig, Reply, Request, register_engine

__all__ = ["LocalEngine"]


@register_engine("local")
class LocalEngine(Engine):
    def __init__(self, config: EngineConfig, settings: Any):
        from medvl.model.generate import Generator

        if not config.model:
            raise ConfigError("backend.model must name a saved model folder for the local engine")
        self.generator = Generator.from_pretrained(config.model, dtype=config.dtype, device=config.device,
                                                   settings=settings)

    def run(self, requests: Sequence[Request]) -> list[Reply]:
        default = self.generator.settings.seed
        results = self.generator.generate([r.messages for r in requests], [r.images for r in requests],
                                          seeds=[default if r.seed is None else r.seed for r in requests],
                                          should_stop=[r.should_stop for r in requests])
        return [Reply(r.text, r.prompt_tokens, r.new_tokens, r.finish_reason) for r in results]
