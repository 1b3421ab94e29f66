"""Generation engines: one interface for everything that answers chat requests with images.

    engine = make_engine(EngineConfig(kind="local", model="runs/demo/finetune"), GenerationSettings())
    replies = engine.generate([Request(messages, images), ...])   # one Reply per request, in order

- `base`: `Request`, `Reply`, `Engine` (a batched `generate` whose failed batch is retried one
  request at a time, in this one place), `EngineConfig`, the `ENGINES` registry and `make_engine`.
- `local`: a saved native model through `medvl.model.generate.Generator` (batched, greedy by default).
- `openai_api`: any OpenAI-compatible server (vLLM's, GPT-4o, `medvl serve`) through `medvl.llm`.
- `vllm_offline`: vLLM's offline engine (`vllm.LLM.chat`), where vLLM is installed.

Evaluation asks its questions through an engine (`medvl.eval.backends`; its majority baseline is
an engine too). How to add one: docs/architecture.md.
"""

from medvl.engine.base import (
    ENGINES,
    Engine,
    EngineConfig,
    EngineNotServable,
    Reply,
    Request,
    check_servable,
    make_engine,
    register_engine,
)

__all__ = ["ENGINES", "Engine", "EngineConfig", "EngineNotServable", "Reply", "Request", "check_servable",
           "make_engine", "register_engine"]
