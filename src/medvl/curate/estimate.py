"""`medvl curate estimate`: what the generation stage would send and cost, sending nothing.

The CPU stages (prepare, dedup, sample) run first — or are reused when a previous run or estimate
finished them — because only they know which records reach generation. Then every request the
generation stage would send is built exactly as it will be (same prompts, same image encoding,
hence the same cache keys) and handed to `LLMClient.estimate` in chunks: requests already in the
response cache are counted as cached and cost nothing.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Iterator

from medvl.curate.config import CurateConfig
from medvl.curate.generate import FigureInput, build_reformat_request, self_instruct_request
from medvl.curate.generate_step import image_refs
from medvl.curate.pipeline import run_curation
from medvl.curate.store import RunDirs
from medvl.io.jsonl import iter_appended

__all__ = ["estimate_generation"]

CHUNK = 256


def _selected_figures(dirs: RunDirs, n_shards: int) -> Iterator[FigureInput]:
    for rank in range(n_shards):
        chosen = set(json.loads(dirs.selected_shard(rank).read_text(encoding="utf-8")))
        for row, record in enumerate(iter_appended(dirs.prepared_shard(rank))):
            if row in chosen:
                yield FigureInput.from_prepared(record, image_refs(record))


def estimate_generation(config: CurateConfig, out_dir: str | Path) -> dict[str, Any]:
    """Run/reuse the CPU stages into `out_dir`, then estimate each enabled LLM generator."""
    from medvl.llm.client import LLMClient

    run_curation(config, out_dir, until="sample")
    dirs = RunDirs(Path(out_dir).resolve())
    n_shards = config.engine.tasks
    kinds: list[tuple[str, Any, Callable[[FigureInput], Any]]] = []
    if config.generate.reformat.enabled:
        section = config.generate.reformat
        kinds.append(("reformat", section.llm, lambda f: build_reformat_request(f, section)))
    if config.generate.self_instruct.enabled:
        section_si = config.generate.self_instruct
        kinds.append(("self_instruct", section_si.llm, lambda f: self_instruct_request(f, section_si)))
    records = sum(len(json.loads(dirs.selected_shard(r).read_text())) for r in range(n_shards))
    result: dict[str, Any] = {"records": records, "llm": {}}
    for kind, llm, build in kinds:
        client = LLMClient(llm.cached_in(dirs.llm_cache))
        totals = {
            "n_requests": 0,
            "n_cached": 0,
            "n_to_send": 0,
            "prompt_tokens": 0,
            "max_completion_tokens": 0,
            "cost_usd": 0.0,
        }
        chunk: list[Any] = []
        for figure in _selected_figures(dirs, n_shards):
            chunk.append(build(figure))
            if len(chunk) >= CHUNK:
                _add(totals, client.estimate(chunk))
                chunk = []
        if chunk:
            _add(totals, client.estimate(chunk))
        result["llm"][kind] = {"model": llm.model, **totals}
    return result


def _add(totals: dict[str, Any], estimate: Any) -> None:
    for key in totals:
        totals[key] += getattr(estimate, key)
