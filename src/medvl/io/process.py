"""Process safety for long jobs: one writer per output folder, and workers that die with their launcher.

- `RunLock(folder)` makes a folder single-writer. It holds an exclusive `flock` on
  `folder/.medvl.lock`, a file that names the owner (pid, host, start time). A second writer gets
  `FolderInUse` (a `UserError`: the CLI prints one line naming the holder). The kernel drops a
  `flock` when its owner dies, however it dies (SIGKILL included), so a lock file left behind by a
  dead process is simply taken over; there is no stale-lock timeout to tune. The lock is advisory
  (it keeps out other `RunLock` users, not arbitrary writers) and POSIX-only. Use it as a context
  manager; the main process of a multi-process job takes it for the whole job.
- `die_with_parent()` makes the calling process die when its parent does: Linux's
  `prctl(PR_SET_PDEATHSIG)` has the kernel send the signal (default SIGKILL) at once; elsewhere a
  daemon thread polls the parent pid. Launchers such as `torch.distributed.run` (behind
  `accelerate launch`) start each worker in its own session, so `kill -9 -<launcher's pgid>` never
  reaches the workers and a killed launcher leaves them training and writing; a worker that calls
  `die_with_parent()` (or `die_with_launcher()`, which does so only when a launcher's `LOCAL_RANK`
  is set) cannot outlive it. Call it first thing in the worker: a parent that died before the call
  goes unnoticed unless its pid is passed as `parent`. A launched worker learns its launcher's pid
  from `MEDVL_LAUNCHER_PID` when the launcher was started through `exec_launcher` (`medvl launch`,
  which records its own pid and then becomes the launcher): `die_with_launcher` then kills the
  worker at once if that launcher died before the guard was armed (a worker is some imports away
  from its first line; without the record, a launcher killed in that window leaves it orphaned).
  Linux ties the signal to the parent *thread* that started the worker, so the launcher must start
  workers from a thread that lives as long as it does (the main thread, as torch's launcher and
  `multiprocessing` do).
- `die_with_process(ref)` (a `medvl.io.pids.ProcessRef`: pid, start time, machine) is the guard
  for a task started by a cluster rather than by its caller (a Ray task): a daemon thread polls `ref`
  (when it is on this machine) and SIGKILLs the listed pids (e.g. the task's own host process) and
  then the caller once it is gone. `reap_on_exit(pids)` is the reverse: a small sidecar process that
  SIGKILLs `pids` when the calling process dies, however it dies (its stdin pipe from the caller
  reads EOF); for helper processes that would otherwise outlive it.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import threading
import time
from pathlib import Path
from typing import Any

from medvl.errors import UserError
from medvl.io.files import ensure_folder
from medvl.io.pids import PPID_FIELD, ProcessRef, running, start_time, stat_field

__all__ = ["RunLock", "FolderInUse", "LOCK_NAME", "LAUNCHER_PID_ENV", "LauncherNotFound", "ProcessRef",
           "die_with_parent", "die_with_launcher", "die_with_process", "descendants", "exec_launcher", "find_launcher",
           "reap_on_exit", "running"]

LOCK_NAME = ".medvl.lock"
LAUNCHER_PID_ENV = "MEDVL_LAUNCHER_PID"  # set by `exec_launcher`: the pid of the launcher of this process
_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
_guarded: set[tuple[int, int]] = set()  # (parent pid, signal) already armed in this process


class FolderInUse(UserError, RuntimeError):
    """Another live process holds the folder's `RunLock`; the message names it."""


class LauncherNotFound(UserError, FileNotFoundError):
    """`find_launcher` was given a program that is not on PATH nor beside this Python."""


class RunLock:
    """An exclusive, crash-safe lock on `folder`, holding the owner's pid (see the module docstring)."""

    def __init__(self, folder: str | Path, what: str = "run"):
        self.folder = Path(folder)
        self.path = self.folder / LOCK_NAME
        self.what = what  # names the job in the refusal: "... in use by another {what}"
        self._fd: int | None = None

    def acquire(self) -> "RunLock":
        import fcntl

        ensure_folder(self.folder)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _read_holder(fd)
                os.close(fd)
                raise FolderInUse(
                    f"{self.folder} is in use by another {self.what} ({_describe(holder)}): wait for it to finish "
                    f"or stop it; one folder takes one writer at a time"
                ) from None
            if _is_current_file(fd, self.path):  # not unlinked by a holder releasing it meanwhile
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        owner = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%dT%H:%M:%S")}
        os.write(fd, (json.dumps(owner) + "\n").encode())
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is None:
            return
        import fcntl

        self.path.unlink(missing_ok=True)  # while still locked: nobody can be handed a file about to vanish
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def die_with_parent(sig: int = signal.SIGKILL, parent: int | None = None, poll_s: float = 1.0) -> None:
    """Have this process receive `sig` when its parent process exits (see the module docstring).

    `parent`: the pid the caller expects as its parent; if it is already gone, `sig` comes now.
    Calling it again (e.g. from a CLI and then from the library function it runs) is a no-op.
    """
    expected = os.getppid() if parent is None else parent
    if (expected, sig) in _guarded:
        return
    if not _set_parent_death_signal(sig):
        threading.Thread(target=_watch_parent, args=(expected, sig, poll_s), name="die-with-parent",
                         daemon=True).start()
    _guarded.add((expected, sig))
    if os.getppid() != expected:  # the parent died before the signal was armed
        os.kill(os.getpid(), sig)


def die_with_launcher(sig: int = signal.SIGKILL) -> bool:
    """`die_with_parent()` when a launcher (torchrun, `accelerate launch`, deepspeed) started this
    process, i.e. `LOCAL_RANK` is set; True if so. A plain command is left alone: `nohup medvl
    train ... &` must outlive its shell. Where the launcher recorded its pid (`exec_launcher`) and
    it is gone already, `sig` comes now."""
    if "LOCAL_RANK" not in os.environ:
        return False
    die_with_parent(sig)
    launcher = os.environ.get(LAUNCHER_PID_ENV, "")
    if launcher.isdigit() and not running(int(launcher)):  # it died before the guard above was armed
        os.kill(os.getpid(), sig)
    return True


def find_launcher(argv: list[str]) -> str:
    """The program file of launcher command `argv`: on PATH, else beside this Python (the launchers
    installed with medvl, when medvl runs as `/venv/bin/medvl` without the venv on PATH)."""
    import shutil
    import sys

    example = "e.g. medvl launch accelerate launch --config_file CONFIG -m medvl.cli train TRAIN.yaml"
    if not argv:
        raise LauncherNotFound(f"no launcher given; {example}")
    if argv[0].startswith("-"):
        raise LauncherNotFound(f"{argv[0]}: medvl launch takes no options of its own; the launcher comes first and "
                               f"the options after it, {example}")
    program = shutil.which(argv[0]) or shutil.which(argv[0], path=os.path.dirname(sys.executable))
    if program is None:
        raise LauncherNotFound(f"{argv[0]}: not found on PATH nor beside {sys.executable}; give the launcher and "
                               f"its arguments, {example}")
    return program


def exec_launcher(program: str, argv: list[str]) -> None:
    """Become the launcher `argv` (e.g. `accelerate launch ...`), running program file `program`
    (`find_launcher(argv)`; this process's pid is kept), with `MEDVL_LAUNCHER_PID` set to that pid
    so its workers can tell if it died before they armed `die_with_launcher`. Does not return."""
    os.environ[LAUNCHER_PID_ENV] = str(os.getpid())
    os.execv(program, argv)


def die_with_process(ref: ProcessRef, kill_first: tuple[int, ...] = (), poll_s: float = 0.2) -> bool:
    """SIGKILL `kill_first`, then this process, once `ref` is gone; False (nothing armed) where
    `ref` lives on another machine or pid namespace."""
    if not ref.visible():
        return False

    def watch() -> None:
        while ref.alive():
            time.sleep(poll_s)
        for pid in kill_first:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        os.kill(os.getpid(), signal.SIGKILL)

    threading.Thread(target=watch, name="die-with-process", daemon=True).start()
    return True


_REAPER = """
import os, signal, sys
sys.stdin.buffer.read()  # EOF: the process that started us is gone
for entry in sys.argv[1:]:
    pid, started = entry.split(":", 1)
    try:
        with open(f"/proc/{pid}/stat") as stat:
            same = stat.read().rsplit(")", 1)[1].split()[19] == started
        if same:
            os.kill(int(pid), signal.SIGKILL)
    except (OSError, IndexError):
        pass
"""
_reapers: list[Any] = []  # the sidecars' Popen objects: their stdin pipes must stay open while we live


def reap_on_exit(pids: list[int]) -> None:
    """Start a sidecar that SIGKILLs `pids` (those still the same processes) when this process dies
    (module docstring). Linux only (/proc); elsewhere a no-op."""
    import subprocess
    import sys

    entries = [f"{pid}:{started}" for pid in pids if (started := start_time(pid))]
    if not entries:
        return
    _reapers.append(subprocess.Popen([sys.executable, "-c", _REAPER, *entries], stdin=subprocess.PIPE,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))


def descendants(pid: int) -> list[int]:
    """The live descendants of `pid` (Linux /proc; elsewhere none)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        parent = stat_field(stat, PPID_FIELD)
        if parent.isdigit():
            children.setdefault(int(parent), []).append(int(stat.parent.name))
    found, stack = [], [pid]
    while stack:
        for child in children.get(stack.pop(), []):
            found.append(child)
            stack.append(child)
    return found


def _set_parent_death_signal(sig: int) -> bool:
    """Linux's PR_SET_PDEATHSIG through libc; False where it is not available."""
    import ctypes
    import ctypes.util
    import sys

    if not sys.platform.startswith("linux"):
        return False
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    return libc.prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0) == 0


def _watch_parent(parent: int, sig: int, poll_s: float) -> None:
    while os.getppid() == parent:
        time.sleep(poll_s)
    os.kill(os.getpid(), sig)


def _read_holder(fd: int) -> dict[str, Any]:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        return json.loads(os.read(fd, 4096).decode() or "{}")
    except (OSError, ValueError):
        return {}


def _describe(holder: dict[str, Any]) -> str:
    if not holder.get("pid"):
        return "a process that is just starting"
    return f"pid {holder['pid']} on {holder.get('host', '?')}, since {holder.get('since', '?')}"


def _is_current_file(fd: int, path: Path) -> bool:
    try:
        return os.fstat(fd).st_ino == os.stat(path).st_ino
    except FileNotFoundError:
        return False
