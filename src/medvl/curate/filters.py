"""The filter steps of the prepare stage: ingest errors, text, image — each a datatrove `BaseFilter`.

A dropped record goes to the filter's `exclusion_writer` (a `RejectWriter`) as one reject line
`{"id", "stage", "reason", "detail", "modality", "source"}`; datatrove counts `dropped_<reason>`
in its per-task stats, which the report reads.

Image step, per record: every image is read once (bytes → sha256), decoded with the shared loader
(`medvl.io.images.load_image`), checked (min side, aspect ratio, pixel bounds), hashed (64-bit
pHash, when perceptual dedup is on) and, when a classifier is configured, scored medical /
non-medical. What dedup needs later is kept in `metadata["images_info"]`; images are not kept.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Any

from datatrove.data import Document
from datatrove.pipeline.filters.base_filter import BaseFilter
from datatrove.pipeline.writers.jsonl import JsonlWriter

from medvl.curate.config import ImageFilterConfig, TextFilterConfig
from medvl.curate.ingest import doc_images
from medvl.curate.vocab import load_vocabulary, tokenize

__all__ = ["RejectWriter", "IngestCheck", "TextFilter", "ImageFilter", "reject"]

log = logging.getLogger("medvl.curate")


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
        return {
            "id": doc.id,
            "stage": stage,
            "reason": meta.get("filter_reason", "rejected"),
            "detail": meta.get("reject_detail", ""),
            "modality": meta.get("modality"),
            "source": meta.get("source"),
            "order": meta.get("order"),
        }

    return adapt


class IngestCheck(BaseFilter):
    """Drops the records the reader could not normalise (malformed line, missing field, ...)."""

    name = "ingest check"

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        error = doc.metadata.pop("ingest_error", None)
        return True if error is None else reject(doc, error[0], error[1])


class TextFilter(BaseFilter):
    """Caption length bounds and a minimum number of distinct medical-vocabulary terms."""

    name = "text filter"

    def __init__(self, config: TextFilterConfig, exclusion_writer: JsonlWriter | None = None):
        super().__init__(exclusion_writer)
        self.config = config

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        config = self.config
        words = len(doc.text.split())
        if words < config.min_caption_words:
            return reject(doc, "caption_too_short", f"{words} words < {config.min_caption_words}")
        if words > config.max_caption_words:
            return reject(doc, "caption_too_long", f"{words} words > {config.max_caption_words}")
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


class ImageFilter(BaseFilter):
    """Decodable, size/shape bounds, optional medical-image classifier; records image hashes."""

    name = "image filter"

    def __init__(self, config: ImageFilterConfig, phash: bool, exclusion_writer: JsonlWriter | None = None):
        super().__init__(exclusion_writer)
        self.config = config
        self.phash = phash
        self._classifier: Any = None
        self._warned = False

    def classifier(self) -> Any:
        if self._classifier is None and self.config.classifier:
            from medvl.curate.classifier import MedicalImageClassifier

            self._classifier = MedicalImageClassifier.load(self.config.classifier)
        return self._classifier

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        from medvl.io.images import ImageLoadError, load_image

        config = self.config
        paths = doc_images(doc)
        if not paths:
            return reject(doc, "no_image", "the record names no image")
        if len(paths) > config.max_images:
            return reject(doc, "too_many_images", f"{len(paths)} > {config.max_images}")
        infos, images = [], []
        for index, path in enumerate(paths):
            where = f"image {index} ({Path(path).name})"
            try:
                data = Path(path).read_bytes()
                image = load_image(data, max_pixels=config.max_pixels)
            except FileNotFoundError:
                return reject(doc, "image_missing", f"{where}: no such file")
            except OSError as exc:
                return reject(doc, "image_unreadable", f"{where}: {exc}")
            except ImageLoadError as exc:
                return reject(doc, f"image_{exc.reason}", f"{where}: {exc.detail}")
            problem = self._shape_problem(*image.size)
            if problem:
                return reject(doc, problem[0], f"{where}: {problem[1]}")
            info = {"width": image.width, "height": image.height, "sha256": hashlib.sha256(data).hexdigest()}
            if self.phash:
                import imagehash

                info["phash"] = str(imagehash.phash(image))
            infos.append(info)
            images.append(image)
        doc.metadata["images_info"] = infos
        return self._classify(doc, images)

    def _shape_problem(self, width: int, height: int) -> tuple[str, str] | None:
        config = self.config
        if min(width, height) < config.min_side:
            return "image_too_small", f"{width}x{height}: a side < {config.min_side}"
        if max(width, height) / max(1, min(width, height)) > config.max_aspect_ratio:
            return "image_aspect_ratio", f"{width}x{height}: aspect > {config.max_aspect_ratio}"
        if width * height < config.min_pixels:
            return "image_too_few_pixels", f"{width}x{height} < {config.min_pixels} pixels"
        return None

    def _classify(self, doc: Document, images: list) -> bool | tuple[bool, str]:
        classifier = self.classifier()
        if classifier is None:
            if not self._warned:
                log.warning(
                    "image_filter.classifier is not set: the medical-image classifier step is skipped"
                )
                self._warned = True
            self.stat_update("classifier_skipped")
            return True
        threshold = self.config.classifier_threshold
        if threshold is None:
            threshold = classifier.threshold
        probs = classifier.predict_proba(images)
        doc.metadata["medical_prob"] = [round(float(p), 4) for p in probs]
        worst = int(probs.argmin())
        if probs[worst] < threshold:
            return reject(
                doc, "non_medical_image", f"image {worst}: p(medical)={probs[worst]:.3f} < {threshold}"
            )
        return True


def caption_key(caption: str) -> str:
    """The normalised caption used by exact caption dedup: lower case, tokens only."""
    return hashlib.sha1(" ".join(tokenize(caption)).encode("utf-8")).hexdigest()[:16]
