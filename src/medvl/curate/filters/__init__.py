"""The prepare-stage filters, found by name: a filter is its class plus its config section.

`FILTERS` maps a name to `module:Class`; the pipeline adds the active ones in this order (cheapest
first), each configured by the section `filter.<name>` of the curate config (validated by the
class's `config_class`) and writing its rejects under the stage `<name>`.

Adding a filter: one new module with a `CurateFilter` subclass (its `config_class` and `filter(doc)`)
and one line here — see docs/curation.md, "Adding a filter".
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from medvl.curate.filters.base import CurateFilter, FilterConfig, IngestCheck, RejectWriter, reject

if TYPE_CHECKING:
    from medvl.curate.config import CurateConfig

__all__ = [
    "FILTERS",
    "CurateFilter",
    "FilterConfig",
    "IngestCheck",
    "RejectWriter",
    "reject",
    "filter_class",
    "filter_sections",
    "build_filters",
]

FILTERS: dict[str, str] = {
    "licence": "medvl.curate.filters.licence:LicenceFilter",
    "text": "medvl.curate.filters.text:TextFilter",
    "medical_text": "medvl.curate.filters.medical_text:MedicalTextFilter",
    "image": "medvl.curate.filters.image:ImageFilter",
}


def filter_class(name: str) -> type[CurateFilter]:
    """The registered filter class called `name`."""
    if name not in FILTERS:
        raise ValueError(f"unknown filter {name!r}; registered: {', '.join(FILTERS)}")
    module, _, attr = FILTERS[name].partition(":")
    return getattr(importlib.import_module(module), attr)


def filter_sections(data: dict[str, Any] | None) -> dict[str, FilterConfig]:
    """Every registered filter's section, validated by its config class (missing ones: defaults)."""
    data = dict(data or {})
    unknown = sorted(set(data) - set(FILTERS))
    if unknown:
        raise ValueError(f"unknown filter section(s) {unknown}; registered filters: {', '.join(FILTERS)}")
    sections = {}
    for name in FILTERS:
        config_class = filter_class(name).config_class
        value = data.get(name)
        sections[name] = value if isinstance(value, config_class) else config_class.model_validate(value or {})
    return sections


def build_filters(config: "CurateConfig", rejects_dir: str) -> list[CurateFilter]:
    """The active filters of a run, in registry order, each writing rejects under its own stage."""
    steps = []
    for name, section in config.filter.items():
        cls = filter_class(name)
        if cls.active(section, config):
            steps.append(cls(section, config, RejectWriter(rejects_dir, name)))
    return steps
