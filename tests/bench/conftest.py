"""`bench/run_all.py` and `bench/floors.py` as importable modules (bench/ is a folder of scripts)."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pytest

BENCH_DIR = Path(__file__).resolve().parents[2] / "bench"


@pytest.fixture(scope="session")
def run_all():
    sys.path.insert(0, str(BENCH_DIR))  # as when run as a script: run_all imports floors from its folder
    try:
        yield importlib.import_module("run_all")
    finally:
        sys.path.remove(str(BENCH_DIR))


@pytest.fixture(scope="session")
def floors(run_all):
    sys.path.insert(0, str(BENCH_DIR))
    try:
        yield importlib.import_module("floors")
    finally:
        sys.path.remove(str(BENCH_DIR))
