"""`EvalConfig`: what `medvl eval run` runs — the benchmark, the backend, generation, prompt, images, scoring.

An eval config YAML (configs/eval/) validates into `EvalConfig`; `key.sub=value` overrides apply on
top. `scorer` defaults to the scorer the benchmark registered (`medvl` for every shipped one).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from medvl.benchmarks import (
    BENCHMARKS,
    BenchmarkData,
    check_benchmark,
    closed_as_choice,
    get_benchmark,
    load_benchmark,
)
from medvl.benchmarks.prompts import PromptStyle
from medvl.config import Config
from medvl.eval.backends import BackendConfig
from medvl.model.generate import GenerationSettings

__all__ = ["BenchmarkConfig", "EvalConfig", "PromptConfig"]


class BenchmarkConfig(Config):
    name: str
    root: str
    split: str = "test"
    options: dict[str, Any] = Field(default_factory=dict, description="loader options, e.g. {lang: zh}")
    limit: int | None = Field(None, ge=1, description="evaluate only the first N items (smoke runs)")
    protocol: Literal["native", "choice"] = Field(
        "native", description="choice: closed yes/no items asked as lettered options (A. yes / B. no) and open "
        "items left out — HuatuoGPT-Vision's multiple-choice protocol on VQA-RAD, SLAKE and PathVQA")

    def load(self, split: str | None = None) -> BenchmarkData:
        """The split's items as this config asks for them (the protocol applied)."""
        data = load_benchmark(self.name, self.root, split or self.split, **self.options)
        if self.protocol == "choice":
            data.items, left_out = closed_as_choice(data.items)
            data.notes.append(f"choice protocol: {left_out} open or non-yes/no closed items left out")
        return data

    def check(self) -> None:
        """Raise what `load` would refuse, without reading an image (`check_benchmark`: the root, the split's
        files, the split and option values, then what the benchmark's `check` finds in those files)."""
        check_benchmark(self.name, self.root, self.split, **self.options)


class PromptConfig(Config):
    style: PromptStyle = "short"
    system: str | None = None


class EvalConfig(Config):
    benchmark: BenchmarkConfig
    backend: BackendConfig = BackendConfig()
    generation: GenerationSettings = GenerationSettings(max_new_tokens=64)
    prompt: PromptConfig = PromptConfig()
    use_images: bool | Literal["shuffled"] = Field(
        True, description="true: each item's own images; false: the question-only baseline; shuffled: each item "
        "shown another item's image(s) (a seeded derangement within the split), the image-reliance control")
    shuffle_seed: int = Field(0, description="use_images: shuffled — the seed of the derangement")
    missing_images: Literal["skip", "text_only"] = Field(
        "skip", description="items whose image is missing: skip (recorded in rejects.jsonl) or ask without it")
    exclude_seen: str | None = Field(
        None, description="seen_items.json of `medvl curate decontaminate` (benchmark/split -> item ids): "
        "score only the items not seen in training")
    scorer: str = Field("medvl", description="default: the scorer the benchmark registered")
    extra_scorers: list[str] = Field(default_factory=list, description="compatibility scorers also reported")
    output_dir: str = "runs/eval/run"
    report: bool = True

    @model_validator(mode="before")
    @classmethod
    def _benchmark_scorer(cls, data: Any) -> Any:
        """Fill an unset `scorer` with the benchmark's registered one (an unknown benchmark fails at load)."""
        if not isinstance(data, dict) or data.get("scorer") is not None:
            return data
        benchmark = data.get("benchmark")
        name = benchmark.get("name") if isinstance(benchmark, dict) else getattr(benchmark, "name", None)
        return {**data, "scorer": get_benchmark(name).scorer} if name in BENCHMARKS else data
