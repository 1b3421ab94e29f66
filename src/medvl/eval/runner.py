"""`medvl eval run`: answer a benchmark with a backend, score it, and write the run folder.

A run folder holds `config.yaml` (what ran), `predictions.jsonl` (one line per item: the item, the
prompt, the images shown, the raw output, the parsed answer, correct, metrics), `scores.json`,
`report.md` with its plots, `rejects.jsonl` (items that could not be run: missing or unreadable
images, unreadable rows) and, when the release has a train split, `candidates.json` (its open
answers, for the `llava_med_run_eval` scorer).

Images: `use_images: true` shows each item its own images, `false` none (the question-only
baseline), `shuffled` another item's (`baselines.image_derangement`, seeded by `shuffle_seed`);
each record says which files it was shown (`shown_images`, and `shown_images_from`: the donor id).
Items with a missing image are skipped or asked without it (`missing_images`) the same way under
`true` and `shuffled`, so a real and a shuffled run pair item by item (`medvl eval compare`).

Resume: answers are appended to `predictions.part-<rank>.jsonl` after every batch; a rerun with the
same config skips every id already answered (in those files or in `predictions.jsonl`). An LLM
backend (`openai`) caches its replies in the run folder's `llm-cache/` unless `llm.cache_dir` is
set, so the replies of the batch a run was stopped in are not paid for again either. A folder
made with a different config is refused rather than mixed, and so is a folder another run is
writing (the main process holds its `RunLock` for the whole run: two runs on one folder both
answered every item and one crashed merging the part files the other had just removed). A run that
fails before writing anything (an unknown split, a bad root) removes the folders it made, if empty.

Data parallel: under `[medvl launch] accelerate launch -m medvl.cli eval run CONFIG` (`medvl launch`
first checks the config, this lock, the benchmark's files and the folder's config: `medvl.eval.launch`),
each process takes its slice of the remaining items (`PartialState.split_between_processes`), writes
its own part file, and the main process merges all parts in benchmark order once every process is
done, then scores. Each process dies with its launcher (`medvl.io.process.die_with_launcher`),
however the launcher dies; a rerun, with as many processes or not, resumes from the part files.
"""

from __future__ import annotations

import logging
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import yaml
from pydantic import ValidationError

from medvl.benchmarks import BenchmarkError, get_benchmark
from medvl.benchmarks.base import BenchmarkData, VQAItem
from medvl.config import ConfigError, dump_config
from medvl.engine import Engine, Request
from medvl.eval.backends import BackendConfig, make_backend
from medvl.eval.config import EvalConfig
from medvl.eval.prompts import build_messages
from medvl.eval.scorers import SCORERS
from medvl.io.files import ensure_folder, no_empty_folder_on_failure
from medvl.io.jsonl import JsonlAppender, JsonlLineError, RejectLog, iter_jsonl, read_json_file, write_jsonl
from medvl.io.process import RunLock, die_with_launcher

__all__ = ["check_same_run", "check_scorers", "merge_parts", "read_predictions", "run_eval", "run_folder_lock"]

log = logging.getLogger(__name__)
PREDICTIONS = "predictions.jsonl"
# settings that cannot change what a greedy run answers; a resumed run may differ in these
RESUMABLE_KEYS = {("generation", "batch_size"), ("output_dir",), ("report",)}


class ProcessState(Protocol):
    """The part of accelerate's `PartialState` the runner uses (tests pass a stand-in)."""

    process_index: int
    num_processes: int
    is_main_process: bool

    def wait_for_everyone(self) -> None: ...
    def split_between_processes(self, inputs: list, apply_padding: bool = False) -> Any: ...


def run_eval(config: EvalConfig, state: ProcessState | None = None) -> Path:
    """Run (or resume) one evaluation; returns the run folder. Started by a launcher, each process dies
    with it (`die_with_launcher`: the launcher puts its workers in their own sessions, out of reach of a
    kill of its process group; an orphan went on answering and wrote the whole run folder)."""
    die_with_launcher()
    check_scorers(config)
    if state is None:
        import torch
        from accelerate import PartialState

        # `cpu` without CUDA, as training sets `use_cpu`: else accelerate takes each launched CPU process for
        # the only one, and all but one of them failed on the run folder another "only" process held
        state = PartialState(cpu=not torch.cuda.is_available())
    out = Path(config.output_dir)
    with no_empty_folder_on_failure(out, enabled=state.is_main_process):
        with run_folder_lock(out) if state.is_main_process else nullcontext():
            return _evaluate(config, state, out)


def check_scorers(config: EvalConfig) -> None:
    """An unknown `scorer` or `extra_scorers` name is a `ConfigError` (before anything is asked)."""
    for name in [config.scorer, *config.extra_scorers]:
        if name not in SCORERS:
            raise ConfigError(f"unknown scorer {name!r}; known: {', '.join(SCORERS)}")


def run_folder_lock(out: Path) -> RunLock:
    """The lock the main process holds on run folder `out` for the whole run; another run holding it is
    refused (`FolderInUse`: "OUT is in use by another evaluation run (pid ...)")."""
    return RunLock(out, what="evaluation run")


def _evaluate(config: EvalConfig, state: ProcessState, out: Path) -> Path:
    data = config.benchmark.load()
    items = data.items[: config.benchmark.limit] if config.benchmark.limit else data.items
    seen_notes: list[str] = []
    excluded: list[dict[str, str]] = []
    if config.exclude_seen:
        items, excluded, seen_notes = _unseen(items, data, Path(config.exclude_seen))
    if state.is_main_process:
        _claim_folder(out, config)
    state.wait_for_everyone()
    runnable, text_only, rejected = _runnable(items, data, config)
    rejected += excluded
    donors = _shuffle(runnable, text_only, rejected, config)
    done = {r["id"] for r in read_predictions(out, include_parts=True)}
    todo = [item for item in runnable if item.id not in done]
    majority, notes = _majority(config, data) if config.backend.kind == "majority" else (None, [])
    state.wait_for_everyone()  # every process has read the done set before anyone appends
    started = time.perf_counter()
    with state.split_between_processes(todo) as mine:
        if mine:
            backend = make_backend(_with_reply_cache(config.backend, out), config.generation, majority)
            _answer(backend, mine, _Shown(text_only, donors), config,
                    out / f"predictions.part-{state.process_index}.jsonl", show_progress=state.is_main_process)
    state.wait_for_everyone()
    seconds = time.perf_counter() - started
    if state.is_main_process:
        records = merge_parts(out, [item.id for item in items])
        asked = {item.id for item in todo}
        answered = sum(record["id"] in asked for record in records)  # by every process
        from medvl.eval.report import finalize_run

        finalize_run(out, records, config, data, rejected, notes=data.notes + notes + seen_notes,
                     throughput={"answered": answered, "processes": state.num_processes, "seconds": round(seconds, 3),
                                 "items_per_s": round(answered / seconds, 3) if seconds and answered else None})
    state.wait_for_everyone()
    return out


def _with_reply_cache(backend: BackendConfig, out: Path) -> BackendConfig:
    """An LLM backend without `llm.cache_dir` caches its replies in the run folder's `llm-cache/`: a run
    stopped midway keeps the replies of the batch it was in, not only the batches already written."""
    if backend.llm is None:
        return backend
    return backend.model_copy(update={"llm": backend.llm.cached_in(out / "llm-cache")})


def read_seen_items(path: Path) -> dict[str, list[str]]:
    """`exclude_seen`'s file: the item ids per benchmark/split a decontamination saw; missing or of
    another shape is a `ConfigError` line."""
    if not path.is_file():
        raise ConfigError(f"exclude_seen: {path} not found; `medvl curate decontaminate` writes seen_items.json")
    seen_items = read_json_file(path, "a seen_items.json ({\"benchmark/split\": [item ids]})",
                                "give the seen_items.json `medvl curate decontaminate` wrote")
    if not isinstance(seen_items, dict):
        raise ConfigError(f"exclude_seen: {path} is a JSON {type(seen_items).__name__}, not the object of item ids "
                          "per benchmark/split that `medvl curate decontaminate` writes")
    return seen_items


def _unseen(items: list[VQAItem], data: BenchmarkData,
            path: Path) -> tuple[list[VQAItem], list[dict[str, str]], list[str]]:
    """The items a decontamination's seen_items.json (a plain file) does not list for this split, the
    others as rejects (reason `seen_in_training`), and the run's note."""
    seen = set(read_seen_items(path).get(f"{data.name}/{data.split}", []))
    kept = [item for item in items if item.id not in seen]
    excluded = [{"id": item.id, "stage": "exclude_seen", "reason": "seen_in_training", "detail": path.name}
                for item in items if item.id in seen]
    return kept, excluded, [f"{len(excluded)} items seen in training excluded ({path.name}): "
                            f"scores are on the {len(kept)} unseen items"]


def _claim_folder(out: Path, config: EvalConfig) -> None:
    """Write config.yaml, after `check_same_run`."""
    check_same_run(out, config)
    ensure_folder(out)
    dump_config(config, out / "config.yaml")


def check_same_run(out: Path, config: EvalConfig) -> None:
    """A `ConfigError` when run folder `out` holds a run made with a different config (its config.yaml; a
    setting added since that run was made counts as its default): it is refused rather than mixed."""
    saved = out / "config.yaml"
    if not saved.is_file():
        return
    try:
        raw = yaml.safe_load(saved.read_text()) or {}
    except (yaml.YAMLError, UnicodeDecodeError):
        raw = None
    if not isinstance(raw, dict):
        raise ConfigError(f"{saved} is not the config of a run (not a YAML mapping); use another output_dir")
    try:
        raw = EvalConfig.model_validate(raw).model_dump(mode="json")
    except ValidationError:
        pass  # compared as written: every difference is reported
    before = _flatten(raw)
    now = _flatten(config.model_dump(mode="json"))
    changed = sorted(".".join(k) for k in set(before) | set(now)
                     if k not in RESUMABLE_KEYS and before.get(k) != now.get(k))
    if changed:
        raise ConfigError(f"{out} holds a run with a different config (changed: {', '.join(changed)}); "
                          "use another output_dir")


def _flatten(data: dict[str, Any], prefix: tuple[str, ...] = ()) -> dict[tuple[str, ...], Any]:
    flat: dict[tuple[str, ...], Any] = {}
    for key, value in data.items():
        if isinstance(value, dict) and value:
            flat.update(_flatten(value, prefix + (key,)))
        else:
            flat[prefix + (key,)] = value
    return flat


def _runnable(items: list[VQAItem], data: BenchmarkData, config: EvalConfig
              ) -> tuple[list[VQAItem], set[str], list[dict[str, str]]]:
    """Items to run, ids to run without their images, and the rejected (id, reason) records."""
    missing = set(data.missing_images)
    rejected = [dict(r, stage="load") for r in data.rejects]
    text_only = set() if config.use_images is not False else {item.id for item in items}
    runnable = []
    for item in items:
        if config.use_images is not False and item.id in missing:
            absent = [p for p in item.images if not Path(p).is_file()]
            if config.missing_images == "skip":
                rejected.append({"id": item.id, "reason": "missing_image", "detail": ", ".join(absent),
                                 "stage": "images"})
                continue
            text_only.add(item.id)
        runnable.append(item)
    return runnable, text_only, rejected


def _shuffle(runnable: list[VQAItem], text_only: set[str], rejected: list[dict[str, str]],
             config: EvalConfig) -> dict[str, VQAItem] | None:
    """use_images: shuffled — {item id: donor item}; items that cannot be shuffled move to `rejected`."""
    if config.use_images != "shuffled":
        return None
    from medvl.eval.baselines import image_derangement

    donors, stuck = image_derangement([i for i in runnable if i.images and i.id not in text_only], config.shuffle_seed)
    rejected += [{"id": item_id, "reason": "no_other_image", "stage": "images",
                  "detail": "no other item with as many images to shuffle in"} for item_id in stuck]
    unshuffled = set(stuck)
    runnable[:] = [item for item in runnable if item.id not in unshuffled]
    return donors


@dataclass(frozen=True)
class _Shown:
    """Which images each item is shown: none for `text_only` ids, a donor's when shuffled, else its own."""

    text_only: set[str]
    donors: dict[str, VQAItem] | None

    def images_of(self, item: VQAItem) -> tuple[list[str], str | None]:
        if item.id in self.text_only:
            return [], None
        if self.donors is not None and item.images:
            donor = self.donors[item.id]
            return list(donor.images), donor.id
        return list(item.images), None


def _majority(config: EvalConfig, data: BenchmarkData) -> tuple[dict[str, str], list[str]]:
    from medvl.eval.baselines import majority_table

    wanted = config.backend.majority_split
    try:
        source = config.benchmark.load(wanted).items
        problem = None if _item_keys(source) != _item_keys(data.items) else "the loader read the same questions"
    except BenchmarkError as exc:
        problem = str(exc)
    if problem is None:
        note = f"majority answers counted on the {wanted} split"
    else:
        source = data.items
        note = (f"majority answers counted on the evaluated {data.split} split itself (no separate {wanted} "
                f"split: {problem}); this baseline is optimistic")
    table = majority_table(source)
    return table, [note, f"majority table: {table}"]


def _item_keys(items: list[VQAItem]) -> set[tuple[str, str, str]]:
    return {(item.id, item.question, item.answer) for item in items}


def _answer(backend: Engine, items: list[VQAItem], shown: _Shown, config: EvalConfig, part: Path,
            show_progress: bool) -> None:
    """Answer `items` in batches, appending each batch's records to `part`."""
    from tqdm.auto import tqdm

    from medvl.io.images import ImageLoadError, load_image

    size = config.generation.batch_size
    ask = get_benchmark(config.benchmark.name).prompt
    with JsonlAppender(part) as sink, RejectLog(part.with_name(part.name.replace("predictions", "rejects"))) as bad, \
            tqdm(total=len(items), desc=f"eval {config.benchmark.name}", unit="q", disable=not show_progress) as bar:
        for start in range(0, len(items), size):
            requests, prompts = [], {}
            for item in items[start:start + size]:
                try:
                    images = [load_image(p) for p in shown.images_of(item)[0]]
                except ImageLoadError as exc:
                    bad.reject(item.id, "images", "image_load_error", str(exc))
                    continue
                prompts[item.id] = ask(item, config.prompt.style)
                requests.append(Request(build_messages(prompts[item.id], len(images), config.prompt.system),
                                        images, item))
            for request, reply in zip(requests, backend.generate(requests) if requests else []):
                item = request.item
                paths, donor = shown.images_of(item)
                sink.write({**item.to_dict(), "prompt": prompts[item.id], "use_images": bool(request.images),
                            "shown_images": paths, "shown_images_from": donor, "output": reply.text, "prompt_tokens": reply.prompt_tokens, "new_tokens": reply.new_tokens,
                            "finish_reason": reply.finish_reason, "error": reply.error,
                            "backend": config.backend.label()})
            bar.update(min(size, len(items) - start))


def read_predictions(out: Path, include_parts: bool = False) -> list[dict[str, Any]]:
    """Records of `predictions.jsonl` (and the part files), first occurrence of an id kept."""
    files = [out / PREDICTIONS] + (sorted(out.glob("predictions.part-*.jsonl")) if include_parts else [])
    records: dict[str, dict[str, Any]] = {}
    for file in files:
        if not file.is_file():
            continue
        for line, record in iter_jsonl(file):
            if isinstance(record, JsonlLineError):
                log.warning("%s: skipping unreadable line %d (%s)", file, line, record.reason)
                continue
            records.setdefault(str(record.get("id")), record)
    return list(records.values())


def merge_parts(out: Path, order: list[str]) -> list[dict[str, Any]]:
    """Merge `predictions.jsonl` and every part file into `predictions.jsonl` in `order`; remove the parts."""
    records = {r["id"]: r for r in read_predictions(out, include_parts=True)}
    rank = {item_id: index for index, item_id in enumerate(order)}
    merged = sorted(records.values(), key=lambda r: (rank.get(r["id"], len(rank)), r["id"]))
    write_jsonl(out / PREDICTIONS, merged)
    for part in out.glob("predictions.part-*.jsonl"):
        part.unlink()
    return merged
