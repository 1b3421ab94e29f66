"""Typed configuration: pydantic models loaded from YAML with `key.sub=value` overrides.

Every config class derives from `Config`, which forbids unknown keys, so a typo or a wrong type is
an error that names the key (`ConfigError`), never a silent default. Override values are parsed as
YAML scalars (`lr=2e-5`, `freeze.vision=true`, `sizes=[1,8]`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from medvl.errors import UserError

__all__ = ["Config", "ConfigError", "load_config", "apply_overrides", "dump_config", "parse_value"]


class ConfigError(UserError, ValueError):
    """A config file or override that does not fit its schema; the message names each bad key."""


class Config(BaseModel):
    """Base of every medvl config: strict keys, validated on assignment too."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=())


C = TypeVar("C", bound=Config)


def apply_overrides(data: dict[str, Any], overrides: Sequence[str], values: Mapping[str, Any] | None = None
                    ) -> dict[str, Any]:
    """Return a copy of `data` with each `dotted.key=value` override set (value parsed as YAML), then
    each `values` entry (`{"dotted.key": value}`, a value already parsed, e.g. a command-line flag)."""
    result = _deep_copy(data)
    for item in overrides:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"override {item!r} is not of the form key=value")
        _set(result, key, parse_value(raw, f"override {item!r}"))
    for key, value in (values or {}).items():
        _set(result, key, value)
    return result


def parse_value(raw: str, where: str) -> Any:
    """A command-line value parsed as a YAML scalar or flow collection (empty: None); `where` names it
    in the ConfigError a malformed value raises."""
    if not raw.strip():
        return None
    try:
        return yaml.safe_load(raw)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{where}: the value is not valid YAML ({_yaml_problem(exc)}); quote it, or close its "
                          "brackets") from None


def _set(data: dict[str, Any], key: str, value: Any) -> None:
    node = data
    parts = key.split(".")
    for part in parts[:-1]:
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        elif not isinstance(child, dict):
            raise ConfigError(f"override {key!r}: {part!r} is a value, not a section")
        node = child
    node[parts[-1]] = value


def load_config(cls: type[C], path: str | Path | None = None, overrides: Sequence[str] = (),
                values: Mapping[str, Any] | None = None) -> C:
    """Load `cls` from a YAML file (or defaults when `path` is None) plus overrides, then `values`
    (`{"dotted.key": value}`: settings a command takes as flags), all checked as one config."""
    data: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        try:
            loaded = yaml.safe_load(_read_config_text(path))
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML ({_yaml_problem(exc)}); fix that line") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"{path}: the top level must be a mapping, got {type(loaded).__name__}")
        data = loaded or {}
    data = _with_defaults(cls, apply_overrides(data, overrides, values))
    try:
        return cls.model_validate(data)
    except ValidationError as exc:
        given = [*dict.fromkeys([item.partition("=")[0].strip() for item in overrides] + list(values or {}))]
        raise ConfigError(_describe(exc, str(path) if path else cls.__name__, given)) from None


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """A YAML error in a few words with its line and column (PyYAML's own text spans several lines)."""
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    mark = getattr(exc, "problem_mark", None)
    return f"{problem} at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else problem


def _read_config_text(path: Path) -> str:
    if not path.exists():
        raise ConfigError(f"config file not found: {path}")
    if path.is_dir():
        raise ConfigError(f"{path} is a folder; give the config file (.yaml) itself")
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (byte {exc.start}: {exc.object[exc.start:exc.start + 1]!r}); "
                          "save the file as UTF-8") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot be read ({exc.strerror}); check its permissions") from None


def dump_config(config: Config, path: str | Path) -> None:
    """Write a config as YAML (atomically), so a run records exactly what it ran with."""
    from medvl.io.files import atomic_write_text

    atomic_write_text(path, yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False))


def _describe(exc: ValidationError, source: str, given: Sequence[str]) -> str:
    """Every problem on one line, each saying what of it was set on the command line (`given`: override
    keys, in command-line order), as the file does not hold it. A check of a whole section (a model
    validator's) is its own sentence, without pydantic's "Value error, " and without the section's values."""
    problems = []
    for err in exc.errors():
        key = ".".join(str(p) for p in err["loc"])
        problem = "unknown key" if err["type"] == "extra_forbidden" else err["msg"].removeprefix("Value error, ")
        if err["type"] != "extra_forbidden" and not isinstance(err.get("input"), dict):
            problem += f" (got {err.get('input')!r})"
        problem += _set_on_command_line(key, given)
        problems.append(f"{key}: {problem}" if key else problem)
    return f"invalid config ({source}): " + "; ".join(problems)


def _set_on_command_line(key: str, given: Sequence[str]) -> str:
    """", set on the command line" for a `key` given there (itself or a section above it); for a section
    (the whole config: `key` "") checked as a whole, which of its keys were: ", with a.b, a.c set on the
    command line"; "" when the command line set none of it."""
    if key and any(key == name or key.startswith(name + ".") for name in given):
        return ", set on the command line"
    inside = [name for name in given if not key or name.startswith(key + ".")]
    return f", with {', '.join(inside)} set on the command line" if inside else ""


def _with_defaults(cls: type[BaseModel], data: dict[str, Any]) -> dict[str, Any]:
    """Fill a section given in part from the field's default, so `align.minutes=2` keeps the other
    keys of `align`'s default instead of replacing the whole section."""
    result = dict(data)
    for name, field in cls.model_fields.items():
        value = result.get(name)
        if not isinstance(value, dict):
            continue
        default = field.default
        if isinstance(default, BaseModel):
            result[name] = _deep_merge(default.model_dump(), value)
        elif isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel):
            result[name] = _with_defaults(field.annotation, value)
    return result


def _deep_merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in update.items():
        merged[key] = _deep_merge(merged[key], value) if isinstance(value, dict) and isinstance(
            merged.get(key), dict) else value
    return merged


def _deep_copy(data: dict[str, Any]) -> dict[str, Any]:
    return {k: _deep_copy(v) if isinstance(v, dict) else v for k, v in data.items()}
