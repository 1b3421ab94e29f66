"""Fixtures for serving tests: one Generator over the tiny model, real servers on 127.0.0.1."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator

import pytest

from medvl.model.generate import Generator
from medvl.serve.config import ServeConfig
from medvl.serve.server import ServerThread


@pytest.fixture(scope="session")
def generator(tiny_model) -> Generator:
    return Generator(*tiny_model)


@pytest.fixture
def serve(generator):
    """`with serve(**config) as url:` a real uvicorn server in a thread (port chosen by the OS)."""

    @contextmanager
    def start(gen: Any = None, **fields: Any) -> Iterator[str]:
        fields.setdefault("api_key_env", None)
        config = ServeConfig(port=0, model_name="tiny", **fields)
        with ServerThread(gen or generator, config) as url:
            yield url

    return start
