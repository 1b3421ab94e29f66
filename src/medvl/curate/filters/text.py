"""The text filter: caption length bounds and the medical-vocabulary test (PubMedVision's filter)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from datatrove.data import Document
from pydantic import Field

from medvl.curate.filters.base import CurateFilter, FilterConfig, named_setting, register_filter, reject
from medvl.curate.vocab import load_vocabulary

if TYPE_CHECKING:
    from medvl.curate.config import CurateConfig

__all__ = ["TextFilterConfig", "TextFilter"]


class TextFilterConfig(FilterConfig):
    """Caption length bounds and the medical-vocabulary test; `min_medical_terms: 0` turns the test off."""

    path_fields = ("vocabulary",)

    min_caption_words: int = Field(5, ge=0)
    max_caption_words: int = Field(1000, ge=1)
    vocabulary: str | None = Field(
        None, description="term file (one term a line, # comments); default: shipped list"
    )
    min_medical_terms: int = Field(2, ge=0, description="distinct vocabulary terms required")
    count_terms_in: Literal["caption", "caption_and_mentions"] = "caption_and_mentions"


@register_filter("text")
class TextFilter(CurateFilter):
    """Caption length bounds and a minimum number of distinct medical-vocabulary terms."""

    name = "text filter"
    cost = 20
    config_class = TextFilterConfig

    @classmethod
    def check(cls, config: TextFilterConfig, run: "CurateConfig") -> None:  # type: ignore[override]
        """The term file, read as the tasks will read it (`load_vocabulary`)."""
        if config.min_medical_terms > 0:
            with named_setting("filter.text.vocabulary"):
                load_vocabulary(config.vocabulary)

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        config = self.config
        words = len(doc.text.split())
        if words < config.min_caption_words:
            return reject(doc, "caption_too_short", f"{words} words < {config.min_caption_words}")
        if words > config.max_caption_words:
            return reject(doc, "caption_too_long", f"{words} words > {config.max_caption_words}")
        if config.min_medical_terms == 0:
            return True
        text = doc.text
        if config.count_terms_in == "caption_and_mentions":
            text = " ".join([text, *doc.metadata.get("mentions", [])])
        terms = load_vocabulary(config.vocabulary).find(text)
        doc.metadata["medical_terms"] = len(terms)
        if len(terms) < config.min_medical_terms:
            found = ", ".join(sorted(terms)) or "none"
            return reject(
                doc, "too_few_medical_terms", f"{len(terms)} < {config.min_medical_terms} ({found})"
            )
        return True
