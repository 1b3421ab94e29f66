"""The learned medical-text filter: a caption is kept when the probe's p(medical) reaches the threshold.

The probe (`medvl.curate.text_probe`) is a logistic regression on a cut SmolLM2's view of the
caption, its all-MiniLM-L6-v2 embedding and two vocabulary features; `model: builtin` is the one
shipped with medvl, any other value a folder written by `medvl curate train-text-filter`. Captions
are embedded in batches; semantic dedup's embedder reuses the MiniLM vectors (`medvl.curate.embed`
remembers them).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Literal

from datatrove.data import Document
from pydantic import Field

from medvl.curate.filters.base import CurateFilter, FilterConfig, named_setting, register_filter, reject

if TYPE_CHECKING:
    from medvl.curate.config import CurateConfig

__all__ = ["MedicalTextConfig", "MedicalTextFilter"]


class MedicalTextConfig(FilterConfig):
    """The learned alternative (or complement) to the vocabulary test of `filter.text`."""

    enabled: bool = False
    model: str = Field("builtin", description="'builtin' or a folder from `medvl curate train-text-filter`")
    threshold: float | None = Field(None, ge=0, le=1, description="default: the operating point saved with it")
    text: Literal["caption", "caption_and_mentions"] = "caption"
    batch_size: int = Field(64, ge=1)

    def resolve_paths(self, absolute: Callable[[str | None, str], str | None]) -> "MedicalTextConfig":
        return self if self.model == "builtin" else self.model_copy(update={"model": absolute(self.model, "model")})


@register_filter("medical_text")
class MedicalTextFilter(CurateFilter):
    """Drops captions the probe scores below the threshold (`not_medical_text`, with p(medical))."""

    name = "medical text filter"
    cost = 30
    config_class = MedicalTextConfig

    def __init__(self, config: MedicalTextConfig, run: "CurateConfig | None" = None, exclusion_writer: Any = None):
        super().__init__(config, run, exclusion_writer)
        self.batch_size = config.batch_size
        self._probe: Any = None

    @classmethod
    def check(cls, config: MedicalTextConfig, run: "CurateConfig") -> None:  # type: ignore[override]
        """The probe, loaded as the tasks will load it (`TextProbe.load`: its file and its vocabulary)."""
        from medvl.curate.text_probe import TextProbe

        with named_setting("filter.medical_text.model"):
            TextProbe.load(config.model)

    def probe(self) -> Any:
        if self._probe is None:
            from medvl.curate.text_probe import TextProbe

            self._probe = TextProbe.load(self.config.model)
        return self._probe

    def _text(self, doc: Document) -> str:
        if self.config.text == "caption":
            return doc.text
        return " ".join([doc.text, *doc.metadata.get("mentions", [])])

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        return self.filter_batch([doc])[0]

    def filter_batch(self, batch: list[Document]) -> list[bool | tuple[bool, str]]:
        probe = self.probe()
        threshold = probe.threshold if self.config.threshold is None else self.config.threshold
        results: list[bool | tuple[bool, str]] = []
        for doc, p in zip(batch, probe.predict_proba([self._text(d) for d in batch])):
            doc.metadata["p_medical_text"] = round(float(p), 4)
            results.append(True if p >= threshold else reject(doc, "not_medical_text", f"p(medical)={p:.3f} < {threshold:.3f}"))
        return results
