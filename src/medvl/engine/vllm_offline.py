"""`vllm`: vLLM's offline engine (`vllm.LLM.chat`), used only where vllm is installed.

Thin on purpose: it sends the same OpenAI-style messages as `openai`, with greedy `SamplingParams`
per request (the generation settings' token limit and repetition penalty; the request's seed, else
the settings'). The CPU test suite runs it against a stand-in `vllm` module.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from medvl.engine.base import Engine, EngineConfig, Reply, Request, register_engine, to_openai_messages
from medvl.errors import UserError

__all__ = ["VLLMEngine"]


class VLLMMissing(UserError, RuntimeError):
    """The vllm engine was asked for where vllm is not installed."""


@register_engine("vllm")
class VLLMEngine(Engine):
    def __init__(self, config: EngineConfig, settings: Any):
        try:
            from vllm import LLM, SamplingParams
        except ImportError as exc:
            raise VLLMMissing("the vllm engine needs vllm installed (pip install 'medvl[vllm]')") from exc
        self.engine = LLM(model=config.model, **config.vllm_args)
        self.sampling = SamplingParams
        self.settings = settings
        self.max_side = config.max_image_side

    def run(self, requests: Sequence[Request]) -> list[Reply]:
        conversations = [to_openai_messages(r.messages, r.images, self.max_side) for r in requests]
        settings = self.settings
        params = [self.sampling(temperature=0.0, max_tokens=settings.max_new_tokens,
                                repetition_penalty=settings.repetition_penalty,
                                seed=settings.seed if r.seed is None else r.seed) for r in requests]
        outputs = self.engine.chat(conversations, params, use_tqdm=False)
        return [Reply(o.outputs[0].text.strip(), len(o.prompt_token_ids), len(o.outputs[0].token_ids),
                      o.outputs[0].finish_reason or "stop") for o in outputs]
