"""README.md and docs/*.md name only what exists: every repository path they point at (configs/, src/,
tests/, bench/, data/) and every `medvl` command and option they show, so a renamed config, module or
flag cannot leave the guides behind. A file an example asks the reader to create (a code block whose
first line is `# PATH`) is no reference, and neither is a path that block names (the example's own data)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import typer

from medvl.cli import build_app

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

FENCE = re.compile(r"```(\w*)\n(.*?)```", re.S)
# a relative repository path: not inside an absolute or parent path (/data/..., ../shared/data/...)
REPO_PATH = re.compile(r"(?<![\w./~$-])(?:configs|src|tests|bench|data)/[\w./<>{}*@-]*[\w>}*]")
PLACEHOLDER = re.compile(r"[<>{}*]")  # data/<split>-*.parquet: a pattern, not a file
EXAMPLE_FILE = re.compile(r"#\s*((?:configs|src|tests|bench|data)/\S+)")
COMMAND_LINE = re.compile(r"^(?:[A-Z_]+=\S+\s+)*medvl\s+(.*)")  # env assignments may come first
INLINE_COMMAND = re.compile(r"`medvl ([^`]+)`")


def without_examples(text: str) -> tuple[str, set[str]]:
    """The text without its example-file blocks, and the paths those blocks create or name."""
    created: set[str] = set()

    def drop(block: re.Match) -> str:
        first = block.group(2).split("\n", 1)[0]
        example = EXAMPLE_FILE.fullmatch(first.strip())
        if example is None:
            return block.group(0)
        created.update([example.group(1), *REPO_PATH.findall(block.group(2))])
        return ""

    return FENCE.sub(drop, text), created


def missing_paths(text: str, root: Path) -> list[str]:
    text, created = without_examples(text)
    return sorted(path for path in set(REPO_PATH.findall(text))
                  if not PLACEHOLDER.search(path) and path not in created and not (root / path).exists())


def shown_commands(text: str) -> list[str]:
    """What follows `medvl` in each command line of a shell block, and in each inline `medvl ...`."""
    found = []
    for language, body in FENCE.findall(without_examples(text)[0]):
        if language not in ("bash", "sh", ""):
            continue
        for line in body.replace("\\\n", " ").splitlines():
            command = COMMAND_LINE.match(line.split(" #")[0].strip())
            if command:
                found.append(command.group(1))
    return found + [" ".join(words.split()) for words in INLINE_COMMAND.findall(text)]


def command_problems(args: str, root_command) -> list[str]:
    """Unknown sub-commands and options in one `medvl ARGS` line (`medvl launch` passes its own on)."""
    words, command, path = shlex.split(args), root_command, ["medvl"]
    while hasattr(command, "commands") and words and words[0] in command.commands:
        command = command.commands[words[0]]
        path.append(words.pop(0))
    if hasattr(command, "commands"):
        return [f"{' '.join(path)} has no command {words[0]!r}"] if words and words[0] != "..." else []
    if path[-1] == "launch":
        return []
    known = {option for param in command.params for option in (*param.opts, *param.secondary_opts)}
    shown = [word.strip("[]").split("=")[0] for word in words[:words.index("--") if "--" in words else None]]
    return [f"{' '.join(path)} has no option {option}" for option in shown
            if re.match(r"--?[A-Za-z]", option) and option not in known]


@pytest.fixture(scope="module")
def medvl_command():
    return typer.main.get_command(build_app())


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_named_repository_paths_exist(doc):
    assert missing_paths(doc.read_text(encoding="utf-8"), ROOT) == []


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_shown_commands_and_options_exist(doc, medvl_command):
    commands = shown_commands(doc.read_text(encoding="utf-8"))
    problems = [f"`medvl {args}`: {problem}" for args in commands for problem in command_problems(args, medvl_command)]
    assert problems == []


def test_the_checks_catch_what_drifted(medvl_command):
    text = ("Run `medvl eval run configs/eval/gone.yaml --fast` or\n\n```bash\n"
            "MEDVL_LOG=DEBUG medvl curate runn configs/curate/sample.yaml --out x   # a typo\n"
            "python -m medvl.cli train configs/train/llava_med_stage1.yaml\n```\n\n"
            "```yaml\n# configs/eval/toy.yaml\nbenchmark: {root: data/toy}\n```\nthen `medvl eval run configs/eval/toy.yaml`.\n")
    assert missing_paths(text, ROOT) == ["configs/eval/gone.yaml"]
    assert [problem for args in shown_commands(text) for problem in command_problems(args, medvl_command)] == [
        "medvl curate has no command 'runn'", "medvl eval run has no option --fast"]
