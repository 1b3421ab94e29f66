"""The benchmark registry: each release's module registers its loader, prompt and default scorer.

    @register_benchmark("vqa_rad")
    def load(root: Path, split: str = "test") -> BenchmarkData: ...

`load(root, split, **options)` reads the release's files as published; its keyword parameters are
the benchmark's options (`benchmark.options` in an eval config, `--option` on the command line).
`prompt` (default `prompts.default_prompt`) turns an item into the text it is asked with, and
`scorer` names the scorer an eval run uses unless its config names another (scorers live in
`medvl.eval.scorers`). Every module of `medvl.benchmarks` is imported the first time the registry
is read, so a new benchmark is one file there (plus its eval config in configs/eval/).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medvl.benchmarks.base import BenchmarkData, BenchmarkError, UnknownSplit, VQAItem
from medvl.benchmarks.prompts import PromptStyle, default_prompt
from medvl.registry import Registry

__all__ = ["BENCHMARKS", "Benchmark", "get_benchmark", "load_benchmark", "register_benchmark"]

Loader = Callable[..., BenchmarkData]
PromptBuilder = Callable[[VQAItem, PromptStyle], str]


@dataclass(frozen=True)
class Benchmark:
    """A registered benchmark: how to load it, how its items are asked, and its default scorer."""

    name: str
    load: Loader
    prompt: PromptBuilder = default_prompt
    scorer: str = "medvl"

    def options(self) -> list[str]:
        """The loader's options: its parameters besides `root` and `split`."""
        return [p for p in inspect.signature(self.load).parameters if p not in ("root", "split")]


BENCHMARKS: Registry[Benchmark] = Registry("benchmark", package="medvl.benchmarks", error=BenchmarkError)


def register_benchmark(name: str, *, prompt: PromptBuilder = default_prompt,
                       scorer: str = "medvl") -> Callable[[Loader], Loader]:
    """Decorate a benchmark's `load(root, split, **options)` to register it under `name`."""

    def add(load: Loader) -> Loader:
        BENCHMARKS.register(name, Benchmark(name, load, prompt, scorer))
        return load

    return add


def get_benchmark(name: str) -> Benchmark:
    """The registered benchmark; an unknown name is a `BenchmarkError` listing the known ones."""
    return BENCHMARKS.get(name)


def load_benchmark(name: str, root: str | Path, split: str = "test", **options: Any) -> BenchmarkData:
    """Load one split of a benchmark from local files; unknown names, splits or options, and a split with
    no question at all, are errors (`BenchmarkError`, a `UserError`). A loader that lists no `sources`
    read `root` itself when it is a file."""
    benchmark = get_benchmark(name)
    accepted = benchmark.options()
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise BenchmarkError(f"{name}: unknown option(s) {unknown}; accepted: {accepted or 'none'}")
    root = Path(root).expanduser()
    if not root.exists():
        raise BenchmarkError(f"{name}: {root} does not exist")
    try:
        data = benchmark.load(root, split, **options)
    except UnknownSplit as exc:
        raise BenchmarkError(f"{name} at {root}: {exc}") from None
    if not data.sources and root.is_file():
        data.sources = [str(root)]
    if not data.items and not data.rejects:
        chosen = f" with options {options}" if options else ""
        raise BenchmarkError(f"{name} [{split}]: no questions found in {root}{chosen}; check the split and options")
    return data
