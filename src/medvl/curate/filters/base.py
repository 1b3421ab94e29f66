"""What every prepare-stage filter shares: its config base, the step base, the registry, the reject writer.

A filter is registered by name in its own module (`@register_filter("text")` on the class; the
`FILTERS` registry imports every module of `medvl.curate.filters` when first read) and runs in
the pipeline cheapest first (its `cost`).

A filter is a datatrove `BaseFilter`: `filter(doc)` returns True or `reject(doc, reason, detail)`;
`check(section, run)` refuses, before any stage runs, a section it could not run with.
A dropped record goes to the filter's `exclusion_writer` (a `RejectWriter`) as one reject line
`{"id", "stage", "reason", "detail", ...}` carrying the record's `curate.store.reject_provenance`;
datatrove counts `dropped_<reason>` in its per-task stats, which the report reads.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Iterator

from datatrove.data import Document
from datatrove.pipeline.filters.base_filter import BaseFilter
from datatrove.pipeline.writers.jsonl import JsonlWriter

from medvl.config import Config
from medvl.curate.store import reject_provenance
from medvl.errors import UserError
from medvl.io.jsonl import reject_line
from medvl.registry import Registry

if TYPE_CHECKING:
    from medvl.curate.config import CurateConfig

__all__ = ["FILTERS", "FilterConfig", "CurateFilter", "RejectWriter", "IngestCheck", "register_filter",
           "reject", "FilterSettingError", "named_setting"]


class FilterConfig(Config):
    """The section `filter.<name>` of a filter; every filter can be switched off.

    `path_fields` name the options that are paths, made absolute against the config file's folder
    (the working directory for one set by a command-line override).
    """

    path_fields: ClassVar[tuple[str, ...]] = ()
    enabled: bool = True

    def resolve_paths(self, absolute: Callable[[str | None, str], str | None]) -> "FilterConfig":
        """A copy with each path option made absolute by `absolute(value, option name)`."""
        return self.model_copy(update={name: absolute(getattr(self, name), name) for name in self.path_fields})


class FilterSettingError(UserError, ValueError):
    """A filter setting the filter cannot run with; the message starts with the setting (`filter.<name>.<key>`)."""


@contextmanager
def named_setting(key: str) -> Iterator[None]:
    """A `UserError` raised in the block (a `CurateFilter.check`) becomes a `FilterSettingError` whose
    one line starts with `key`, the setting to fix."""
    try:
        yield
    except UserError as exc:
        raise FilterSettingError(f"{key}: {exc}") from None


class CurateFilter(BaseFilter):
    """A filter of the prepare stage, configured by its section `filter.<name>` (`config_class`).

    `run` is the whole curate config (None in unit tests); `active(section, run)` says whether the
    pipeline adds the filter (default: `section.enabled`). The pipeline runs filters by rising `cost`
    (cheapest first; ties by name).
    """

    config_class: ClassVar[type[FilterConfig]] = FilterConfig
    cost: ClassVar[int] = 100  # the built-in filters run at 10 (licence) to 40 (image)

    def __init__(
        self, config: FilterConfig, run: "CurateConfig | None" = None, exclusion_writer: JsonlWriter | None = None
    ):
        super().__init__(exclusion_writer)
        self.config = config

    @classmethod
    def active(cls, config: FilterConfig, run: "CurateConfig") -> bool:
        return config.enabled

    @classmethod
    def check(cls, config: FilterConfig, run: "CurateConfig") -> None:
        """Raise a `UserError` for a section the filter cannot run with (a model folder that holds no
        model); called for an active filter before any stage runs, so the prepare tasks never meet it.
        Nothing to check by default."""


FILTERS: Registry[type[CurateFilter]] = Registry("filter", package="medvl.curate.filters")


def register_filter(name: str) -> Callable[[type[CurateFilter]], type[CurateFilter]]:
    """Decorate a `CurateFilter` subclass: its config section is `filter.<name>`, its rejects'
    stage `<name>`."""
    return FILTERS.register(name)


def reject(doc: Document, reason: str, detail: str = "") -> tuple[bool, str]:
    """Mark `doc` for the exclusion writer and return datatrove's (False, reason)."""
    doc.metadata["reject_detail"] = detail
    return False, reason


class RejectWriter(JsonlWriter):
    """Writes dropped Documents as reject lines (the `RejectLog` format) to `<folder>/<stage>-<rank>.jsonl`"""

    def __init__(self, folder: str, stage: str):
        super().__init__(
            folder,
            output_filename=f"{stage}-${{rank}}.jsonl",
            compression=None,
            adapter=_reject_adapter(stage),
        )
        self.stage = stage


def _reject_adapter(stage: str):
    def adapt(_self: Any, doc: Document) -> dict[str, Any]:
        meta = doc.metadata
        return reject_line(doc.id, stage, meta.get("filter_reason", "rejected"), meta.get("reject_detail", ""),
                           **reject_provenance(meta))

    return adapt


class IngestCheck(BaseFilter):
    """Drops the records the reader could not normalise (malformed line, missing field, ...)."""

    name = "ingest check"

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        error = doc.metadata.pop("ingest_error", None)
        return True if error is None else reject(doc, error[0], error[1])
