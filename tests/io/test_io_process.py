"""Process safety: a folder takes one writer (a lock naming its pid, taken over from the dead), and a
worker started in its own session dies with its parent."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest

from medvl.io.process import (
    LOCK_NAME,
    FolderInUse,
    ProcessRef,
    RunLock,
    die_with_launcher,
    die_with_process,
    running,
)

HOLD = textwrap.dedent("""
    import sys, time
    from medvl.io.process import RunLock
    RunLock(sys.argv[1]).acquire()
    print("locked", flush=True)
    time.sleep(600)
""")


def wait_gone(pid: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while running(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    return not running(pid)


def test_a_second_writer_is_refused_naming_the_holder_and_a_dead_holders_lock_is_taken_over(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(FolderInUse) as refused:
            RunLock(tmp_path, what="training run").acquire()
        message = str(refused.value)
        assert "\n" not in message
        assert f"{tmp_path} is in use by another training run (pid {holder.pid} on " in message
    finally:
        holder.kill()
        holder.wait()
    assert json.loads((tmp_path / LOCK_NAME).read_text())["pid"] == holder.pid  # left behind by SIGKILL
    with RunLock(tmp_path) as lock:
        assert json.loads(lock.path.read_text())["pid"] == os.getpid()
        with pytest.raises(FolderInUse, match=f"pid {os.getpid()} "):
            RunLock(tmp_path).acquire()  # one writer, even within one process
    assert not (tmp_path / LOCK_NAME).exists()
    with RunLock(tmp_path):  # released: free again
        pass


CHILD = textwrap.dedent("""
    import sys, time
    from medvl.io import process
    if sys.argv[1] == "watchdog":  # as where prctl is not available
        process._set_parent_death_signal = lambda sig: False
    process.die_with_parent(poll_s=0.2)
    print("armed", flush=True)
    time.sleep(600)
""")
LAUNCHER = textwrap.dedent("""
    import subprocess, sys
    child = subprocess.Popen([sys.executable, "-c", sys.argv[1], sys.argv[2]], start_new_session=True)
    print(child.pid, flush=True)
    child.wait()
""")


@pytest.mark.parametrize("mechanism", ["prctl", "watchdog"])
@pytest.mark.parametrize("kill", ["process group", "launcher alone"])
def test_a_worker_in_its_own_session_dies_with_its_launcher(mechanism, kill):
    # Like torch.distributed.run, the launcher starts its worker in a new session: killing the
    # launcher's process group does not reach the worker; only the parent-death guard does.
    launcher = subprocess.Popen([sys.executable, "-c", LAUNCHER, CHILD, mechanism], stdout=subprocess.PIPE,
                                text=True, start_new_session=True)
    worker = int(launcher.stdout.readline())
    try:
        assert launcher.stdout.readline().strip() == "armed"
        assert os.getpgid(worker) != os.getpgid(launcher.pid)
        if kill == "process group":
            os.killpg(launcher.pid, signal.SIGKILL)
        else:
            os.kill(launcher.pid, signal.SIGKILL)
        launcher.wait()
        assert wait_gone(worker, 10), f"worker {worker} outlived its launcher"
    finally:
        if running(worker):
            os.kill(worker, signal.SIGKILL)


SLOW_WORKER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    time.sleep(1.0)  # a worker's imports, before its first line arms the guard
    from medvl.io.process import die_with_launcher
    die_with_launcher()
    Path(sys.argv[1], "armed").touch()
    time.sleep(600)
""")


def test_a_worker_whose_launcher_died_before_it_armed_its_guard_dies_as_it_arms(tmp_path):
    # `medvl launch` records its pid and becomes the launcher, which starts the worker in a new session
    # and is killed at once: the worker arms its guard a second later, when its parent is already
    # someone else, and must still die rather than train on as an orphan.
    command = [sys.executable, "-m", "medvl.cli", "launch", "--", sys.executable, "-c", LAUNCHER, SLOW_WORKER,
               str(tmp_path)]
    launcher = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, start_new_session=True,
                                env={**os.environ, "LOCAL_RANK": "0"})
    worker = int(launcher.stdout.readline())
    try:
        os.kill(launcher.pid, signal.SIGKILL)  # the pid `medvl launch` recorded: exec kept it
        launcher.wait()
        assert wait_gone(worker, 10), f"worker {worker} outlived a launcher that died before it armed its guard"
        assert not (tmp_path / "armed").exists()
    finally:
        if running(worker):
            os.kill(worker, signal.SIGKILL)


def test_launching_a_program_that_is_not_there_is_one_line(medvl):
    result = medvl("launch", "no-such-launcher", "launch", "-m", "medvl.cli", "train", "x.yaml")
    assert result.code == 2 and result.err.strip().splitlines() == [
        f"error: no-such-launcher: not found on PATH nor beside {sys.executable}; give the launcher and its "
        "arguments, e.g. medvl launch accelerate launch --config_file CONFIG -m medvl.cli train TRAIN.yaml"]


def test_a_process_is_running_until_every_thread_has_exited():
    # The main thread exits first and shows as a zombie while another thread still runs (as in a
    # SIGKILLed multi-threaded worker whose threads have not all exited): still running.
    code = ("import ctypes, threading, time; threading.Thread(target=time.sleep, args=(600,)).start(); "
            "print('up', flush=True); ctypes.CDLL(None).pthread_exit(None)")
    process = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == "up"
    deadline = time.monotonic() + 10
    while psutil.Process(process.pid).status() != psutil.STATUS_ZOMBIE:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    assert running(process.pid) and running(os.getpid())
    process.kill()
    assert wait_gone(process.pid, 10)  # a zombie, not reaped yet: gone
    process.wait()
    assert not running(process.pid)


def test_only_launched_workers_tie_themselves_to_their_parent(monkeypatch):
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    assert die_with_launcher() is False  # `nohup medvl train &` must outlive its shell


WATCHER = textwrap.dedent("""
    import sys, time
    from medvl.io.process import ProcessRef, die_with_process
    ref = ProcessRef.of(int(sys.argv[1]))
    print(die_with_process(ref), flush=True)
    time.sleep(60)
""")


def test_a_task_dies_once_the_process_it_watches_is_gone_but_not_while_it_lives():
    driver = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    task = subprocess.Popen([sys.executable, "-c", WATCHER, str(driver.pid)], stdout=subprocess.PIPE, text=True)
    try:
        assert task.stdout.readline().strip() == "True"
        assert not wait_gone(task.pid, 1.0)  # the driver lives: the task goes on
        driver.kill()
        driver.wait()
        assert wait_gone(task.pid, 5.0)
    finally:
        for process in (driver, task):
            process.kill()
            process.wait()
    here = ProcessRef.current()
    elsewhere = ProcessRef(here.pid, here.started, "another-boot-id/1")
    assert here.visible() and not elsewhere.visible()  # a pid names a process only on its own machine
    assert die_with_process(elsewhere) is False


REAPED = textwrap.dedent("""
    import subprocess, sys, time
    from medvl.io.process import reap_on_exit
    helper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True)
    reap_on_exit([helper.pid])
    print(helper.pid, flush=True)
    time.sleep(60)
""")


def test_helpers_handed_to_the_reaper_die_when_their_starter_is_sigkilled():
    starter = subprocess.Popen([sys.executable, "-c", REAPED], stdout=subprocess.PIPE, text=True)
    helper = int(starter.stdout.readline())
    try:
        assert not wait_gone(helper, 1.0)
        starter.kill()  # the starter alone; the helper is in a session of its own
        starter.wait()
        assert wait_gone(helper, 5.0)
    finally:
        starter.kill()
        if running(helper):
            os.kill(helper, signal.SIGKILL)


def test_the_launch_test_helper_kills_only_what_it_started(two_cpu_processes):
    """`two_cpu_processes` killed by pid at teardown: a launcher it had waited for, or a worker gone
    since, whose pid another process had taken by then, took that process down with it. The reuse is
    played by pointing the finished launcher's and worker's records at a bystander's pid."""
    sleep = [sys.executable, "-c", "import time; time.sleep(60)"]
    bystander = subprocess.Popen(sleep)
    try:
        worker = subprocess.Popen(sleep)
        recorded = psutil.Process(worker.pid)  # as `workers()` records them
        worker.kill()
        worker.wait()
        launcher = subprocess.Popen([sys.executable, "-c", ""])
        launcher.wait()
        launcher.pid, recorded._pid = bystander.pid, bystander.pid  # both pids taken by the bystander since
        two_cpu_processes.launcher, two_cpu_processes._workers = launcher, [recorded]
        two_cpu_processes.close()
        with pytest.raises(subprocess.TimeoutExpired):  # a SIGKILLed bystander would be gone well before
            bystander.wait(timeout=1)
    finally:
        bystander.kill()
        bystander.wait()
