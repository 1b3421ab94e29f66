"""The `medvl` entry point: sub-commands registered, help fast, build/convert commands work."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
import typer
from typer.testing import CliRunner

from medvl import cli
from medvl.cli import build_app


def test_help_lists_commands_without_loading_torch():
    code = "import sys; from medvl.cli import build_app; build_app(); print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"


def test_build_command_saves_a_model(tmp_path, smol_tokenizer):
    spec = tmp_path / "spec.yaml"
    spec.write_text(
        f"vision: {{image_size: 32, patch_size: 8, hidden_size: 32, num_layers: 2, num_heads: 2, intermediate_size: 64}}\n"
        f"text: {{tokenizer: '{smol_tokenizer}', hidden_size: 64, num_layers: 1, num_heads: 2, intermediate_size: 64}}\n"
        "chat_template: chatml\n")
    result = CliRunner().invoke(build_app(), ["build", str(spec), str(tmp_path / "m"), "projector=linear"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "m" / "config.json").is_file() and "saved" in result.output


def test_build_prints_only_its_own_line(tmp_path, smol_tokenizer):
    """No library noise: transformers' 'Writing model shards' bar, or its advice to install torchvision
    (medvl builds the PIL image processor by name; torchvision is not a dependency)."""
    spec = tmp_path / "spec.yaml"
    spec.write_text(f"text: {{tokenizer: '{smol_tokenizer}', hidden_size: 64, num_layers: 1, num_heads: 2, "
                    "intermediate_size: 64}\nvision: {image_size: 32, patch_size: 8, hidden_size: 32, num_layers: 1, "
                    "num_heads: 2, intermediate_size: 64}\n")
    environment = {k: v for k, v in os.environ.items() if k != "HF_HUB_DISABLE_PROGRESS_BARS"}
    result = subprocess.run([sys.executable, "-m", "medvl.cli", "build", str(spec), str(tmp_path / "m")],
                            capture_output=True, text=True, timeout=300, env=environment)
    assert result.returncode == 0 and result.stderr == "" and result.stdout.startswith("saved "), result.stderr


def test_build_command_names_a_bad_key(tmp_path, smol_tokenizer):
    spec = tmp_path / "spec.yaml"
    spec.write_text(f"text: {{tokenizer: '{smol_tokenizer}'}}\nprojecter: linear\n")
    result = CliRunner().invoke(build_app(), ["build", str(spec), str(tmp_path / "m")])
    assert result.exit_code != 0
    assert "projecter: unknown key" in str(result.exception)


def test_user_errors_print_without_traceback(tmp_path):
    result = subprocess.run([sys.executable, "-m", "medvl.cli", "build", str(tmp_path / "nope.yaml"), str(tmp_path)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert "error: config file not found" in result.stderr and "Traceback" not in result.stderr


def test_a_command_module_that_does_not_import_is_an_error(monkeypatch):
    monkeypatch.setattr(cli, "COMMAND_MODULES", (*cli.COMMAND_MODULES, "medvl.eval.clii"))
    with pytest.raises(ModuleNotFoundError, match="medvl.eval.clii"):
        build_app()


@pytest.mark.parametrize("args, message", [
    (["chat", "/nonexistent-model"], "error: Invalid value for 'model_dir': dir '/nonexistent-model' does not exist. "
                                     "(see medvl chat --help)"),
    (["eval", "run", "--bogus", "x"], "error: No such option: --bogus (see medvl eval run --help)"),
    (["curate", "run"], "error: Missing argument 'config'. (see medvl curate run --help)"),
])
def test_a_usage_mistake_is_one_error_line_exit_2(medvl, args, message):
    outcome = medvl(*args)  # it was click's boxed panel: a usage line, a hint, and the error in a frame
    assert (outcome.code, outcome.err.strip()) == (2, message)


def test_exit_codes_pass_through_the_entry_point(medvl):
    assert medvl("eval", "list").code == 0
    bare = medvl("curate")  # no sub-command: the help, exit 2 as click's
    assert bare.code == 2 and "Usage: medvl curate" in bare.out + bare.err


def test_end_of_input_at_a_prompt_is_one_line(monkeypatch, capsys):
    def prompting_app():
        def app(**kwargs):
            raise typer.Abort()  # what click raises on EOF or Ctrl-C at a prompt
        return app
    monkeypatch.setattr(cli, "build_app", prompting_app)
    with pytest.raises(SystemExit) as exit_:
        cli.main()
    assert exit_.value.code == 1 and capsys.readouterr().err.strip() == "error: aborted"


def test_an_unexpected_exception_keeps_its_own_traceback_alone(monkeypatch):
    def broken_app():
        def app(**kwargs):
            raise RuntimeError("a bug")
        return app
    monkeypatch.setattr(cli, "build_app", broken_app)
    with pytest.raises(RuntimeError, match="a bug") as raised:
        cli.main()
    assert raised.value.__context__ is None  # no second exception raised while matching the except clauses


def test_log_lines_go_to_the_stderr_of_each_run_in_one_process(monkeypatch):
    # main() runs again in one process (tests, notebooks) under a replaced stderr: its log lines must go
    # there, not to the first run's stream, closed by then ("--- Logging error ---" and a traceback)
    import io
    import logging

    monkeypatch.setattr(logging.root, "handlers", [])
    for word in ("one", "two"):
        stderr = io.StringIO()
        monkeypatch.setattr(sys, "stderr", stderr)
        monkeypatch.setattr(cli, "build_app", lambda: lambda **_: logging.getLogger("medvl.test").info(word))
        with pytest.raises(SystemExit):
            cli.main()
        assert stderr.getvalue() == f"INFO medvl.test: {word}\n"
        stderr.close()


def test_http_clients_sentence_transformers_and_faiss_do_not_log_at_info(medvl):
    import logging

    assert medvl("eval", "list").code == 0
    # openai's transport: one INFO line per request (curate label: per image); sentence-transformers: the model
    # each caption filter loads; faiss.loader: each CPU build it fails to load, a ModuleNotFoundError each
    for name in ("httpx", "httpx2", "sentence_transformers", "faiss"):
        assert logging.getLogger(name).level >= logging.WARNING  # whatever level the root logger has


def test_loading_a_model_draws_no_library_progress_bar(tiny_model_dir):
    """transformers' "Loading weights" bar is off from the start of the command (a fresh process, as a user
    runs it: the switch is read when transformers loads); HF_HUB_DISABLE_PROGRESS_BARS=0 brings it back."""
    from medvl.model.checkpoint import DISCLAIMER

    command = [sys.executable, "-m", "medvl.cli", "chat", str(tiny_model_dir), "-q", "Hi", "--max-new-tokens", "2"]
    environment = {k: v for k, v in os.environ.items() if k != "HF_HUB_DISABLE_PROGRESS_BARS"}
    quiet = subprocess.run(command, capture_output=True, text=True, timeout=300, env=environment)
    assert quiet.returncode == 0 and quiet.stderr.strip() == DISCLAIMER, quiet.stderr
    asked = subprocess.run(command, capture_output=True, text=True, timeout=300,
                           env={**environment, "HF_HUB_DISABLE_PROGRESS_BARS": "0"})
    assert asked.returncode == 0 and "Loading weights" in asked.stderr, asked.stderr


def _leaf_commands(command, path=()):
    if hasattr(command, "commands"):
        for name, sub in command.commands.items():
            yield from _leaf_commands(sub, (*path, name))
    else:
        yield list(path), command


def test_every_help_shows_the_bracketed_parts_of_its_text():
    # typer reads help as rich markup: "NAME[@SPLIT]=ROOT" showed as "NAME=ROOT" (write "\\[" in the source)
    app, lost = build_app(), []
    for path, command in _leaf_commands(typer.main.get_command(app)):
        texts = [command.help or ""] + [getattr(param, "help", None) or "" for param in command.params]
        bracketed = [part for text in texts for part in re.findall(r"\[[^\]\n]{1,40}\]", text.replace("\\[", "["))]
        if not bracketed:
            continue
        shown = CliRunner().invoke(app, [*path, "--help"], env={"COLUMNS": "400"})
        assert shown.exit_code == 0, shown.output
        flat = " ".join(shown.output.replace("\u2502", " ").split())
        lost += [f"medvl {' '.join(path)}: {part}" for part in bracketed if " ".join(part.split()) not in flat]
    assert not lost
