"""Fixtures for serving tests: one Generator over the tiny model, real servers on 127.0.0.1 serving it
through the local engine (or any engine a test gives)."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator

import pytest

from medvl.engine.local import LocalEngine
from medvl.model.generate import Generator
from medvl.serve.config import ServeConfig
from medvl.serve.server import ServerThread


@pytest.fixture(scope="session")
def generator(tiny_model) -> Generator:
    return Generator(*tiny_model)


@pytest.fixture
def serve(generator):
    """`with serve(**config) as url:` a real uvicorn server in a thread (port chosen by the OS), serving
    `gen` (a generator) through the local engine, or `engine`."""

    @contextmanager
    def start(gen: Any = None, engine: Any = None, **fields: Any) -> Iterator[str]:
        fields.setdefault("api_key_env", None)
        config = ServeConfig(port=0, model_name="tiny", **fields)
        with ServerThread(engine or LocalEngine(gen or generator), config) as url:
            yield url

    return start
