"""Typed configs: a wrong key or type is an error naming the key; overrides parse as YAML."""

from __future__ import annotations

import pytest
from pydantic import model_validator

from medvl.config import Config, ConfigError, apply_overrides, dump_config, load_config
from medvl.model.spec import ModelSpec


class Inner(Config):
    lr: float = 1e-3
    steps: int = 10


class Outer(Config):
    name: str = "run"
    inner: Inner = Inner()
    sizes: list[int] = [1]
    flag: bool = False


def test_defaults_file_and_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("name: a\ninner:\n  lr: 0.5\n")
    config = load_config(Outer, path, ["inner.steps=3", "sizes=[1, 8, 16]", "flag=true", "name=b"])
    assert (config.name, config.inner.lr, config.inner.steps, config.sizes, config.flag) == ("b", 0.5, 3, [1, 8, 16], True)
    assert load_config(Outer).inner.lr == 1e-3


def test_unknown_key_is_named(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("inner:\n  learning_rate: 0.1\n")
    with pytest.raises(ConfigError, match=r"inner\.learning_rate: unknown key"):
        load_config(Outer, path)
    with pytest.raises(ConfigError, match=r"inner\.stepz: unknown key, set on the command line"):
        load_config(Outer, None, ["inner.stepz=4"])


def test_every_problem_is_on_one_line_naming_where_it_was_set(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("inner:\n  learning_rate: 0.1\n")
    with pytest.raises(ConfigError) as raised:
        load_config(Outer, path, ["inner.steps=many"])
    assert str(raised.value) == (
        f"invalid config ({path}): inner.steps: Input should be a valid integer, unable to parse string as an "
        "integer (got 'many'), set on the command line; inner.learning_rate: unknown key")
    (tmp_path / "broken.yaml").write_text("a: 1\nb: [1, 2\n")
    with pytest.raises(ConfigError) as raised:
        load_config(Outer, tmp_path / "broken.yaml")
    assert "\n" not in str(raised.value) and "not valid YAML (expected ',' or ']'" in str(raised.value)
    assert "at line 3, column 1" in str(raised.value)


def test_wrong_type_is_named():
    with pytest.raises(ConfigError, match=r"inner\.steps: .*integer.*'many'"):
        load_config(Outer, None, ["inner.steps=many"])
    with pytest.raises(ConfigError, match=r"flag: .*bool"):
        load_config(Outer, None, ["flag=perhaps"])


def test_bad_files_and_overrides(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(Outer, tmp_path / "missing.yaml")
    (tmp_path / "list.yaml").write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="must be a mapping"):
        load_config(Outer, tmp_path / "list.yaml")
    (tmp_path / "broken.yaml").write_text("a: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(Outer, tmp_path / "broken.yaml")
    with pytest.raises(ConfigError, match="key=value"):
        apply_overrides({}, ["lr"])
    with pytest.raises(ConfigError, match="is a value, not a section"):
        apply_overrides({"name": "x"}, ["name.sub=1"])


def test_dump_round_trip(tmp_path):
    config = load_config(Outer, None, ["inner.lr=0.25"])
    dump_config(config, tmp_path / "out.yaml")
    assert load_config(Outer, tmp_path / "out.yaml") == config


def test_model_spec_requires_a_tokenizer_source():
    with pytest.raises(ConfigError, match="text.path"):
        load_config(ModelSpec, None, ["text.family=llama"])


class Budget(Config):
    minutes: float
    lr: float


class Stages(Config):
    align: Budget = Budget(minutes=1, lr=1e-3)
    finetune: Budget = Budget(minutes=5, lr=1e-4)
    inner: Inner = Inner(lr=0.5)


def test_a_partial_section_keeps_its_default_values(tmp_path):
    """Overriding one key of a section whose default sets required keys keeps the other defaults."""
    config = load_config(Stages, None, ["align.minutes=2", "inner.steps=7"])
    assert (config.align.minutes, config.align.lr) == (2, 1e-3)
    assert (config.inner.lr, config.inner.steps) == (0.5, 7)
    path = tmp_path / "c.yaml"
    path.write_text("finetune:\n  lr: 0.01\n")
    assert load_config(Stages, path).finetune == Budget(minutes=5, lr=0.01)
    with pytest.raises(ConfigError, match=r"align\.minute: unknown key"):
        load_config(Stages, None, ["align.minute=2"])


def test_a_check_across_a_section_is_its_own_sentence(medvl, tmp_path):
    """A model validator's message (a check across keys) came as "vision: Value error, image_size 100 is ...
    (got {'family': 'clip', 'path': None, ...})", every key of the section; the whole config's one as
    "<root>: Value error, ... (got {'stage': ..., 'model': ..., 'optim': ...})": one line, hard to read."""
    (tmp_path / "empty.yaml").write_text("")
    outcome = medvl("build", tmp_path / "empty.yaml", tmp_path / "m", "vision.image_size=100", "text.tokenizer=t")
    assert outcome.code == 2 and outcome.err.strip() == (
        f"error: invalid config ({tmp_path / 'empty.yaml'}): vision: image_size 100 is not a multiple of patch_size 14, "
        "with vision.image_size set on the command line")
    (tmp_path / "train.yaml").write_text(f"stage: align\nmodel: {{path: '{tmp_path}'}}\n")
    outcome = medvl("data", "check", tmp_path / "train.yaml", "trainable.projector=false", "optim.projector_lr=1e-3")
    assert outcome.code == 2 and outcome.err.strip() == (
        f"error: invalid config ({tmp_path / 'train.yaml'}): optim.projector_lr is set but the align stage's projector "
        "is frozen (trainable.projector): train it or leave projector_lr null, with trainable.projector, "
        "optim.projector_lr set on the command line")


class Window(Config):
    start: int = 0
    stop: int = 10

    @model_validator(mode="after")
    def _ordered(self) -> "Window":
        if self.stop <= self.start:
            raise ValueError(f"stop {self.stop} must come after start {self.start}")
        return self


class Windowed(Config):
    name: str = "run"
    window: Window = Window()

    @model_validator(mode="after")
    def _named(self) -> "Windowed":
        if self.name == "bad":
            raise ValueError("name 'bad' is taken")
        return self


def test_a_check_across_a_section_says_which_of_its_keys_the_command_line_set(tmp_path):
    """A field broken by an override said ", set on the command line"; a check across a section broken by
    one said nothing of it, as if the file held the bad value."""
    path = tmp_path / "c.yaml"
    path.write_text("window:\n  start: 5\n")
    with pytest.raises(ConfigError) as raised:
        load_config(Windowed, path, ["window.stop=3", "name=x"])
    assert str(raised.value) == (f"invalid config ({path}): window: stop 3 must come after start 5, "
                                 "with window.stop set on the command line")
    with pytest.raises(ConfigError) as raised:  # the whole config's check: every key the command line set
        load_config(Windowed, path, ["name=bad", "window.stop=9"])
    assert str(raised.value) == (f"invalid config ({path}): name 'bad' is taken, with name, window.stop set on "
                                 "the command line")
    path.write_text("name: bad\nwindow:\n  stop: 0\n")
    with pytest.raises(ConfigError) as raised:  # all from the file: nothing said of the command line
        load_config(Windowed, path)
    assert str(raised.value) == f"invalid config ({path}): window: stop 0 must come after start 0"
