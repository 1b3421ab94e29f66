"""The generation task: selected records of one shard → conversation records, durably, resumably.

Per record, the enabled generators run (concept alignment at once; reformatting and self-instruct
through `LLMClient`, concurrently across records). Results are written in input order, one line per
finished record, to `_work/generate/<rank>.jsonl` (flushed at once: a SIGKILL keeps every line
written). A restarted task skips the rows already there; every reply it received before the kill
is in the LLM response cache, so it is not requested again.

An LLM failure is handled by kind: a transient one that outlived the client's retries
(`retries_exhausted`, `timeout`, `connection`) leaves the record undone — the task finishes the
rest, then fails, so the next run retries exactly those records; any other (`http_error`,
`bad_response`, `content_filter`) and every post-processing failure is a reject with its reason.
An endpoint that cannot be used at all (`medvl.llm.messages.EndpointUnusable`, a `UserError`: never
reached or never answering, the API key rejected, no such model, no quota) stops the task at once:
the records in flight are dropped unwritten, the lines already written stay.

Images of a record that produced output are linked (or copied) into the image root under
`<source>/<id>-<hash of the image's path><ext>` (`image_refs`), the relative path the records carry.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import shutil
import time
from collections import deque
from dataclasses import dataclass, field
from hashlib import blake2b
from pathlib import Path
from typing import Any, Awaitable, Callable

from datatrove.data import DocumentsPipeline
from datatrove.pipeline.base import PipelineStep
from tqdm.auto import tqdm

from medvl.curate.config import GenerateConfig
from medvl.curate.generate import (
    FigureInput,
    build_reformat_request,
    concept_record,
    reformat_records,
    self_instruct_record,
    self_instruct_request,
)
from medvl.curate.postprocess import Rejected
from medvl.curate.store import CurateIncomplete, RunDirs, reject_provenance
from medvl.io.jsonl import JsonlAppender, iter_appended, reject_line

__all__ = ["GenerateStep", "image_refs", "TRANSIENT_KINDS"]

log = logging.getLogger("medvl.curate")

TRANSIENT_KINDS = {"retries_exhausted", "timeout", "connection", "rate_limited", "server_error"}
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
_STEM_CHARS = 120  # of an image file's name before its hash: under the 255 bytes a file system takes


def image_refs(record: dict[str, Any]) -> list[str]:
    """Paths (relative to the image root) the record's images get: `<source>/<id>-<hash><ext>`, the id made
    safe for a file name and cut to `_STEM_CHARS`, the hash one of the image's own path: two records name
    one file only when they show the same file. Ids alone collided (`x.png` and `x` both gave `x.png`, the
    second record showing the first one's picture; so did equal ids of two files, and ids differing in case
    only on a case-blind file system)."""
    readable = _UNSAFE.sub("_", record["id"]).strip("._") or "record"
    source = _UNSAFE.sub("_", str(record["metadata"].get("source") or "source"))
    refs = []
    for item in record.get("media", []):
        image = item.get("path") or item["url"]
        suffix = _UNSAFE.sub("_", Path(image).suffix.lower()) or ".img"
        stem = (readable[: -len(suffix)] if readable.lower().endswith(suffix) else readable)[:_STEM_CHARS]
        refs.append(f"{source}/{stem}-{blake2b(image.encode(), digest_size=4).hexdigest()}{suffix}")
    return refs


@dataclass
class _Outcome:
    row: int
    record: dict[str, Any]
    outputs: dict[str, list[dict]] = field(default_factory=dict)
    rejects: list[dict[str, Any]] = field(default_factory=list)
    usage: dict[str, dict[str, Any]] = field(default_factory=dict)
    transient: list[str] = field(default_factory=list)


class _UsageLog:
    """What this task's LLM clients sent and spent, appended to `llm_usage/<rank>.jsonl` as the change since
    the last entry, every `every_s` seconds while the task runs and once at its end: a killed task's
    requests count too (all but those of its last `every_s`; an entry only at the end lost them all)."""

    def __init__(self, path: Path, rank: int, clients: dict[str, Any], every_s: float = 1.0):
        self.path, self.rank, self.clients, self.every_s = path, rank, clients, every_s
        self.invocation = f"{os.getpid()}-{time.time():.6f}"
        self.logged = {kind: {} for kind in clients}

    def write(self) -> None:
        entries = []
        for kind, client in self.clients.items():
            now, before = client.usage.as_dict(), self.logged[kind]
            change = {key: value - before.get(key, 0) for key, value in now.items()}
            if any(change.values()):
                entries.append({"time": time.time(), "invocation": self.invocation, "rank": self.rank,
                                "kind": kind, "model": client.config.model, **change})
            self.logged[kind] = now
        if entries:
            with JsonlAppender(self.path) as log_file:
                for entry in entries:
                    log_file.write(entry)

    async def every_while_running(self) -> None:
        while True:
            await asyncio.sleep(self.every_s)
            self.write()


class GenerateStep(PipelineStep):
    """Generation for shard `rank` (run with the same number of tasks as the prepare stage)."""

    name = "generate"
    type = "✍️ - GENERATE"

    def __init__(self, dirs: RunDirs, config: GenerateConfig, image_mode: str):
        super().__init__()
        self.dirs, self.config, self.image_mode = dirs, config, image_mode

    def run(self, data: DocumentsPipeline = None, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        selected = set(json.loads(self.dirs.selected_shard(rank).read_text(encoding="utf-8")))
        out_path = self.dirs.generated_shard(rank)
        done = {line["row"] for line in iter_appended(out_path)}
        self.stat_update("resumed_done", value=len(done))
        todo = (
            (row, record)
            for row, record in enumerate(iter_appended(self.dirs.prepared_shard(rank)))
            if row in selected and row not in done
        )
        total = len(selected - done)
        with (
            JsonlAppender(out_path) as out,
            tqdm(total=total, desc=f"generate task {rank}", unit="record", mininterval=1.0) as bar,
        ):
            failed = asyncio.run(self._generate(todo, out, rank, bar))
        if failed:
            raise CurateIncomplete(
                f"task {rank}: {len(failed)} records failed transiently (e.g. {failed[0]}); "
                "run the same command again to retry them (replies already received are cached)"
            )
        return iter(())

    # ---------------------------------------------------------------- the async part

    async def _generate(self, todo: Any, out: JsonlAppender, rank: int, bar: Any) -> list[str]:
        from medvl.llm.client import LLMClient

        config = self.config
        clients: dict[str, Any] = {}
        for kind, section in (("reformat", config.reformat), ("self_instruct", config.self_instruct)):
            if section.enabled:
                clients[kind] = LLMClient(section.llm.cached_in(self.dirs.llm_cache))
        concurrency = max((c.config.max_concurrency for c in clients.values()), default=1)
        window = config.window * concurrency
        pending: deque[asyncio.Task] = deque()
        failed: list[str] = []
        usage = _UsageLog(self.dirs.llm_usage / f"{rank:05d}.jsonl", rank, clients)
        logging_usage = asyncio.ensure_future(usage.every_while_running())
        try:
            for row, record in todo:
                pending.append(asyncio.ensure_future(self._one(row, record, clients)))
                while pending and (len(pending) >= window or pending[0].done()):
                    self._write(await pending.popleft(), out, failed)
                    bar.update(1)
            while pending:
                self._write(await pending.popleft(), out, failed)
                bar.update(1)
        finally:
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)  # each one's end is retrieved
            logging_usage.cancel()
            for kind, client in clients.items():
                await client.aclose()
                log.info("task %d %s: %s", rank, kind, client.usage.summary())
            usage.write()
        return failed

    async def _one(self, row: int, record: dict[str, Any], clients: dict[str, Any]) -> _Outcome:
        outcome = _Outcome(row, record)
        figure = FigureInput.from_prepared(record, image_refs(record))
        if self.config.concept.enabled:
            outcome.outputs["concept"] = [concept_record(figure, self.config.concept)]
        jobs: list[Awaitable[None]] = []
        if "reformat" in clients:
            section = self.config.reformat

            def parse(text: str) -> None:
                alignment, instruction = reformat_records(figure, text, section)
                outcome.outputs["alignment"], outcome.outputs["instruction"] = [alignment], [instruction]

            jobs.append(
                self._ask(
                    "reformat",
                    clients["reformat"],
                    lambda: build_reformat_request(figure, section),
                    parse,
                    outcome,
                )
            )
        if "self_instruct" in clients:
            section_si = self.config.self_instruct

            def parse_si(text: str) -> None:
                record_si, dropped = self_instruct_record(figure, text, section_si)
                outcome.outputs["self_instruct"] = [record_si]
                if dropped:
                    self.stat_update("self_instruct_turns_dropped", value=len(dropped))

            jobs.append(
                self._ask(
                    "self_instruct",
                    clients["self_instruct"],
                    lambda: self_instruct_request(figure, section_si),
                    parse_si,
                    outcome,
                )
            )
        await asyncio.gather(*jobs)
        return outcome

    async def _ask(
        self,
        kind: str,
        client: Any,
        build: Callable[[], Any],
        parse: Callable[[str], None],
        outcome: _Outcome,
    ) -> None:
        from medvl.io.images import ImageLoadError
        from medvl.llm.messages import LLMError

        try:
            request = await asyncio.to_thread(build)
            reply = await client.complete(request)
        except ImageLoadError as exc:
            return self._reject(outcome, kind, f"image_{exc.reason}", exc.detail)
        except LLMError as exc:
            if exc.kind in TRANSIENT_KINDS:
                outcome.transient.append(f"{outcome.record['id']} ({kind}: {exc})")
                return None
            return self._reject(outcome, kind, f"llm_{exc.kind}", str(exc))
        outcome.usage[kind] = {
            "prompt_tokens": reply.usage.prompt_tokens,
            "completion_tokens": reply.usage.completion_tokens,
            "cached": reply.cached,
        }
        if reply.finish_reason == "length":
            return self._reject(
                outcome, kind, "truncated_reply", "finish_reason length (raise llm.max_tokens)"
            )
        try:
            parse(reply.text)
        except Rejected as exc:
            self._reject(outcome, kind, exc.reason, exc.detail)
        return None

    def _reject(self, outcome: _Outcome, kind: str, reason: str, detail: str) -> None:
        outcome.rejects.append(reject_line(outcome.record["id"], f"generate:{kind}", reason, detail,
                                           **reject_provenance(outcome.record["metadata"])))

    # ---------------------------------------------------------------- writing

    def _write(self, outcome: _Outcome, out: JsonlAppender, failed: list[str]) -> None:
        if outcome.transient:
            failed.extend(outcome.transient)
            self.stat_update("transient_failures")
            return
        record = outcome.record
        if outcome.outputs:
            refs = image_refs(record)
            for item, ref in zip(record.get("media", []), refs):
                self._place_image(Path(item.get("path") or item["url"]), self.dirs.images / ref)
        for kind, records in outcome.outputs.items():
            self.stat_update(f"generated_{kind}", value=len(records))
        for item in outcome.rejects:
            self.stat_update(f"dropped_{item['stage'].split(':')[1]}_{item['reason']}")
        out.write(
            {
                "row": outcome.row,
                "id": record["id"],
                "order": record["metadata"]["order"],
                "modality": record["metadata"].get("modality"),
                "outputs": outcome.outputs,
                "rejects": outcome.rejects,
                "usage": outcome.usage,
            }
        )

    def _place_image(self, source: Path, target: Path) -> None:
        if target.exists():
            return
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        tmp.unlink(missing_ok=True)
        if self.image_mode == "symlink":
            tmp.symlink_to(source.resolve())
        elif self.image_mode == "hardlink":
            try:
                os.link(source, tmp)
            except OSError:
                shutil.copy2(source, tmp)
        else:
            shutil.copy2(source, tmp)
        os.replace(tmp, target)
