"""The licence filter: keep records whose (normalised, SPDX) licence is on an allow list."""

from __future__ import annotations

from typing import TYPE_CHECKING

from datatrove.data import Document
from pydantic import Field

from medvl.curate.filters.base import CurateFilter, FilterConfig, register_filter, reject
from medvl.curate.licences import licence_allowed

if TYPE_CHECKING:
    from medvl.curate.config import CurateConfig

__all__ = ["LicenceFilterConfig", "LicenceFilter"]


class LicenceFilterConfig(FilterConfig):
    """`allow`: SPDX ids or families (`CC-BY` admits every CC BY version); unset: every licence passes."""

    allow: list[str] | None = Field(
        None, description="e.g. [CC-BY, CC0] for a commercially usable subset; unset: no filter"
    )


@register_filter("licence")
class LicenceFilter(CurateFilter):
    """Drops records whose licence (normalised at ingest) is not allowed (`licence_not_allowed`)."""

    name = "licence filter"
    cost = 10
    config_class = LicenceFilterConfig

    @classmethod
    def active(cls, config: LicenceFilterConfig, run: "CurateConfig") -> bool:
        return config.enabled and config.allow is not None

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        licence = doc.metadata.get("licence") or "unknown"
        if licence_allowed(licence, self.config.allow or []):
            return True
        raw = doc.metadata.get("licence_raw")
        shown = f"{licence} (given as {raw!r})" if raw and raw != licence else licence
        return reject(doc, "licence_not_allowed", f"{shown} not in {self.config.allow}")
