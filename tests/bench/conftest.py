"""`bench/run_all.py` and `bench/floors.py` as importable modules (bench/ is a folder of scripts)."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pytest

BENCH_DIR = Path(__file__).resolve().parents[2] / "bench"


def _bench_module(name: str):
    sys.path.insert(0, str(BENCH_DIR))  # as when run as a script: bench modules import their siblings
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(str(BENCH_DIR))


@pytest.fixture(scope="session")
def run_all():
    return _bench_module("run_all")


@pytest.fixture(scope="session")
def floors():
    return _bench_module("floors")


@pytest.fixture(scope="session")
def interleave():
    return _bench_module("interleave")


@pytest.fixture(scope="session")
def image_grounding():
    return _bench_module("image_grounding")


@pytest.fixture(scope="session")
def vqa_rad_image_prior():
    return _bench_module("vqa_rad_image_prior")
