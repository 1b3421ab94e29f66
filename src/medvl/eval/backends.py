"""Where answers come from: a local native model, an OpenAI-compatible endpoint, vLLM, or a baseline.

Every backend answers a batch of `Request`s (chat messages with `{"type": "image"}` parts plus the
decoded images) with one `Reply` each, in order; a failure on one request becomes that reply's
`error`, never an exception for the whole batch.

- `local`: `medvl.model.generate.Generator` — batched, left-padded, greedy by default.
- `openai`: any OpenAI-compatible server (vLLM's, GPT-4o, `medvl serve`) through
  `medvl.llm.client.LLMClient`; images go as JPEG data URLs (`image_part`, longest side
  `max_image_side`); temperature comes from the `llm` section (0 by default).
- `vllm`: vLLM's offline engine (`vllm.LLM.chat`), used only when vllm is installed. Thin on
  purpose and not exercised by the test suite (no GPU there): it sends the same OpenAI-style
  messages as `openai`, with greedy `SamplingParams`.
- `majority`: the majority-answer baseline, which answers from a table without looking at
  anything (see `medvl.eval.baselines`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from pydantic import Field

from medvl.config import Config
from medvl.benchmarks.base import VQAItem
from medvl.llm.config import LLMConfig

__all__ = ["Backend", "BackendConfig", "Reply", "Request", "make_backend", "to_openai_messages"]

log = logging.getLogger(__name__)


class BackendConfig(Config):
    kind: Literal["local", "openai", "vllm", "majority"] = "local"
    model: str | None = Field(None, description="local: a saved model folder; vllm: a folder or hub id")
    dtype: str = "auto"
    device: str | None = None
    llm: LLMConfig | None = Field(None, description="openai: the endpoint (base_url, model, api_key_env, ...)")
    max_image_side: int | None = Field(1024, ge=16, description="openai/vllm: longest image side sent")
    vllm_args: dict[str, Any] = Field(default_factory=dict, description="vllm: extra vllm.LLM(...) arguments")
    majority_split: str = Field("train", description="majority: the split whose answers are counted")

    def label(self) -> str:
        if self.kind == "openai" and self.llm is not None:
            return f"openai:{self.llm.model}"
        return f"{self.kind}:{self.model}" if self.model else self.kind


@dataclass
class Request:
    item: VQAItem
    messages: list[dict[str, Any]]
    images: list[Any]  # PIL images, in the order of the image parts


@dataclass
class Reply:
    text: str | None
    prompt_tokens: int | None = None
    new_tokens: int | None = None
    finish_reason: str = "stop"
    error: str | None = None


class Backend(Protocol):
    def generate(self, requests: Sequence[Request]) -> list[Reply]: ...


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


class LocalBackend:
    def __init__(self, config: BackendConfig, settings: Any):
        from medvl.model.generate import Generator

        if not config.model:
            raise ValueError("backend.model must name a saved model folder for the local backend")
        self.generator = Generator.from_pretrained(config.model, dtype=config.dtype, device=config.device,
                                                   settings=settings)

    def generate(self, requests: Sequence[Request]) -> list[Reply]:
        try:
            return self._run(requests)
        except Exception as exc:  # one bad request must not sink the batch: retry them one by one
            if len(requests) == 1:
                return [Reply(None, finish_reason="error", error=f"{type(exc).__name__}: {exc}")]
            log.warning("batch of %d failed (%s); retrying one at a time", len(requests), exc)
            return [reply for request in requests for reply in self.generate([request])]

    def _run(self, requests: Sequence[Request]) -> list[Reply]:
        results = self.generator.generate([r.messages for r in requests], [r.images for r in requests])
        return [Reply(r.text, r.prompt_tokens, r.new_tokens, r.finish_reason) for r in results]


class OpenAIBackend:
    def __init__(self, config: BackendConfig, settings: Any):
        from medvl.llm.client import LLMClient

        if config.llm is None:
            raise ValueError("backend.llm (base_url, model, ...) is required for the openai backend")
        self.client = LLMClient(config.llm)
        self.max_side = config.max_image_side
        self.params = {config.llm.max_tokens_field: settings.max_new_tokens}

    def generate(self, requests: Sequence[Request]) -> list[Reply]:
        from medvl.llm.messages import ChatRequest, LLMError

        chat = [ChatRequest(to_openai_messages(r.messages, r.images, self.max_side), self.params) for r in requests]
        replies = []
        for result in self.client.run_many(chat, progress=False):
            if isinstance(result, LLMError):
                replies.append(Reply(None, finish_reason="error", error=str(result)))
            else:
                replies.append(Reply(result.text, result.usage.prompt_tokens, result.usage.completion_tokens,
                                     result.finish_reason))
        return replies


class VLLMBackend:
    def __init__(self, config: BackendConfig, settings: Any):
        try:
            from vllm import LLM, SamplingParams
        except ImportError as exc:
            raise RuntimeError("the vllm backend needs vllm installed (pip install 'medvl[vllm]')") from exc
        self.engine = LLM(model=config.model, **config.vllm_args)
        self.params = SamplingParams(temperature=0.0, max_tokens=settings.max_new_tokens,
                                     repetition_penalty=settings.repetition_penalty, seed=settings.seed)
        self.max_side = config.max_image_side

    def generate(self, requests: Sequence[Request]) -> list[Reply]:
        conversations = [to_openai_messages(r.messages, r.images, self.max_side) for r in requests]
        outputs = self.engine.chat(conversations, self.params, use_tqdm=False)
        return [Reply(o.outputs[0].text.strip(), len(o.prompt_token_ids), len(o.outputs[0].token_ids),
                      o.outputs[0].finish_reason or "stop") for o in outputs]


def make_backend(config: BackendConfig, settings: Any, majority: dict[str, str] | None = None) -> Backend:
    """The backend named by `config.kind`; `majority` is the answer table of the majority baseline."""
    if config.kind == "majority":
        from medvl.eval.baselines import MajorityBackend

        if majority is None:
            raise ValueError("the majority backend needs its answer table")
        return MajorityBackend(majority)
    return {"local": LocalBackend, "openai": OpenAIBackend, "vllm": VLLMBackend}[config.kind](config, settings)
