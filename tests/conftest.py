"""Shared test fixtures: offline tokenizer/weights, a tiny saved model, the shared data folder,
`medvl` (the entry point run as a user runs it: exit status, stdout, stderr), `unreachable_url`
(an LLM base_url where connections are refused), `wrong_key_endpoint` (an LLM server that
rejects the key it is sent), `unusable_llm` (either, as `llm` settings) and `two_cpu_processes`
(`accelerate launch` of a medvl command on 2 CPU processes, to run, or to kill and check for orphans).

Tiny models are built in-process from configs (random weights) around SmolLM2's real tokenizer,
so nothing is downloaded. `MEDVL_CACHE` defaults to a folder under the pytest cache so runs reuse
the materialised tokenizer.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("MEDVL_SHARED", ROOT.parent / "shared"))

os.environ.setdefault("MEDVL_CACHE", str(ROOT / ".pytest_cache" / "medvl-cache"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@dataclass
class Outcome:
    code: int
    out: str
    err: str


@pytest.fixture
def medvl(monkeypatch, capsys):
    """Call `medvl ARGS...` through `medvl.cli.main` (which turns a UserError into one line and exit 2)."""
    from medvl.cli import main

    def run(*args: str) -> Outcome:
        monkeypatch.setattr(sys, "argv", ["medvl", *map(str, args)])
        with pytest.raises(SystemExit) as exit_info:
            main()
        captured = capsys.readouterr()
        code = exit_info.value.code
        return Outcome(code if isinstance(code, int) else 1, captured.out, captured.err)

    return run


class TwoCpuProcesses:
    """`accelerate launch` of `medvl ARGS` on 2 CPU processes (configs/accelerate/cpu_2proc.yaml, a free port).

    `command(...)` is the command line; `start(...)` starts it in a session of its own, its output in
    `log`; `workers()` are its two `medvl.cli` processes (torch's launcher starts each in a session of
    its own); `kill(how, seconds)` SIGKILLs the launcher alone (as the OOM killer does), its process
    group (`kill -9 -PGID`) or the main worker alone (rank 0, which merges and writes the outputs) and
    returns the pids of the workers still running after `seconds` (every thread counts). Whatever it
    started and is still running is killed at teardown, and only that: the launcher while it is a
    child not yet waited for (its pid still its own), the workers and the launcher's descendants as
    psutil processes (which check their start time: pids are reused).
    """

    def __init__(self, log: Path):
        self.log, self.launcher, self._workers = log, None, []

    @staticmethod
    def command(*args: str | Path, through_medvl_launch: bool = False) -> list[str]:
        import socket

        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        launch = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
                  str(ROOT / "configs" / "accelerate" / "cpu_2proc.yaml"), "--main_process_port", str(port),
                  "-m", "medvl.cli", *map(str, args)]
        # `medvl launch` execs the launcher (it keeps this pid) with MEDVL_LAUNCHER_PID set
        return [sys.executable, "-m", "medvl.cli", "launch", "--", *launch] if through_medvl_launch else launch

    def start(self, *args: str | Path, env: dict[str, str], through_medvl_launch: bool = False):
        import subprocess

        with self.log.open("w") as log:
            self.launcher = subprocess.Popen(self.command(*args, through_medvl_launch=through_medvl_launch), env=env,
                                             stdout=log, stderr=log, start_new_session=True)
        return self.launcher

    def workers(self) -> list:
        import psutil

        self._workers = [p for p in psutil.Process(self.launcher.pid).children(recursive=True)
                         if "medvl.cli" in p.cmdline()]
        return self._workers

    def kill(self, how: str, seconds: float) -> list[int]:
        import signal
        import time

        from medvl.io.process import running

        def alive(worker) -> bool:  # this process (not one that got its pid since), any of its threads
            return worker.is_running() and running(worker.pid)

        workers = self._workers or self.workers()
        if how == "process group":
            os.killpg(self.launcher.pid, signal.SIGKILL)
        elif how == "main worker":  # the launcher then stops the other worker and exits
            next(p for p in workers if p.environ().get("RANK") == "0").kill()
        else:
            self.launcher.kill()
        self.launcher.wait(timeout=30)
        deadline = time.monotonic() + seconds
        while any(alive(p) for p in workers) and time.monotonic() < deadline:
            time.sleep(0.05)
        return [p.pid for p in workers if alive(p)]

    def close(self) -> None:
        import contextlib

        import psutil

        if self.launcher is None:
            return
        mine = list(self._workers)
        if self.launcher.poll() is None:
            mine += psutil.Process(self.launcher.pid).children(recursive=True)
            self.launcher.kill()
        for process in mine:
            with contextlib.suppress(psutil.NoSuchProcess):
                process.kill()
        self.launcher.wait(timeout=30)


@pytest.fixture
def two_cpu_processes(tmp_path) -> Iterator[TwoCpuProcesses]:
    launched = TwoCpuProcesses(tmp_path / "launch.log")
    yield launched
    launched.close()


@pytest.fixture
def unreachable_url() -> str:
    """An OpenAI-style base_url on a loopback port that was bound and closed: connections are refused."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"


@dataclass
class WrongKeyEndpoint:
    """A mock LLM server that accepts only `key`, while `$api_key_env` holds `sent`, another key."""

    base_url: str
    api_key_env: str
    sent: str
    key: str


@pytest.fixture
def wrong_key_endpoint(monkeypatch) -> Iterator[Callable[..., WrongKeyEndpoint]]:
    """Start a `MockServer(responder)` that answers 401, echoing the key it got (as a careless proxy
    might), until the test sets `$api_key_env` to `key`; it is stopped at the end of the test."""
    from medvl.llm.mock_server import MockServer

    env, sent, key = "MEDVL_TEST_LLM_KEY", "sk-medvl-test-wrong-5f1c9a", "sk-medvl-test-right-08d2e7"
    monkeypatch.setenv(env, sent)
    servers: list[MockServer] = []

    def start(responder: Callable[[dict], str] | None = None) -> WrongKeyEndpoint:
        servers.append(MockServer(responder, api_key=key).start())
        return WrongKeyEndpoint(servers[-1].base_url, env, sent, key)

    yield start
    for server in servers:
        server.stop()


@pytest.fixture(params=["unreachable", "wrong_key", "no_such_model", "never_answers"])
def unusable_llm(request, unreachable_url) -> tuple[dict[str, Any], str]:
    """An LLM endpoint that stops a run: one never reached, one rejecting the key, one without the
    model (404), one that never answers. Returns the `llm` settings that point at it (base_url,
    api_key_env, timeout_s) and the start of the `medvl` error line."""
    if request.param == "unreachable":
        return ({"base_url": unreachable_url, "api_key_env": "MEDVL_NO_KEY"},
                f"error: LLM endpoint {unreachable_url} is unreachable: connection refused")
    if request.param in ("no_such_model", "never_answers"):
        from medvl.llm.mock_server import MockServer

        behaviour = {"status": 404} if request.param == "no_such_model" else {"timeout": 30}
        server = MockServer(script=lambda index: behaviour).start()
        request.addfinalizer(server.stop)
        said = "has no model" if request.param == "no_such_model" else "never answered: no reply within 0.5 s"
        return ({"base_url": server.base_url, "api_key_env": "MEDVL_NO_KEY", "timeout_s": 0.5},
                f"error: LLM endpoint {server.base_url} {said}")
    endpoint = request.getfixturevalue("wrong_key_endpoint")()
    return ({"base_url": endpoint.base_url, "api_key_env": endpoint.api_key_env},
            f"error: LLM endpoint {endpoint.base_url} rejected the API key in ${endpoint.api_key_env} "
            "(401 Unauthorized")


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """`../shared` (real data); tests using it skip cleanly when it is absent."""
    if not (SHARED / "data").is_dir():
        pytest.skip(f"shared data folder not found at {SHARED}")
    return SHARED


@pytest.fixture(scope="session")
def smol_tokenizer() -> Path:
    from medvl.io.offline import OfflineAssetMissing, smollm2_tokenizer

    try:
        return smollm2_tokenizer()
    except OfflineAssetMissing as exc:
        pytest.skip(str(exc))


@pytest.fixture(scope="session")
def tiny_model(smol_tokenizer):
    """(model, processor) of a tiny random LLaVA model (CLIP 32px/8 → mlp2x_gelu → Llama)."""
    from medvl.model.build import build_model
    from medvl.model.spec import tiny_spec

    return build_model(tiny_spec(str(smol_tokenizer)))


@pytest.fixture(scope="session")
def tiny_model_dir(tiny_model, tmp_path_factory) -> Path:
    """The tiny model saved in the native format."""
    from medvl.model.checkpoint import save_model

    out = tmp_path_factory.mktemp("tiny-model")
    save_model(*tiny_model, out)
    return out


# config.json texts that were tracebacks (JSONDecodeError, TypeError, ValueError): what the error says of them
BROKEN_CONFIGS = {'{"model_type": "llava", "text_config": {': "config.json: not valid JSON (Expecting",
                  "[1, 2]": "config.json: a list, not an object",
                  '{"architectures": ["LlavaForConditionalGeneration"]}': "config.json: no 'model_type'"}


@pytest.fixture
def broken_model_dirs(tiny_model_dir, tmp_path) -> list[tuple[Path, str]]:
    """The tiny model with each config.json of `BROKEN_CONFIGS` (its other files linked): (folder, what the
    one-line error must say, starting with the file's path)."""
    folders = []
    for index, (text, said) in enumerate(BROKEN_CONFIGS.items()):
        folder = tmp_path / f"broken-config-{index}"
        folder.mkdir()
        for path in tiny_model_dir.iterdir():
            if path.name != "config.json":
                (folder / path.name).symlink_to(path)
        (folder / "config.json").write_text(text)
        folders.append((folder, f"{folder}/{said}"))
    return folders


@pytest.fixture
def rgb_image():
    """A deterministic non-square RGB test image."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8))


@pytest.fixture
def stand_in_vllm(monkeypatch) -> dict:
    """A stand-in `vllm` module (vllm is not installed here): `LLM.chat` answers "yes" to every
    conversation (3 prompt tokens, 2 generated), `SamplingParams` returns its arguments, and the
    engine enforces a context of `max_model_len` tokens (`llm.llm_engine.model_config.max_model_len`,
    whatever was asked). The returned dict holds that length ("max_model_len") and records the
    `LLM(...)` call ("init") and the last chat ("chat": conversations, params)."""
    import sys
    import types

    calls: dict = {"max_model_len": 1536}

    class LLM:
        def __init__(self, model, **kwargs):
            calls["init"] = (model, kwargs)
            enforced = types.SimpleNamespace(max_model_len=calls["max_model_len"])
            self.llm_engine = types.SimpleNamespace(model_config=enforced)

        def chat(self, conversations, params, use_tqdm):
            calls["chat"] = (conversations, params)
            out = types.SimpleNamespace(text=" yes \n", token_ids=[5, 6], finish_reason="stop")
            return [types.SimpleNamespace(prompt_token_ids=[1, 2, 3], outputs=[out]) for _ in conversations]

    def sampling_params(**kwargs):
        return kwargs

    monkeypatch.setitem(sys.modules, "vllm", types.SimpleNamespace(LLM=LLM, SamplingParams=sampling_params))
    return calls
