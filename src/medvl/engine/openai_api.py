"""`openai`: any OpenAI-compatible server (vLLM's, GPT-4o, `medvl serve`) through `medvl.llm.client`.

Images go as JPEG data URLs (longest side `max_image_side`); temperature comes from the `llm`
section (0 by default), `max_tokens` from the generation settings, and a request's `seed` goes as
the API's `seed`. A request the endpoint fails (after the client's retries) gets a reply with
`error`; the others are answered. It answers a stream whole and cannot be served (no processor).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from medvl.config import ConfigError
from medvl.engine.base import Engine, EngineConfig, Reply, Request, register_engine, to_openai_messages

__all__ = ["OpenAIEngine"]


@register_engine("openai")
class OpenAIEngine(Engine):
    def __init__(self, config: EngineConfig, settings: Any):
        from medvl.llm.client import LLMClient

        if config.llm is None:
            raise ConfigError("backend.llm (base_url, model, ...) is required for the openai engine")
        self.client = LLMClient(config.llm)
        self.max_side = config.max_image_side
        self.max_tokens_field, self.settings = config.llm.max_tokens_field, settings

    def run(self, requests: Sequence[Request], settings: Any = None) -> list[Reply]:
        from medvl.llm.messages import ChatRequest, LLMError

        params = {self.max_tokens_field: (settings or self.settings).max_new_tokens}
        chat = [ChatRequest(to_openai_messages(r.messages, r.images, self.max_side),
                            params if r.seed is None else {**params, "seed": r.seed}) for r in requests]
        replies = []
        for result in self.client.run_many(chat, progress=False):
            if isinstance(result, LLMError):
                replies.append(Reply(None, finish_reason="error", error=str(result)))
            else:
                replies.append(Reply(result.text, result.usage.prompt_tokens, result.usage.completion_tokens,
                                     result.finish_reason))
        return replies
