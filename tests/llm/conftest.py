"""Fixtures for the LLM client tests: a real mock OpenAI server on 127.0.0.1."""

from __future__ import annotations

import pytest

from medvl.llm.mock_server import MockServer


@pytest.fixture
def mock_server():
    """Start a `MockServer(**kwargs)`; every server started is stopped at the end of the test."""
    servers: list[MockServer] = []

    def start(**kwargs) -> MockServer:
        server = MockServer(**kwargs).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()
