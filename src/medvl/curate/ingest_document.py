"""The normalised figure–caption record every ingest format produces: a datatrove `Document`.

- `id`: stable record id (PMC: `{pdf_hash}_{fig_uri}`, LLaVA-Med: `pair_id`, pairs: id column or
  image stem, folder: relative path without extension);
- `text`: the caption;
- `media`: one `Media(type=IMAGE, path=absolute path)` per image (multi-panel figures carry several);
- `metadata`: `mentions` (in-text sentences citing the figure), `source`, `licence` (an SPDX id,
  `medvl.curate.licences`; the input's words in `licence_raw`), provenance `pmcid` and `figure_id`
  (None when the input does not say), `domain`, `modality`, `fig_label`, `order` ([source, file,
  item] — the global input order, independent of the number of tasks; every output is sorted by it)
  and format-specific `extra` fields.

`make_document` builds one; `doc_images` reads its images back.
"""

from __future__ import annotations

import re
from typing import Any

from datatrove.data import Document, Media, MediaType

from medvl.curate.licences import normalise_licence
from medvl.curate.vocab import infer_modality

__all__ = ["doc_images", "domain_modality", "make_document", "pmcid_in"]


def make_document(
    record_id: str,
    images: list[str],
    caption: str,
    *,
    order: list[int],
    source: str,
    mentions: list[str] | None = None,
    licence: str | None = None,
    domain: str | None = None,
    fig_label: str | None = None,
    pmcid: str | None = None,
    figure_id: str | None = None,
    extra: dict[str, Any] | None = None,
) -> Document:
    """The normalised record (see the module docstring)."""
    return Document(
        text=caption,
        id=record_id,
        media=[
            Media(id=f"{record_id}#{i}", type=MediaType.IMAGE, url=p, path=p) for i, p in enumerate(images)
        ],
        metadata={
            "mentions": mentions or [],
            "source": source,
            "licence": normalise_licence(licence),
            "licence_raw": licence,
            "pmcid": pmcid or pmcid_in(record_id),
            "figure_id": figure_id,
            "domain": domain,
            "modality": domain_modality(domain) or infer_modality(caption),
            "fig_label": fig_label,
            "order": order,
            "extra": extra or {},
        },
    )


_PMCID = re.compile(r"\b(PMC\d{4,})")


def pmcid_in(text: str) -> str | None:
    """The first PMC id (`PMC` and at least four digits) in `text`, or None."""
    match = _PMCID.search(text)
    return match.group(1) if match else None


def doc_images(doc: Document) -> list[str]:
    return [m.path or m.url for m in doc.media]


def domain_modality(domain: str | None) -> str | None:
    """LLaVA-Med's domain names are modalities already (chest_xray → x-ray, ...)."""
    return {
        "chest_xray": "x-ray",
        "ct_scan": "ct",
        "mri": "mri",
        "histology": "histology",
        "gross": "gross",
    }.get(domain or "")
