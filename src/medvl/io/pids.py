"""Whether a process still lives, told by another process (no other medvl module needed).

- `ProcessRef.current()` names this process so that another process, even one started by a
  cluster rather than by it (a Ray task, `medvl.io.process.die_with_process`), or one that finds a
  folder this process named after itself (`medvl.io.files.atomic_folder`), can tell whether it still
  lives: pid plus start time (pids are reused) plus the machine (boot id) and pid namespace it lives
  in — a pid means nothing elsewhere.
- `running(pid)` says whether any thread of a process is still running. A SIGKILLed multi-threaded
  process can show its main thread as a zombie while other threads are still exiting, holding its
  files and locks; "gone" means every thread is.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

__all__ = ["PPID_FIELD", "ProcessRef", "running", "start_time", "stat_field"]


@dataclass(frozen=True)
class ProcessRef:
    """One process, across pid reuse and machines (module docstring)."""

    pid: int
    started: str  # /proc/<pid>/stat start time, in clock ticks since boot
    machine: str  # boot id + pid namespace: where `pid` means this process

    @classmethod
    def of(cls, pid: int) -> "ProcessRef":
        """Process `pid` of this machine (started "" when there is none)."""
        return cls(pid, start_time(pid), _machine())

    @classmethod
    def current(cls) -> "ProcessRef":
        return cls.of(os.getpid())

    def visible(self) -> bool:
        """Whether this process's pids are the ones `self.pid` is in (same machine, same pid namespace)."""
        return bool(self.machine) and self.machine == _machine()

    def alive(self) -> bool:
        return start_time(self.pid) == self.started and running(self.pid)


def running(pid: int) -> bool:
    """Whether any thread of process `pid` is still running (zombies are not; see the module docstring)."""
    if not Path("/proc/self/task").is_dir():  # no procfs: the process-level answer
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            pass
        return True
    try:
        states = [stat_field(task / "stat", _STATE) for task in Path(f"/proc/{pid}/task").iterdir()]
    except FileNotFoundError:
        return False
    return any(state not in ("Z", "X", "") for state in states)


_STATE, PPID_FIELD, _START_TIME = 0, 1, 19  # fields of /proc/<pid>/stat counted from the one after "(comm)"


def stat_field(stat: Path, index: int) -> str:
    """One field of a /proc `stat` file ("" when the process exited meanwhile or there is no procfs)."""
    try:
        return stat.read_text().rsplit(")", 1)[1].split()[index]  # comm may hold spaces and ")"
    except (OSError, IndexError):
        return ""


def start_time(pid: int) -> str:
    return stat_field(Path(f"/proc/{pid}/stat"), _START_TIME)


def _machine() -> str:
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        return f"{boot}/{os.stat('/proc/self/ns/pid').st_ino}"
    except OSError:
        return ""
