"""A killed `medvl build` leaves no folder that looks like a model, and the hidden partial folder it
leaves is removed by the next run writing there, while a partial folder a live run fills is kept
(`medvl.io.files.atomic_folder`)."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

from typer.testing import CliRunner

from medvl.cli import build_app
from medvl.io.files import atomic_folder

_HOLD_OPEN = """
import sys, time
from medvl.io.files import atomic_folder
with atomic_folder(sys.argv[1]) as partial:
    print(partial, flush=True)
    time.sleep(120)
"""


def _wait_for(predicate, process: subprocess.Popen, seconds: float = 180):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and process.poll() is None:
        if found := predicate():
            return found
        time.sleep(0.005)
    return predicate()


def test_a_killed_build_leaves_no_model_and_a_rerun_removes_its_partial_folder(tmp_path, smol_tokenizer):
    spec = tmp_path / "spec.yaml"
    spec.write_text(f"text: {{tokenizer: '{smol_tokenizer}', hidden_size: 64, num_layers: 1, num_heads: 2, "
                    "intermediate_size: 64}\nvision: {image_size: 32, patch_size: 8, hidden_size: 32, num_layers: 1, "
                    "num_heads: 2, intermediate_size: 64}\nchat_template: chatml\n")
    out = tmp_path / "runs" / "m"
    build = subprocess.Popen([sys.executable, "-m", "medvl.cli", "build", str(spec), str(out)],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        partials = _wait_for(lambda: list(out.parent.glob(".m.partial-*")), build)
        build.send_signal(signal.SIGKILL)
    finally:
        build.kill()
        build.wait()
    # before: the build wrote into runs/m as it went (no partial folder), and a kill left what it had
    assert build.returncode == -signal.SIGKILL and partials, "the build finished before a partial folder appeared"
    assert not out.exists() and list(out.parent.glob(".m.partial-*")) == partials

    result = CliRunner().invoke(build_app(), ["build", str(spec), str(out)])
    assert result.exit_code == 0, result.output
    assert (out / "config.json").is_file() and "from_pretrained('m')" in (out / "README.md").read_text()
    assert list(out.parent.glob(".m.partial-*")) == []  # the killed run's partial is gone


def test_only_partial_folders_of_dead_writers_are_removed(tmp_path):
    out = tmp_path / "m"
    writers = [subprocess.Popen([sys.executable, "-c", _HOLD_OPEN, str(out)], stdout=subprocess.PIPE, text=True)
               for _ in range(2)]
    try:
        dead, live = (writer.stdout.readline().strip() for writer in writers)
        writers[0].kill()
        writers[0].wait()
        unknown = tmp_path / ".m.partial-x1y2z3"  # not named by a writer: nothing tells whether one still fills it
        unknown.mkdir()
        with atomic_folder(out) as partial:
            (partial / "config.json").write_text("{}")
        assert (out / "config.json").is_file()
        assert not (tmp_path / dead).exists()  # before: every partial stayed forever
        assert (tmp_path / live).is_dir() and unknown.is_dir()
        assert writers[1].poll() is None
    finally:
        for writer in writers:
            writer.kill()
            writer.wait()
