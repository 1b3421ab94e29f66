"""Helpers for the LLM client tests: fast client configs and one-line requests."""

from __future__ import annotations

from medvl.llm.config import LLMConfig
from medvl.llm.messages import ChatRequest
from medvl.llm.mock_server import MockServer, MockServerProcess


def fast_config(server: MockServer | MockServerProcess, **overrides) -> LLMConfig:
    """A config against `server` with short backoff and timeout, so retry tests take milliseconds."""
    values = {
        "model": "mock-model",
        "base_url": server.base_url,
        "backoff_initial_s": 0.01,
        "backoff_max_s": 2.0,
        "timeout_s": 5.0,
        "max_retries": 3,
    }
    return LLMConfig(**{**values, **overrides})


def ask(text: str, **params) -> ChatRequest:
    return ChatRequest([{"role": "user", "content": text}], params)
