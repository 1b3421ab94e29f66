"""`LLMConfig`: where to send chat requests, how fast, how persistently, and what they cost.

The API key is never part of a config: `api_key_env` names the environment variable holding it.
Fields marked runtime (`LLMConfig.runtime_fields()`) change speed, retries, caching or cost
accounting, never what a reply says: a run that fingerprints its LLM settings leaves them out, so
changing them resumes the run instead of starting over.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from medvl.config import Config

__all__ = ["LLMConfig"]


def _runtime(default: Any, **constraints: Any) -> Any:
    """A field that cannot change a reply (see the module notes)."""
    return Field(default, json_schema_extra={"runtime": True}, **constraints)


class LLMConfig(Config):
    """An OpenAI-compatible chat endpoint (OpenAI, Azure-compatible proxies, vLLM, medvl serve)."""

    base_url: str = "https://api.openai.com/v1"
    model: str
    api_key_env: str = _runtime("OPENAI_API_KEY")
    max_concurrency: int = _runtime(8, ge=1)
    requests_per_minute: float | None = _runtime(None, gt=0)
    # Estimated prompt tokens + max_tokens per request (see `medvl.llm.messages.estimate_prompt_tokens`).
    tokens_per_minute: float | None = _runtime(None, gt=0)
    timeout_s: float = _runtime(120, gt=0)  # per attempt; connecting gets half of it
    max_retries: int = _runtime(6, ge=0)
    backoff_initial_s: float = _runtime(1.0, ge=0)
    backoff_max_s: float = _runtime(60.0, ge=0)
    # A 200 whose body is garbled (not JSON, no choices, no content) is re-sent this many times.
    bad_response_retries: int = _runtime(1, ge=0)
    cache_dir: str | None = _runtime(None)
    price_input_per_mtok: float = _runtime(0.0, ge=0)
    price_output_per_mtok: float = _runtime(0.0, ge=0)
    temperature: float = 0.0
    max_tokens: int = Field(1024, ge=1)
    # Newer OpenAI reasoning models accept only `max_completion_tokens`.
    max_tokens_field: Literal["max_tokens", "max_completion_tokens"] = "max_tokens"
    # Prompt tokens counted per image by `estimate` and the tokens-per-minute limiter
    # (765 = GPT-4o high detail for a 1024x1024 image; 85 for detail "low").
    image_token_estimate: int = _runtime(765, ge=0)
    extra_body: dict[str, Any] = Field(default_factory=dict)

    @property
    def connect_timeout_s(self) -> float:
        """Half of `timeout_s`: a connect timeout is told from a slow reply (unreachable endpoints, `llm.failures`)."""
        return self.timeout_s / 2

    def cached_in(self, folder: str | Path) -> "LLMConfig":
        """This config, its replies cached in `folder` unless `cache_dir` already says where: what a
        job's own work folder gives, so that a rerun pays for nothing it already received."""
        return self if self.cache_dir is not None else self.model_copy(update={"cache_dir": str(folder)})

    @classmethod
    def runtime_fields(cls) -> frozenset[str]:
        """The fields that change speed, retries, caching or cost accounting, never a reply."""
        return frozenset(name for name, field in cls.model_fields.items()
                         if isinstance(field.json_schema_extra, dict) and field.json_schema_extra.get("runtime"))
