"""Dynamic batching: concurrent requests answered by one `Generator.generate` call.

All model work happens in one worker thread, so the event loop stays free to accept and stream
while the model runs, and the model/tokenizer are never used from two threads at once. The
worker takes the oldest waiting job, then collects more for up to `batch_wait_ms` (or until
`max_batch_size`), splits them into groups with identical generation settings and makes one
`generate` call per group. Streaming jobs run alone through `Generator.stream` (its deltas go
to the client as they come). The waiting queue is bounded: `submit` raises a 429 `APIError`
when it is full.

Each job first gets its prompt measured (images expanded); a prompt over the job's limit fails
that job alone with a 400. If a batched call raises, its jobs are retried one by one so one bad
request cannot fail its neighbours. Results reach the asyncio side as events on the job's
`events` queue: ("prompt", n), ("delta", text)..., then ("done", GenerationResult) or
("error", APIError).
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from medvl.model.generate import GenerationResult, GenerationSettings, Generator
from medvl.serve.protocol import APIError

__all__ = ["Job", "Batcher", "BatcherStats"]

log = logging.getLogger(__name__)


@dataclass
class Job:
    messages: list[dict[str, Any]]
    images: list[Any]
    settings: GenerationSettings
    prompt_limit: int
    stream: bool = False
    events: asyncio.Queue = field(default_factory=asyncio.Queue)
    loop: asyncio.AbstractEventLoop | None = None

    def post(self, kind: str, value: Any) -> None:
        """Hand an event to the job's event loop (safe from the worker thread)."""
        if self.loop is None or self.loop.is_closed():
            return
        try:
            self.loop.call_soon_threadsafe(self.events.put_nowait, (kind, value))
        except RuntimeError:  # the loop shut down while the model was running
            pass


@dataclass
class BatcherStats:
    requests: int = 0
    generate_calls: int = 0
    stream_calls: int = 0
    batched_requests: int = 0  # requests answered by a generate call holding more than one
    largest_batch: int = 0


_STOP = object()


class Batcher:
    """Owns the worker thread and the bounded queue in front of it."""

    def __init__(self, generator: Generator, max_batch_size: int = 8, batch_wait_ms: float = 10.0,
                 max_queue: int = 64):
        self.generator = generator
        self.max_batch_size = max_batch_size
        self.batch_wait = batch_wait_ms / 1000
        self.stats = BatcherStats()
        self._queue: queue.Queue = queue.Queue(maxsize=max_queue)
        self._thread = threading.Thread(target=self._run, name="medvl-batcher", daemon=True)
        self._thread.start()

    @property
    def waiting(self) -> int:
        return self._queue.qsize()

    def submit(self, job: Job) -> None:
        """Queue a job (from the event loop); 429 when the queue is full."""
        job.loop = asyncio.get_running_loop()
        try:
            self._queue.put_nowait(job)
        except queue.Full:
            raise APIError(429, f"the server is busy ({self._queue.maxsize} requests waiting); retry shortly",
                           "queue_full", headers={"Retry-After": "1"}) from None
        self.stats.requests += 1

    def close(self, timeout: float = 30.0) -> None:
        """Stop after the job in progress; jobs still waiting get a 503."""
        while True:
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                break
            if job is not _STOP:
                job.post("error", APIError(503, "the server is shutting down", "shutting_down"))
        self._queue.put(_STOP)
        self._thread.join(timeout)

    def _run(self) -> None:
        carried: Any = None
        while True:
            job = carried if carried is not None else self._queue.get()
            carried = None
            if job is _STOP:
                return
            if job.stream:
                self._run_stream(job)
                continue
            batch = [job]
            deadline = time.monotonic() + self.batch_wait
            while len(batch) < self.max_batch_size:
                try:
                    remaining = deadline - time.monotonic()
                    nxt = self._queue.get(timeout=remaining) if remaining > 0 else self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is _STOP or nxt.stream:
                    carried = nxt
                    break
                batch.append(nxt)
            self._run_batch(batch)

    def _admit(self, job: Job) -> int | None:
        """Prompt tokens of a job, or None after failing it (too long, or unprocessable)."""
        try:
            inputs = self.generator.encode([job.messages], [job.images])
            tokens = int(inputs["input_ids"].shape[1])
        except Exception as exc:  # a template/processor failure belongs to this request only
            log.exception("could not encode a request")
            job.post("error", APIError(400, f"the request could not be encoded: {exc}", "invalid_request"))
            return None
        if tokens > job.prompt_limit:
            job.post("error", APIError(
                400, f"the prompt has {tokens} tokens (images included); this request allows at most "
                f"{job.prompt_limit} (prompt limit and context length, minus max_tokens)",
                "context_length_exceeded", "messages"))
            return None
        job.post("prompt", tokens)
        return tokens

    def _run_batch(self, batch: list[Job]) -> None:
        groups: dict[str, list[Job]] = {}
        for job in batch:
            if self._admit(job) is not None:
                groups.setdefault(job.settings.model_dump_json(), []).append(job)
        for jobs in groups.values():
            self._generate(jobs)

    def _generate(self, jobs: list[Job]) -> None:
        settings = jobs[0].settings.model_copy(update={"batch_size": self.max_batch_size})
        try:
            self.stats.generate_calls += 1
            results = self.generator.generate([j.messages for j in jobs], [j.images for j in jobs], settings)
        except Exception as exc:
            if len(jobs) > 1:
                log.warning("a batch of %d failed (%s); retrying one by one", len(jobs), exc)
                for job in jobs:
                    self._generate([job])
                return
            log.exception("generation failed")
            jobs[0].post("error", APIError(500, f"generation failed: {type(exc).__name__}", "generation_failed"))
            return
        if len(jobs) > 1:
            self.stats.batched_requests += len(jobs)
        self.stats.largest_batch = max(self.stats.largest_batch, len(jobs))
        for job, result in zip(jobs, results, strict=True):
            job.post("done", result)

    def _run_stream(self, job: Job) -> None:
        prompt_tokens = self._admit(job)
        if prompt_tokens is None:
            return
        self.stats.stream_calls += 1
        text = ""
        try:
            for delta in self.generator.stream(job.messages, job.images, job.settings):
                text += delta
                job.post("delta", delta)
        except Exception as exc:
            log.exception("streaming generation failed")
            job.post("error", APIError(500, f"generation failed: {type(exc).__name__}", "generation_failed"))
            return
        # Generator.stream yields text only: the answer is re-tokenised to count it (approximate,
        # capped at max_new_tokens, which generation cannot exceed).
        retokenised = len(self.generator.tokenizer(text, add_special_tokens=False)["input_ids"])
        tokens = min(retokenised, job.settings.max_new_tokens)
        finish = "length" if tokens >= job.settings.max_new_tokens else "stop"
        job.post("done", GenerationResult(text=text, prompt_tokens=prompt_tokens, new_tokens=tokens,
                                          finish_reason=finish))
