"""The benchmark registry: each release's module registers its loader, prompt and default scorer.

    @register_benchmark("vqa_rad", locate=locate, check=check)
    def load(root: Path, split: str = "test") -> BenchmarkData: ...

`load(root, split, **options)` reads the release's files as published; its keyword parameters are
the benchmark's options (`benchmark.options` in an eval config, `--option` on the command line).
`locate(root, split, ...)` (optional; the loader calls it first) finds the split's question files
without reading them and raises what the loader would for a missing file, an unknown split or option
value: its parameters after `split` are the options it needs, given as the loader would get them
(`locate_benchmark`).
`check(files, ...)` (optional, with `locate`) reads the question files `locate` found, not their images,
and raises what a load would fail on in them: a file not of its format, an option value none of its
rows has, a split none of whose rows the loader can ask (`benchmarks.checks`); its parameters after
`files` are the loader's, `split` being the release's own name for it. `check_benchmark` runs
`locate_benchmark`, then `check`: `medvl launch` runs it before any process starts (docs/evaluation.md).
`prompt` (default `prompts.default_prompt`) turns an item into the text it is asked with, and
`scorer` names the scorer an eval run uses unless its config names another (scorers live in
`medvl.eval.scorers`). Every module of `medvl.benchmarks` is imported the first time the registry
is read, so a new benchmark is one file there (plus its eval config in configs/eval/).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medvl.benchmarks.base import BenchmarkData, BenchmarkError, Located, UnknownSplit, VQAItem
from medvl.benchmarks.prompts import PromptStyle, default_prompt
from medvl.registry import Registry

__all__ = [
    "BENCHMARKS",
    "Benchmark",
    "check_benchmark",
    "get_benchmark",
    "load_benchmark",
    "locate_benchmark",
    "register_benchmark",
]

Loader = Callable[..., BenchmarkData]
Locator = Callable[..., Located]
Checker = Callable[..., None]
PromptBuilder = Callable[[VQAItem, PromptStyle], str]


@dataclass(frozen=True)
class Benchmark:
    """A registered benchmark: how to load it (and find and check its files), how its items are asked, its scorer."""

    name: str
    load: Loader
    prompt: PromptBuilder = default_prompt
    scorer: str = "medvl"
    locate: Locator | None = None
    check: Checker | None = None

    def options(self) -> list[str]:
        """The loader's options: its parameters besides `root` and `split`."""
        return [p for p in inspect.signature(self.load).parameters if p not in ("root", "split")]


BENCHMARKS: Registry[Benchmark] = Registry("benchmark", package="medvl.benchmarks", error=BenchmarkError)


def register_benchmark(name: str, *, prompt: PromptBuilder = default_prompt, scorer: str = "medvl",
                       locate: Locator | None = None, check: Checker | None = None) -> Callable[[Loader], Loader]:
    """Decorate a benchmark's `load(root, split, **options)` to register it under `name`."""

    def add(load: Loader) -> Loader:
        BENCHMARKS.register(name, Benchmark(name, load, prompt, scorer, locate, check))
        return load

    return add


def get_benchmark(name: str) -> Benchmark:
    """The registered benchmark; an unknown name is a `BenchmarkError` listing the known ones."""
    return BENCHMARKS.get(name)


def load_benchmark(name: str, root: str | Path, split: str = "test", **options: Any) -> BenchmarkData:
    """Load one split of a benchmark from local files; unknown names, splits or options, and a split with
    no question at all, are errors (`BenchmarkError`, a `UserError`). A loader that lists no `sources`
    read `root` itself when it is a file."""
    benchmark, root = _release(name, root, options)
    with _split_named(name, root):
        data = benchmark.load(root, split, **options)
    if not data.sources and root.is_file():
        data.sources = [str(root)]
    if not data.items and not data.rejects:
        chosen = f" with options {options}" if options else ""
        raise BenchmarkError(f"{name} [{split}]: no questions found in {root}{chosen}; check the split and options")
    return data


def locate_benchmark(name: str, root: str | Path, split: str = "test", **options: Any) -> Located | None:
    """What `load_benchmark` would refuse before reading a question (an unknown name, option, split or option
    value, a root or question file that is not there), raised the same way, without reading any; the split's
    question files, or None for a benchmark registered without `locate` (only its root is checked)."""
    benchmark, root = _release(name, root, options)
    if benchmark.locate is None:
        return None
    with _split_named(name, root):
        return _call(benchmark.locate, _loader_arguments(benchmark, root, split, options))


def check_benchmark(name: str, root: str | Path, split: str = "test", **options: Any) -> Located | None:
    """What `load_benchmark` would refuse, found without reading an image: what `locate_benchmark` refuses,
    then what the benchmark's `check` finds in the question files (module notes), raised the same way; the
    split's question files, or None for a benchmark registered without `locate`. One without `check` gets
    `locate_benchmark`'s checks alone."""
    located = locate_benchmark(name, root, split, **options)
    benchmark = get_benchmark(name)
    if located is not None and benchmark.check is not None:
        arguments = _loader_arguments(benchmark, Path(root).expanduser(), split, options)
        _call(benchmark.check, {**arguments, "split": located.split, "files": located.files})
    return located


def _loader_arguments(benchmark: Benchmark, root: Path, split: str, options: dict[str, Any]) -> dict[str, Any]:
    """The loader's arguments by name, its defaults filled in: a hook's options come as the loader gets them."""
    given = inspect.signature(benchmark.load).bind(root, split, **options)
    given.apply_defaults()
    return dict(given.arguments)


def _call(hook: Callable[..., Any], arguments: dict[str, Any]) -> Any:
    """`hook` called with those of `arguments` it names."""
    wanted = inspect.signature(hook).parameters
    return hook(**{key: value for key, value in arguments.items() if key in wanted})


def _release(name: str, root: str | Path, options: dict[str, Any]) -> tuple[Benchmark, Path]:
    """The registered benchmark and its root, once the options are known ones and the root is there."""
    benchmark = get_benchmark(name)
    accepted = benchmark.options()
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise BenchmarkError(f"{name}: unknown option(s) {unknown}; accepted: {accepted or 'none'}")
    root = Path(root).expanduser()
    if not root.exists():
        raise BenchmarkError(f"{name}: {root} does not exist; give the path of the {name} release as "
                             "downloaded")
    return benchmark, root


@contextmanager
def _split_named(name: str, root: Path) -> Iterator[None]:
    """An unknown split, named with the benchmark and its root."""
    try:
        yield
    except UnknownSplit as exc:
        raise BenchmarkError(f"{name} at {root}: {exc}") from None
