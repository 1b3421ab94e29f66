"""The local and Ray executors of `medvl curate run`: datatrove's, with task processes that cannot
outlive the process that runs the stage (the driver).

datatrove's own `run()` starts a `multiprocess` manager process (for one worker too) and, for
several workers, a forkserver pool whose workers are the forkserver's children. SIGKILL of the main
process alone (what the OOM killer sends) left the manager, the forkserver, its resource tracker
and the pool workers alive: the workers went on generating and paying for LLM requests while the
resumed run redid their rows, and nothing ever ended them.

Here one worker runs the tasks in the calling process, as datatrove does, without the manager;
several run in a `spawn` pool whose processes are children of the calling process and, before
anything else, call `medvl.io.process.die_with_parent` — the kernel kills them the moment it dies,
however it dies. The resource tracker that the pool's locks start exits by itself once no process
of the run holds its pipe. A spawned worker imports medvl afresh (about a second per worker and
stage); tasks are long.

On Ray (`RayExecutor`), a task runs in a process of the cluster: datatrove's `RankWorker` actor,
which forks a `multiprocess` pool child that runs the pipeline. Ray ends a dead driver's actors
on its own schedule: with the local cluster that `medvl curate run` starts, a SIGKILLed driver's
tasks went on generating (and paying) for about 1.3 s, after the run's lock was free. Here the
pool child dies with its actor (`die_with_parent`), and, where the driver is on the same machine,
watches the driver (`die_with_process`): once it is gone, it SIGKILLs the actor and itself within
0.2 s. A driver on another machine than the task's is left to Ray (its actors die with their
owner); so is the cluster itself, which is never touched. `ensure_ray` connects the driver to
`engine.ray.address`, or starts a local cluster whose processes die with the driver.

datatrove logs a failed task with its traceback. A task that stops on a `UserError` (the LLM
endpoint cannot be reached, records left to retry) logs its message alone: the `medvl` command
prints that message as its one error line, whichever process the task ran in.

datatrove prints a task's INFO lines (its pipeline, its per-step stats) on the console when the
task's local rank is 0, and only its errors otherwise. `medvl curate` prints its own progress and
report, so every task runs as a non-zero local rank (`_console_rank`): datatrove's lines stay in the
task's log file (`_work/logs/<stage>/logs/task_*.log`); `MEDVL_LOG=DEBUG` shows them again.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
from copy import deepcopy
from typing import Any
from urllib.parse import urlsplit

from datatrove.executor import LocalPipelineExecutor
from datatrove.executor.ray import RayPipelineExecutor
from datatrove.utils.logging import logger
from datatrove.utils.stats import PipelineStats

from medvl.errors import UserError
from medvl.io.console import setup_console
from medvl.io.process import ProcessRef, descendants, die_with_parent, die_with_process, reap_on_exit

__all__ = ["LocalExecutor", "RayExecutor", "ensure_ray"]

log = logging.getLogger(__name__)

_worker_slot = 0  # in a pool worker: its index, so that only worker 0 logs to the console (as datatrove)


class _UserErrorsWithoutTraceback:
    """Runs a task with datatrove's logger leaving out the traceback of a `UserError` (module notes)."""

    def _run_for_rank(self, rank: int, local_rank: int = 0, node_rank: int = -1) -> PipelineStats:
        logger.configure(patcher=_drop_user_error_traceback)  # survives datatrove's own handler setup
        return super()._run_for_rank(rank, _console_rank(local_rank), node_rank)


def _console_rank(local_rank: int) -> int:
    """The local rank datatrove is told, which only decides what it prints (module notes): errors alone,
    unless MEDVL_LOG=DEBUG."""
    return local_rank if os.environ.get("MEDVL_LOG", "").upper() == "DEBUG" else max(local_rank, 1)


def _drop_user_error_traceback(record: Any) -> None:
    exception = record["exception"]
    if exception is not None and isinstance(exception.value, UserError):
        record["exception"] = None


class LocalExecutor(_UserErrorsWithoutTraceback, LocalPipelineExecutor):
    """`LocalPipelineExecutor` whose workers die with the process that runs it (module docstring)."""

    def run(self) -> PipelineStats | None:
        ranks = self.get_incomplete_ranks(range(self.tasks))
        if not ranks:
            log.info("all %d tasks of this stage finished in an earlier run", self.tasks)
            return None
        self.save_executor_as_json()
        if self.workers == 1:
            pipeline, stats = self.pipeline, []
            for rank in ranks:
                self.pipeline = deepcopy(pipeline)  # a task's steps keep state
                stats.append(self._run_for_rank(rank))
            self.pipeline = pipeline
        else:
            import multiprocess

            context = multiprocess.get_context("spawn")
            workers = min(self.workers, len(ranks))
            slots = context.SimpleQueue()
            for slot in range(workers):
                slots.put(slot)
            with context.Pool(workers, initializer=_start_worker, initargs=(os.getpid(), slots)) as pool:
                stats = list(pool.imap_unordered(self._run_in_worker, ranks))
        merged = sum(stats, start=PipelineStats())
        with self.logging_dir.open("stats.json", "wt") as handle:
            merged.save_to_disk(handle)
        return merged

    def _run_in_worker(self, rank: int) -> PipelineStats:
        return self._run_for_rank(rank, _worker_slot)


def _start_worker(main_pid: int, slots: Any) -> None:
    """Pool initializer: die with the main process (gone already: die now), log as the main process
    does, then take a slot."""
    global _worker_slot
    die_with_parent(signal.SIGKILL, parent=main_pid)
    setup_console()
    _worker_slot = slots.get()


class RayExecutor(_UserErrorsWithoutTraceback, RayPipelineExecutor):
    """`RayPipelineExecutor` whose task processes die with the driver that built it (module docstring)."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.driver = ProcessRef.current()

    def _run_for_rank(self, rank: int, local_rank: int = 0, node_rank: int = -1) -> PipelineStats:
        import multiprocess

        actor = multiprocess.parent_process()  # datatrove runs each rank in a pool child of its actor
        if actor is None:  # run in the actor itself: it is the one to kill
            die_with_process(self.driver)
        else:
            die_with_parent(signal.SIGKILL, parent=actor.pid)
            die_with_process(self.driver, kill_first=(actor.pid,))
        return super()._run_for_rank(rank, local_rank, node_rank)


def ensure_ray(address: str | None) -> None:
    """Connect to the cluster at `address` (`engine.ray.address`), or start a local cluster that dies with
    this process: Ray kills its GCS and raylet with the driver, but its agents (children of the raylet)
    lingered a minute or more after a SIGKILL of the driver alone; a sidecar (`reap_on_exit`) ends them."""
    import ray

    if ray.is_initialized():
        return
    before = set(descendants(os.getpid()))
    _check_reachable(address)
    try:
        ray.init(address=address, include_dashboard=False, log_to_driver=False)
    except ConnectionError as error:  # e.g. a cluster with token auth (Ray 2.60's `ray start` default)
        raise UserError(f"engine.ray.address={address or 'local'}: Ray could not connect ({error}); check the "
                        "address, the cluster's auth token (RAY_AUTH_TOKEN) and that it is running") from None
    if address is None:
        reap_on_exit([pid for pid in descendants(os.getpid()) if pid not in before])


def _check_reachable(address: str | None, timeout_s: float = 10.0) -> None:
    """A `host:port` (or `ray://host:port`) where nothing accepts a connection is one error line:
    `ray.init` would wait there for minutes. `auto` and unset (a local cluster) are Ray's to resolve."""
    if address is None or address == "auto":
        return
    where = urlsplit(address if "://" in address else f"ray://{address}")
    try:
        host, port = where.hostname, where.port
    except ValueError:  # a port that is not a number
        host = port = None
    if not host or not port:
        raise UserError(f"engine.ray.address={address}: expected HOST:PORT (or ray://HOST:PORT, or auto)")
    try:
        socket.create_connection((host, port), timeout=timeout_s).close()
    except OSError as error:
        raise UserError(f"engine.ray.address={address}: nothing answers there ({error}); start the cluster "
                        "(ray start --head) or fix the address") from None
