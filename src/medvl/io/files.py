"""Output paths (atomic writes, the folders they go into), and the lock around a read-modify-write of
a file several processes share.

- `atomic_write_*`, `atomic_output`: write to a temporary file in the same folder, fsync, then
  rename. A reader (or a resumed run) sees either the old file or the complete new one, never a
  torn write, and a killed writer leaves the old one (or none) under the name. Each
  temporary name is new (`mkstemp`): two processes writing one file never share one (a fixed
  `.tmp` name made one rename the other's half-written file, and crash renaming its own). The file
  gets the mode a plain `open()` would give it (0666 less the umask), not `mkstemp`'s private 0600:
  a curated dataset or a report is for the team that shares the folder.
- `share_weights(folder)`: the same mode for the `*.safetensors` files a library saved there
  (safetensors writes them 0600, so a model saved into a shared folder or cache loaded for its
  owner only).
- `file_lock(path, doing)`: one process at a time (threads included) between reading a shared
  file (a cache) and writing it back, so no process's entry is lost to another's write. It is a
  `filelock.FileLock`, an `flock` that the kernel drops when its holder dies, however it dies;
  a process that has to wait logs what the holder is doing.
- `ensure_folder` / `check_file_target`: an output path that cannot be one (a file where a folder is
  needed, a folder where a file is) is an `OutputPathError` naming the path, not an OSError.
- `atomic_folder(path)`: a whole output folder (a saved model) written under a temporary name beside
  `path` and renamed onto it when complete, so a killed writer never leaves `path` looking finished;
  an existing `path` that is a file or holds anything is refused before any work. The temporary name
  (`.NAME.partial-PID-START-MACHINE-XXXX`) names its writer (`medvl.io.pids.ProcessRef`: pid, start
  time, machine and pid namespace), so the next `atomic_folder(path)` removes the partial folders a
  killed writer left for `path` and keeps those of a writer still running (or on another machine or
  pid namespace, or not named so: it cannot tell).
- `no_empty_folder_on_failure`: a command that fails before writing anything removes the output
  folders it created (eval run, build, prior, train, demo, curate train-classifier / train-text-filter).
- `refuse_overwriting_inputs`: an output that is one of the command's inputs (the same file once
  symlinks and `..` are resolved) is an `OutputPathError` before anything is written.
- `remove_partial_writes(folder)`: a SIGKILL inside `atomic_output` leaves its temporary file (the
  name stays right; the stray file stays too, forever). A run that holds the folder's lock, so that
  no other writer can be at work there, deletes them when it starts again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
from contextlib import contextmanager
from glob import escape as glob_escape
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from medvl.errors import UserError
from medvl.io.pids import ProcessRef

__all__ = ["OutputPathError", "share_weights", "atomic_output", "atomic_write_with", "atomic_write_bytes", "atomic_write_text",
           "atomic_write_json", "atomic_folder", "check_file_target", "check_new_folder", "check_folder_target", "ensure_folder", "file_lock", "no_empty_folder_on_failure",
           "refuse_overwriting_inputs", "remove_partial_writes"]

log = logging.getLogger(__name__)
# `atomic_output`'s temporary name for NAME: ".NAME.<mkstemp's 8 characters>.tmp<NAME's extension>"
_PARTIAL = re.compile(r"\.(?P<name>.+)\.[a-z0-9_]{8}\.tmp(?P<ext>\.[^.]*)?")


class OutputPathError(UserError, OSError):
    """An output path medvl cannot write: the message names it and what is in the way."""


def ensure_folder(path: str | Path) -> Path:
    """Create the folder `path` (and its parents) unless it exists; a file in the way is an OutputPathError."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise _file_in_the_way(path) from None
    except PermissionError:
        raise _permission_denied(path) from None
    except OSError as exc:  # a read-only file system, a full disk, a path under /proc
        raise OutputPathError(f"{path}: cannot create this folder ({exc.strerror or exc}); choose a folder you "
                              "can write to") from None
    return path


def check_folder_target(path: str | Path) -> None:
    """The OutputPathError `ensure_folder(path)` would raise for a file in the way or a parent it may not
    write in, found without creating anything (a check before other processes make the folder)."""
    path = Path(path)
    existing = next(p for p in (path, *path.parents) if p.exists() or p == Path(p.anchor))
    if not existing.is_dir():
        raise _file_in_the_way(path)
    if existing != path and not os.access(existing, os.W_OK | os.X_OK):
        raise _permission_denied(path)


def _file_in_the_way(path: Path) -> OutputPathError:
    blocker = next((p for p in (path, *path.parents) if p.exists() and not p.is_dir()), path)
    where = f"{path} is a file" if blocker == path else f"{path}: {blocker} is a file"
    return OutputPathError(f"{where}, not a folder; choose another output path or move that file")


def _permission_denied(path: Path) -> OutputPathError:
    return OutputPathError(f"{path}: permission denied creating this folder; choose a folder you can write to")


def check_file_target(path: str | Path) -> Path:
    """The folder of the output file `path`, created; `path` itself a folder is an OutputPathError."""
    path = Path(path)
    if path.is_dir():
        raise OutputPathError(f"{path} is a folder; give a file path for this output")
    ensure_folder(path.parent)
    return path


def refuse_overwriting_inputs(outputs: Iterable[str | Path], inputs: Iterable[str | Path], fix: str) -> None:
    """An `OutputPathError` naming both when one of `outputs` is one of `inputs` (see the module notes)."""
    by_target = {Path(source).resolve(): Path(source) for source in inputs}
    for output in outputs:
        source = by_target.get(Path(output).resolve())
        if source is not None:
            raise OutputPathError(f"{output} would overwrite the input {source}; {fix}")


@contextmanager
def no_empty_folder_on_failure(out: str | Path, enabled: bool = True) -> Iterator[None]:
    """When the block raises, the folders it created for `out` (`out` and parents that did not exist
    before it) are removed, deepest first, while they are still empty: a command that failed before
    writing anything leaves nothing behind. A folder that existed, or holds anything, stays."""
    out = Path(out)
    made = [folder for folder in (out, *out.parents) if not folder.exists()] if enabled else []
    try:
        yield
    except BaseException:
        for folder in made:
            try:
                folder.rmdir()
            except FileNotFoundError:  # never made (an `atomic_folder` target is made only at its end)
                continue
            except OSError:  # not empty (something was written, by this run or another process), or gone
                break
        raise


@contextmanager
def atomic_output(path: str | Path) -> Iterator[Path]:
    """A new temporary file beside `path` (same extension) for the block to write, e.g. a large JSONL
    streamed line by line; fsynced and renamed onto `path` when the block ends, deleted if it raises.
    A run killed meanwhile leaves `path` as it was."""
    path = check_file_target(path)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=f".tmp{path.suffix}")  # as _PARTIAL
    os.fchmod(fd, _plain_file_mode())
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        with tmp.open("rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def check_new_folder(path: str | Path, fix: str) -> Path:
    """`path` as a folder to create whole: one that exists as a file, or as a folder with anything in it, is
    an OutputPathError (`fix` says what to do). Nothing is created."""
    path = Path(path)
    if path.is_dir() and any(path.iterdir()):
        raise OutputPathError(f"{path} exists and is not empty; {fix}")
    check_folder_target(path)
    return path


@contextmanager
def atomic_folder(path: str | Path, fix: str = "remove it or choose a new folder") -> Iterator[Path]:
    """A new temporary folder beside `path` (`.NAME.partial-…`, mode as `mkdir` gives) for the block to
    fill; renamed onto `path` when the block ends, deleted if it raises. `path` must be new or empty
    (`check_new_folder`). A run killed meanwhile leaves no `path` (only the hidden partial folder, which
    the next `atomic_folder(path)` removes: see the module notes). Parent folders it made are removed
    again when the block raises while they are empty (`no_empty_folder_on_failure`)."""
    path = check_new_folder(path, fix)
    with no_empty_folder_on_failure(path):
        ensure_folder(path.parent)
        _remove_dead_partials(path)
        tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f"{_partial_prefix(path)}{_writer_tag()}-"))
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp's is private (0700)
        try:
            yield tmp
            if path.is_dir():
                path.rmdir()  # empty (checked above); rename cannot replace it on every platform
            os.replace(tmp, path)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise


_WRITER_TAG = re.compile(r"(\d+)-(\d+)-([0-9a-f]{12})-[^-]+")  # pid, start time, machine digest; mkdtemp's letters


def _partial_prefix(path: Path) -> str:
    return f".{path.name}.partial-"


def _machine_digest(machine: str) -> str:
    return hashlib.sha256(machine.encode()).hexdigest()[:12]


def _writer_tag() -> str:
    me = ProcessRef.current()
    return f"{me.pid}-{me.started or 0}-{_machine_digest(me.machine)}"


def _remove_dead_partials(path: Path) -> None:
    """Delete the partial folders for `path` whose writer (named in the folder's name) is gone."""
    here = ProcessRef.current().machine
    prefix = _partial_prefix(path)
    for partial in path.parent.glob(f"{glob_escape(prefix)}*"):
        named = _WRITER_TAG.fullmatch(partial.name[len(prefix):])
        if not (here and named and named[3] == _machine_digest(here)):
            continue  # not named by a writer on this machine and pid namespace: it may still be written
        if not ProcessRef(int(named[1]), named[2], here).alive():
            log.info("removing %s, left by a medvl run that was killed (pid %s)", partial, named[1])
            shutil.rmtree(partial, ignore_errors=True)


def remove_partial_writes(folder: str | Path) -> list[Path]:
    """Delete the temporary files that killed `atomic_output` writers left anywhere under `folder`; the
    caller makes sure none is still writing (it holds the folder's lock). Returns what was deleted."""
    removed = []
    for path in Path(folder).rglob(".*.tmp*"):
        match = _PARTIAL.fullmatch(path.name)
        if match and path.is_file() and Path(match["name"]).suffix == (match["ext"] or ""):
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


def _plain_file_mode() -> int:
    """0666 less the process's umask."""
    return 0o666 & ~_umask()


def _umask() -> int:
    """The process's umask (read from /proc where Linux shows it, else set and restored at once)."""
    try:
        status = Path("/proc/self/status").read_text()
        mask = int(next(line.split()[1] for line in status.splitlines() if line.startswith("Umask:")), 8)
    except (OSError, StopIteration, ValueError, IndexError):
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def share_weights(folder: str | Path) -> None:
    """Give the `*.safetensors` files in `folder` the mode a plain `open()` would (see the module notes)."""
    mode = _plain_file_mode()
    for weights in Path(folder).glob("*.safetensors"):
        os.chmod(weights, mode)


def atomic_write_with(path: str | Path, write: Callable[[Path], None]) -> Path:
    """`write(tmp)` (e.g. a figure's `savefig`) into `atomic_output(path)`."""
    with atomic_output(path) as tmp:
        write(tmp)
    return Path(path)


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    return atomic_write_with(path, lambda tmp: tmp.write_bytes(data))


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj: Any, indent: int | None = 2) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=indent, ensure_ascii=False) + "\n")


@contextmanager
def file_lock(path: str | Path, doing: str) -> Iterator[None]:
    """Hold the lock file `path` (see the module notes); `doing` says what its holder does, for the log."""
    from filelock import FileLock, Timeout

    lock = FileLock(path)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        log.info("waiting for another process %s", doing)
        lock.acquire()
    try:
        yield
    finally:
        lock.release()
