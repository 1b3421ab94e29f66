"""The image filter: every image read once, decoded, checked, signed for dedup, optionally classified.

Per record: each image is read (bytes → sha256), decoded with the shared loader
(`medvl.io.images.load_image`), checked (min side, aspect ratio, pixel bounds), given its
near-duplicate signature (`medvl.benchmarks.near_images`, when near-image dedup or decontamination needs
it) and, when a classifier is configured, scored medical / non-medical. What dedup needs later is
kept in `metadata["images_info"]`; images are not kept.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from datatrove.data import Document
from pydantic import Field

from medvl.curate.filters.base import CurateFilter, FilterConfig, named_setting, register_filter, reject
from medvl.curate.ingest_document import doc_images

if TYPE_CHECKING:
    from medvl.curate.config import CurateConfig

__all__ = ["ImageFilterConfig", "ImageFilter"]

log = logging.getLogger("medvl.curate")


class ImageFilterConfig(FilterConfig):
    """Decodability, size and shape bounds, and the medical-image classifier (PubMedVision)."""

    path_fields = ("classifier",)

    min_side: int = Field(336, ge=1, description="PubMedVision drops images smaller than 336x336")
    max_aspect_ratio: float = Field(5.0, ge=1.0, description="long side / short side")
    min_pixels: int = Field(0, ge=0)
    max_pixels: int = Field(60_000_000, ge=1, description="larger images are rejected (decompression bombs)")
    max_images: int = Field(16, ge=1, description="records with more panels are rejected")
    classifier: str | None = Field(
        None, description="folder saved by `medvl curate train-classifier`; unset: skipped"
    )
    classifier_threshold: float | None = Field(None, ge=0, le=1, description="default: the one saved with it")


@register_filter("image")
class ImageFilter(CurateFilter):
    """Decodable, size/shape bounds, optional medical-image classifier; records image signatures."""

    name = "image filter"
    cost = 40
    config_class = ImageFilterConfig

    def __init__(self, config: ImageFilterConfig, run: "CurateConfig | None" = None, exclusion_writer: Any = None):
        super().__init__(config, run, exclusion_writer)
        self.signatures = run is not None and run.needs_image_signatures
        self._classifier: Any = None
        self._warned = False

    @classmethod
    def check(cls, config: ImageFilterConfig, run: "CurateConfig") -> None:  # type: ignore[override]
        """The classifier's files, read as the tasks will read them (`read_classifier`)."""
        if config.classifier:
            from medvl.curate.classifier import read_classifier

            with named_setting("filter.image.classifier"):
                read_classifier(config.classifier)

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
            if self.signatures:
                from medvl.benchmarks.near_images import describe, encode_descriptor

                info["signature"] = encode_descriptor(describe(image))
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
                    "filter.image.classifier is not set: the medical-image classifier step is skipped"
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
