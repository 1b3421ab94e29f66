"""`vllm`: vLLM's offline engine (`vllm.LLM.chat`), used only where vllm is installed.

Thin on purpose: it sends the same OpenAI-style messages as `openai`, with one `SamplingParams` per
request (the generation settings' token limit, repetition penalty and, when they sample,
temperature and top-p — greedy otherwise; the request's seed, else the settings'). It answers a
stream whole (vLLM's offline engine does not stream) and cannot cut a running batch short. Given a
local model folder it can be served (`medvl serve --engine vllm`): the server measures prompts with
that folder's processor against the context length vLLM enforces (its `max_model_len`, whatever
`vllm_args` or the model's config say). A local folder that fails medvl's vLLM config check
(`medvl.model.vllm_compat`) is refused before vLLM starts, in one line listing the problems. The CPU
test suite runs it against a stand-in `vllm` module.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from medvl.engine.base import Engine, EngineConfig, Reply, Request, register_engine, to_openai_messages
from medvl.errors import UserError

__all__ = ["VLLMEngine", "VLLMMissing", "VLLMUnfit"]


class VLLMMissing(UserError, RuntimeError):
    """The vllm engine was asked for where vllm is not installed."""


class VLLMUnfit(UserError, ValueError):
    """A local model folder vLLM would not load (the message lists why)."""


@register_engine("vllm", servable=True)
class VLLMEngine(Engine):
    def __init__(self, config: EngineConfig, settings: Any):
        try:
            from vllm import LLM, SamplingParams
        except ImportError as exc:
            raise VLLMMissing("the vllm engine needs vllm installed (pip install 'medvl[vllm]'); "
                              "use the local engine here") from exc
        from medvl.model.checkpoint import load_saved_processor
        from medvl.model.vllm_compat import vllm_problems

        local = bool(config.model) and Path(config.model).is_dir()
        if local and (problems := vllm_problems(config.model)):
            raise VLLMUnfit(f"{config.model}: vLLM cannot load this folder ({'; '.join(problems)}); give "
                            "a folder that `medvl train`, `medvl build` or `medvl convert` saved, or use the "
                            "local engine")
        self.engine = LLM(model=config.model, **config.vllm_args)
        self.sampling = SamplingParams
        self.settings = settings
        self.max_side = config.max_image_side
        self.context_length = self.engine.llm_engine.model_config.max_model_len  # what vLLM enforces
        if local:
            self.processor = load_saved_processor(config.model)

    def run(self, requests: Sequence[Request], settings: Any = None) -> list[Reply]:
        settings = settings or self.settings
        conversations = [to_openai_messages(r.messages, r.images, self.max_side) for r in requests]
        sampling = ({"temperature": settings.temperature, "top_p": settings.top_p} if settings.do_sample
                    else {"temperature": 0.0})
        params = [self.sampling(**sampling, max_tokens=settings.max_new_tokens,
                                repetition_penalty=settings.repetition_penalty,
                                seed=settings.seed if r.seed is None else r.seed) for r in requests]
        outputs = self.engine.chat(conversations, params, use_tqdm=False)
        return [Reply(o.outputs[0].text.strip(), len(o.prompt_token_ids), len(o.outputs[0].token_ids),
                      o.outputs[0].finish_reason or "stop") for o in outputs]
