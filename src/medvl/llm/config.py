"""`LLMConfig`: where to send chat requests, how fast, how persistently, and what they cost.

The API key is never part of a config: `api_key_env` names the environment variable holding it.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from medvl.config import Config

__all__ = ["LLMConfig"]


class LLMConfig(Config):
    """An OpenAI-compatible chat endpoint (OpenAI, Azure-compatible proxies, vLLM, medvl serve)."""

    base_url: str = "https://api.openai.com/v1"
    model: str
    api_key_env: str = "OPENAI_API_KEY"
    max_concurrency: int = Field(8, ge=1)
    requests_per_minute: float | None = Field(None, gt=0)
    # Estimated prompt tokens + max_tokens per request (see `medvl.llm.messages.estimate_prompt_tokens`).
    tokens_per_minute: float | None = Field(None, gt=0)
    timeout_s: float = Field(120, gt=0)
    max_retries: int = Field(6, ge=0)
    backoff_initial_s: float = Field(1.0, ge=0)
    backoff_max_s: float = Field(60.0, ge=0)
    # A 200 whose body is garbled (not JSON, no choices, no content) is re-sent this many times.
    bad_response_retries: int = Field(1, ge=0)
    cache_dir: str | None = None
    price_input_per_mtok: float = Field(0.0, ge=0)
    price_output_per_mtok: float = Field(0.0, ge=0)
    temperature: float = 0.0
    max_tokens: int = Field(1024, ge=1)
    # Newer OpenAI reasoning models accept only `max_completion_tokens`.
    max_tokens_field: Literal["max_tokens", "max_completion_tokens"] = "max_tokens"
    # Prompt tokens counted per image by `estimate` and the tokens-per-minute limiter
    # (765 = GPT-4o high detail for a 1024x1024 image; 85 for detail "low").
    image_token_estimate: int = Field(765, ge=0)
    extra_body: dict[str, Any] = Field(default_factory=dict)
