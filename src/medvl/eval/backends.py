"""Where an eval run's answers come from: a generation engine, or the majority baseline.

`backend.kind` names a registered engine (`medvl.engine`: `local`, `openai`, `vllm`) or `majority`,
the baseline that answers from a table of the most frequent answers without looking at anything
(`medvl.eval.baselines`). Every backend is an `medvl.engine.Engine`: it answers a batch of
`Request`s (the item, its chat messages and decoded images) with one `Reply` each, in order, and a
failure on one request becomes that reply's `error`, never an exception for the whole batch.
"""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import Field

from medvl.config import ConfigError
from medvl.engine import Engine, EngineConfig, make_engine

__all__ = ["BackendConfig", "make_backend"]


class BackendConfig(EngineConfig):
    """An engine (see `EngineConfig`), or `kind: majority`."""

    other_kinds: ClassVar[tuple[str, ...]] = ("majority",)

    kind: str = Field("local", description="local | openai | vllm (any registered engine) | majority")
    majority_split: str = Field("train", description="majority: the split whose answers are counted")


def make_backend(config: BackendConfig, settings: Any, majority: dict[str, str] | None = None) -> Engine:
    """The backend named by `config.kind`; `majority` is the answer table of the majority baseline."""
    if config.kind == "majority":
        from medvl.eval.baselines import MajorityBackend

        if majority is None:
            raise ConfigError("the majority backend needs its answer table")
        return MajorityBackend(majority)
    return make_engine(config, settings)
