"""The prepare-stage filters, found by name: a filter is its class plus its config section.

`FILTERS` (a `medvl.registry.Registry`) finds each filter by the name its module registers it
under (`@register_filter("text")`); the pipeline adds the active ones in `filter_names()` order
(cheapest first: each class's `cost`), each configured by the section `filter.<name>` of the curate
config (validated by the class's `config_class`) and writing its rejects under the stage `<name>`.

Adding a filter: one new module here with a registered `CurateFilter` subclass (its `config_class`,
`cost` and `filter(doc)`) — see docs/architecture.md, "Add a curation filter".
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from medvl.curate.filters.base import (
    FILTERS,
    CurateFilter,
    FilterConfig,
    IngestCheck,
    RejectWriter,
    register_filter,
    reject,
)

if TYPE_CHECKING:
    from medvl.curate.config import CurateConfig

__all__ = [
    "FILTERS",
    "CurateFilter",
    "FilterConfig",
    "IngestCheck",
    "RejectWriter",
    "register_filter",
    "reject",
    "filter_class",
    "filter_names",
    "filter_sections",
    "build_filters",
    "check_filters",
]

def filter_names() -> list[str]:
    """The registered filters in pipeline order: cheapest first (`CurateFilter.cost`), then by name."""
    return sorted(FILTERS.names(), key=lambda name: (FILTERS.get(name).cost, name))


def filter_class(name: str) -> type[CurateFilter]:
    """The registered filter class called `name`."""
    if name not in FILTERS:
        raise ValueError(f"unknown filter {name!r}; registered: {', '.join(filter_names())}")
    return FILTERS.get(name)


def filter_sections(data: dict[str, Any] | None) -> dict[str, FilterConfig]:
    """Every registered filter's section, validated by its config class (missing ones: defaults)."""
    data, names = dict(data or {}), filter_names()
    unknown = sorted(set(data) - set(names))
    if unknown:
        raise ValueError(f"unknown filter section(s) {unknown}; registered filters: {', '.join(names)}")
    sections = {}
    for name in names:
        config_class = filter_class(name).config_class
        value = data.get(name)
        try:
            sections[name] = value if isinstance(value, config_class) else config_class.model_validate(value or {})
        except ValidationError as exc:  # keys named from `filter`: filter.text.min_words, not filter.min_words
            raise ValidationError.from_exception_data(exc.title, [_in_section(name, error) for error in exc.errors()])
    return sections


def _in_section(name: str, error: Any) -> Any:
    """A section's validation error placed under the section's name (pydantic's `InitErrorDetails`)."""
    details = {"type": error["type"], "loc": (name, *error["loc"]), "input": error["input"]}
    if "ctx" in error:
        details["ctx"] = error["ctx"]
    return details


def _active(config: "CurateConfig") -> list[tuple[str, type[CurateFilter], FilterConfig]]:
    """(name, class, section) of the filters a run uses, in registry order."""
    sections = ((name, filter_class(name), section) for name, section in config.filter.items())
    return [(name, cls, section) for name, cls, section in sections if cls.active(section, config)]


def build_filters(config: "CurateConfig", rejects_dir: str) -> list[CurateFilter]:
    """The active filters of a run, in registry order, each writing rejects under its own stage."""
    return [cls(section, config, RejectWriter(rejects_dir, name)) for name, cls, section in _active(config)]


def check_filters(config: "CurateConfig") -> None:
    """Each active filter's `check` of its section: a `UserError` before any stage runs."""
    for _, cls, section in _active(config):
        cls.check(section, config)
