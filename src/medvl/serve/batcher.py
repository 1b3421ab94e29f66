"""Dynamic batching: concurrent requests answered by one `Engine.generate` call (`medvl.engine`).

All model work happens in one worker thread, so the event loop stays free to accept and stream
while the model runs, and the model is never used from two threads at once. The worker takes
the oldest waiting job, then collects more for up to `batch_wait_ms` (or until
`max_batch_size`), splits them into groups with identical generation settings and makes one
`generate` call per group, each row sampled with its job's own seed. Streaming jobs run alone
through `Engine.stream` (its deltas go to the client as they come). The waiting queue is
bounded: `submit` raises a 429 `APIError` when it is full (`check_room` asks first, before the
handler spends work on a request).

Jobs arrive admitted (their prompts were measured off this thread, see `admission`). Each
carries a `RequestControl`: a job stopped while waiting (client gone, deadline passed) no
longer counts against the queue bound and is dropped when reached; a running one leaves its
batch at the next token while its neighbours go on. One bad request cannot fail its neighbours:
the engine retries a failed batch one by one, and only the job whose reply failed gets a 500.
`drain()` (SIGTERM) refuses new jobs and fails the waiting ones with 503.

Results reach the asyncio side as events on the job's `events` queue: ("delta", text)..., then
("done", Reply) or ("error", APIError).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable

from medvl.engine import Engine, Reply, Request
from medvl.model.generate import GenerationSettings
from medvl.serve.control import RequestControl, shutting_down
from medvl.serve.protocol import APIError

__all__ = ["Job", "JobQueue", "Batcher", "BatcherStats"]

log = logging.getLogger(__name__)


@dataclass
class Job:
    messages: list[dict[str, Any]]
    images: list[Any]
    settings: GenerationSettings  # jobs with equal settings share a generate call
    seed: int
    control: RequestControl
    stream: bool = False
    inputs: Any = None  # the prompt as admission encoded it (the engine does not encode it again)
    events: asyncio.Queue = field(default_factory=asyncio.Queue)
    loop: asyncio.AbstractEventLoop | None = None

    def request(self) -> Request:
        """What the engine is asked: the conversation, its images, this job's seed, stop check and encoding."""
        return Request(self.messages, self.images, seed=self.seed, should_stop=self.control.should_stop,
                       inputs=self.inputs)

    def post(self, kind: str, value: Any) -> None:
        """Hand an event to the job's event loop (safe from any thread)."""
        if self.loop is None or self.loop.is_closed():
            return
        try:
            self.loop.call_soon_threadsafe(self.events.put_nowait, (kind, value))
        except RuntimeError:  # the loop shut down while the model was running
            pass

    def stop(self, reason: APIError) -> None:
        """Cancel the job and tell its handler now (the model thread notices at its next token)."""
        self.control.cancel(reason)
        self.post("error", self.control.reason)


class JobQueue:
    """A bounded FIFO of jobs in which stopped jobs take no room and are never handed out
    (`on_drop` is called for each one dropped)."""

    def __init__(self, maxsize: int, on_drop: Callable[[], None] = lambda: None):
        self.maxsize, self.on_drop = maxsize, on_drop
        self._jobs: deque[Job] = deque()
        self._changed = threading.Condition()
        self._closed = False

    def __len__(self) -> int:
        with self._changed:
            self._purge()
            return len(self._jobs)

    def put(self, job: Job) -> bool:
        """Queue a job; False when the queue is full."""
        with self._changed:
            self._purge()
            if len(self._jobs) >= self.maxsize:
                return False
            self._jobs.append(job)
            self._changed.notify()
            return True

    def get(self, timeout: float | None = None, batchable: bool = False) -> Job | None:
        """The oldest live job, waiting up to `timeout`; None on timeout or once closed. With
        `batchable`, a streaming job at the head is left there (None is returned)."""
        with self._changed:
            self._changed.wait_for(lambda: self._closed or self._purge(), timeout)
            if not self._jobs or (batchable and self._jobs[0].stream):
                return None
            return self._jobs.popleft()

    def take_all(self) -> list[Job]:
        with self._changed:
            jobs, self._jobs = list(self._jobs), deque()
            return jobs

    def close(self) -> None:
        with self._changed:
            self._closed = True
            self._changed.notify_all()

    def _purge(self) -> int:
        if any(job.control.should_stop() for job in self._jobs):
            kept = deque(job for job in self._jobs if not job.control.should_stop())
            for _ in range(len(self._jobs) - len(kept)):
                self.on_drop()
            self._jobs = kept
        return len(self._jobs)


@dataclass
class BatcherStats:
    requests: int = 0
    generate_calls: int = 0
    stream_calls: int = 0
    batched_requests: int = 0  # requests answered by a generate call holding more than one
    largest_batch: int = 0
    stopped: int = 0  # requests dropped from the queue or cut short (client gone, deadline, shutdown)


class Batcher:
    """Owns the worker thread and the bounded queue in front of it."""

    def __init__(self, engine: Engine, max_batch_size: int = 8, batch_wait_ms: float = 10.0,
                 max_queue: int = 64):
        self.engine = engine
        self.max_batch_size = max_batch_size
        self.batch_wait = batch_wait_ms / 1000
        self.stats = BatcherStats()
        self.running: list[Job] = []
        self.draining = False
        self._queue = JobQueue(max_queue, on_drop=self._count_stopped)
        self._thread = threading.Thread(target=self._run, name="medvl-batcher", daemon=True)
        self._thread.start()

    @property
    def waiting(self) -> int:
        return len(self._queue)

    def check_room(self) -> None:
        """Raise what `submit` would for want of room now (503 draining, 429 full): the handler asks before it
        spends any work on a request (its images, its prompt)."""
        if self.draining:
            raise shutting_down()
        if len(self._queue) >= self._queue.maxsize:
            raise self._queue_full()

    def submit(self, job: Job) -> None:
        """Queue a job (from the event loop); 429 when the queue is full, 503 when draining."""
        if self.draining:
            raise shutting_down()
        job.loop = asyncio.get_running_loop()
        if not self._queue.put(job):
            raise self._queue_full()
        self.stats.requests += 1

    def _queue_full(self) -> APIError:
        return APIError(429, f"the server is busy ({self._queue.maxsize} requests waiting); retry shortly",
                        "queue_full", headers={"Retry-After": "1"})

    def drain(self) -> None:
        """Take no new jobs; the waiting ones get 503 now; the running ones go on."""
        self.draining = True
        for job in self._queue.take_all():
            self._count_stopped()
            job.stop(shutting_down())

    def stop_running(self, reason: APIError) -> None:
        for job in list(self.running):
            job.stop(reason)

    def close(self, timeout: float = 30.0) -> None:
        """Drain, then stop the worker after the job in progress."""
        self.drain()
        self._queue.close()
        self._thread.join(timeout)

    def _run(self) -> None:
        while (job := self._queue.get()) is not None:
            if job.stream:
                self._run_stream(job)
                continue
            batch = [job]
            deadline = time.monotonic() + self.batch_wait
            while len(batch) < self.max_batch_size:
                nxt = self._queue.get(max(deadline - time.monotonic(), 0), batchable=True)
                if nxt is None:
                    break
                batch.append(nxt)
            self._run_batch(batch)

    def _run_batch(self, batch: list[Job]) -> None:
        groups: dict[str, list[Job]] = {}
        for job in batch:
            groups.setdefault(job.settings.model_dump_json(), []).append(job)
        for jobs in groups.values():
            if self.draining:  # taken from the queue before the drain, not started: refused like the queue
                for job in jobs:
                    self._count_stopped()
                    job.stop(shutting_down())
                continue
            live = [job for job in jobs if not self._stopped(job)]
            if live:
                self._generate(live)

    def _generate(self, jobs: list[Job]) -> None:
        settings = jobs[0].settings.model_copy(update={"batch_size": self.max_batch_size})
        self.running = jobs
        try:
            self.stats.generate_calls += 1
            replies = self.engine.generate([job.request() for job in jobs], settings)
        except Exception:  # not one request's failure (those are replies): a setting or the engine itself
            log.exception("generation failed")
            for job in jobs:
                job.post("error", _failed())
            return
        finally:
            self.running = []
        if len(jobs) > 1:
            self.stats.batched_requests += len(jobs)
        self.stats.largest_batch = max(self.stats.largest_batch, len(jobs))
        for job, reply in zip(jobs, replies, strict=True):
            self._finish(job, reply)

    def _run_stream(self, job: Job) -> None:
        if self._stopped(job):
            return
        self.stats.stream_calls += 1
        self.running = [job]
        try:
            stream = self.engine.stream(job.request(), job.settings)
            for delta in stream:
                job.post("delta", delta)
        except Exception:
            log.exception("streaming generation failed")
            job.post("error", _failed())
            return
        finally:
            self.running = []
        self._finish(job, stream.reply)

    def _count_stopped(self) -> None:
        self.stats.stopped += 1

    def _stopped(self, job: Job) -> bool:
        if not job.control.should_stop():
            return False
        self._count_stopped()
        job.post("error", job.control.reason)
        return True

    def _finish(self, job: Job, reply: Reply | None) -> None:
        if reply is not None and reply.error is not None:
            log.error("generation failed: %s", reply.error)
            job.post("error", _failed())
        elif reply is None or reply.finish_reason == "cancelled":
            self._count_stopped()
            job.post("error", job.control.reason)
        else:
            job.post("done", reply)


def _failed() -> APIError:
    return APIError(500, "generation failed (the server log has the cause)", "generation_failed")
