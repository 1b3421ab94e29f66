"""Near-duplicate images that survive resizing, re-encoding, brightness changes, small crops and
rotations, and horizontal flips: a global descriptor finds candidates at scale, keypoints confirm.

Descriptor (`describe`): the 63 AC coefficients of the 8x8 low-frequency DCT of the 32x32 grey image
(the coefficients pHash thresholds to bits, kept as floats), L2-normalised, for the whole image and
five crops (the centre and the four corners at 90% of each side): 6 x 63 float32 per image. The
crops let a cropped copy meet a row of its original. A horizontal flip negates the odd-column
coefficients, so a flipped query costs no new pass over the pixels (`flipped`).

Search (`NearImageIndex`): a faiss inner-product index over every row of every indexed image (exact
up to `exact_rows` rows; beyond, an inverted file trained on the rows so far, `ivf_index`); a query
(its whole-image row and that row flipped) gets the best `k` images and their cosine similarity.

Confirmation (`OrbVerifier`): ORB keypoints (OpenCV; 1000 on the grey image scaled to 512 px, FAST
threshold 10), Lowe ratio-test matches, and a RANSAC similarity transform (scale 0.7–1.4); a pair
is the same picture when at least `min_inliers` matches agree. Candidates whose descriptor
similarity reaches `exact_similarity` (resizes, re-encodes, flips) are accepted without keypoints.
`bench/curate_quality.py` measures recall per transformation and false matches on VQA-RAD's 315
distinct images.

`NearImageConfig` holds the thresholds (curation's `dedup.near_image` and `decontaminate.image`
sections) and builds the matcher. It lives below the stages because curation's dedup and
decontamination and `medvl data check`'s benchmark-overlap warning all match images with it.
"""

from __future__ import annotations

import base64
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps
from pydantic import Field

from medvl.config import Config

__all__ = [
    "ROWS",
    "DIM",
    "describe",
    "flipped",
    "encode_descriptor",
    "decode_descriptor",
    "NearImageIndex",
    "ivf_index",
    "OrbVerifier",
    "NearImageMatcher",
    "Match",
    "NearImageConfig",
]

DIM = 63
CROP = 0.9
_BOXES = (  # (left, top) of a CROP x CROP window, as fractions; first row: the whole image
    None,
    ((1 - CROP) / 2, (1 - CROP) / 2),
    (0.0, 0.0),
    (1 - CROP, 0.0),
    (0.0, 1 - CROP),
    (1 - CROP, 1 - CROP),
)
ROWS = len(_BOXES)
# Mirroring the image negates the DCT coefficients of odd horizontal frequency (row-major 8x8, DC dropped).
_FLIP = np.array([(-1.0) ** (k % 8) for k in range(1, 64)], dtype=np.float32)


def _dct_row(grey: Image.Image) -> np.ndarray:
    from scipy.fft import dctn

    pixels = np.asarray(grey.resize((32, 32), Image.Resampling.LANCZOS), dtype=np.float32)
    coefficients = dctn(pixels, norm="ortho")[:8, :8].ravel()[1:]
    return coefficients / max(float(np.linalg.norm(coefficients)), 1e-9)


def describe(image: Image.Image) -> np.ndarray:
    """(ROWS, DIM) float32: the whole image's descriptor, then its five 90% crops'."""
    grey = image.convert("L")
    grey.thumbnail((256, 256), Image.Resampling.BILINEAR)
    width, height = grey.size
    rows = []
    for box in _BOXES:
        if box is None:
            rows.append(_dct_row(grey))
            continue
        left, top = int(box[0] * width), int(box[1] * height)
        rows.append(_dct_row(grey.crop((left, top, left + int(CROP * width), top + int(CROP * height)))))
    return np.stack(rows)


def flipped(row: np.ndarray) -> np.ndarray:
    """The descriptor row of the horizontally mirrored image."""
    return row * _FLIP


def encode_descriptor(descriptor: np.ndarray) -> str:
    return base64.b64encode(descriptor.astype(np.float16).tobytes()).decode("ascii")


def decode_descriptor(text: str) -> np.ndarray:
    return np.frombuffer(base64.b64decode(text), dtype=np.float16).astype(np.float32).reshape(ROWS, DIM)


def ivf_index(training: np.ndarray, nprobe: int = 32) -> Any:
    """An inner-product inverted-file index with ~2 sqrt(n) lists, trained on a sample of `training`
    (the rows to add): 40 rows per list, what faiss's k-means asks for.

    `bench/curate_quality.py` measures it against exact search at 600k descriptor rows.
    """
    import faiss

    n, dim = training.shape
    lists = int(min(4096, max(16, 2 * np.sqrt(n))))
    index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, lists, faiss.METRIC_INNER_PRODUCT)
    sample = np.random.default_rng(0).choice(n, size=min(n, 40 * lists), replace=False)
    index.train(np.ascontiguousarray(training[np.sort(sample)], dtype=np.float32))
    index.nprobe = min(nprobe, lists)
    return index


class NearImageIndex:
    """faiss inner-product search over the rows of indexed images; payloads are ints."""

    def __init__(self, exact_rows: int = 60_000):
        import faiss

        self._faiss = faiss
        self.exact_rows = exact_rows
        self.index: Any = faiss.IndexFlatIP(DIM)
        self.owner: list[int] = []

    def __len__(self) -> int:
        return len(self.owner) // ROWS

    def add(self, descriptor: np.ndarray, payload: int) -> None:
        self.add_many(descriptor[None], [payload])

    def add_many(self, descriptors: np.ndarray, payloads: list[int]) -> None:
        """Index (n, ROWS, DIM) descriptors; past `exact_rows` rows, switch to an inverted file trained
        on everything indexed so far (adding a whole collection at once sizes it for the collection)."""
        rows = np.ascontiguousarray(descriptors.reshape(-1, DIM), dtype=np.float32)
        if self.index.ntotal + len(rows) > self.exact_rows and isinstance(self.index, self._faiss.IndexFlatIP):
            held = self.index.reconstruct_n(0, self.index.ntotal) if self.index.ntotal else rows[:0]
            self.index = ivf_index(np.concatenate([held, rows]))
            self.index.add(held)
        self.index.add(rows)
        self.owner.extend(p for p in payloads for _ in range(ROWS))

    def search(self, descriptor: np.ndarray, k: int) -> list[tuple[int, float]]:
        """The best `k` (payload, similarity) for a query descriptor, its mirror image included."""
        return self.search_many(descriptor[None], k)[0]

    def search_many(self, descriptors: np.ndarray, k: int, batch: int = 4096) -> list[list[tuple[int, float]]]:
        """`search` for (n, ROWS, DIM) query descriptors at once (faiss searches a batch in parallel)."""
        if not self.owner:
            return [[] for _ in descriptors]
        found = []
        for start in range(0, len(descriptors), batch):
            whole = descriptors[start : start + batch, 0]
            queries = np.ascontiguousarray(np.concatenate([whole, whole * _FLIP]), dtype=np.float32)
            sims, ids = self.index.search(queries, min(self.index.ntotal, k * ROWS))
            half = len(whole)
            for q in range(half):
                best: dict[int, float] = {}
                for sim, row in zip(np.r_[sims[q], sims[q + half]], np.r_[ids[q], ids[q + half]]):
                    if row >= 0:
                        payload = self.owner[row]
                        best[payload] = max(best.get(payload, -1.0), float(sim))
                found.append(sorted(best.items(), key=lambda item: -item[1])[:k])
        return found


class OrbVerifier:
    """Counts the keypoint matches two images share under one similarity transform (see module doc)."""

    def __init__(self, side: int = 512, features: int = 1000, fast_threshold: int = 10, cache: int = 2048):
        self.side, self.features, self.fast_threshold = side, features, fast_threshold
        self._cache: OrderedDict[tuple[str, bool], tuple[np.ndarray, np.ndarray | None]] = OrderedDict()
        self._cache_size = cache
        self._orb: Any = None

    def keypoints(self, image: Image.Image | str | Path, mirror: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
        """(normalised keypoint positions, ORB descriptors) of an image or an image file (cached)."""
        key = (str(image), mirror) if isinstance(image, (str, Path)) else None
        if key is not None and key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        if isinstance(image, (str, Path)):
            from medvl.io.images import load_image

            image = load_image(image)
        result = self._detect(ImageOps.mirror(image) if mirror else image)
        if key is not None:
            self._cache[key] = result
            if len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return result

    def _detect(self, image: Image.Image) -> tuple[np.ndarray, np.ndarray | None]:
        import cv2

        if self._orb is None:
            self._orb = cv2.ORB_create(nfeatures=self.features, fastThreshold=self.fast_threshold)
        grey = image.convert("L")
        grey.thumbnail((self.side, self.side), Image.Resampling.LANCZOS)
        pixels = np.asarray(grey)
        points, descriptors = self._orb.detectAndCompute(pixels, None)
        positions = np.array([p.pt for p in points], dtype=np.float32) / max(pixels.shape)
        return positions.reshape(-1, 2), descriptors

    def inliers(self, query: Any, candidate: Any) -> int:
        """Agreeing matches between `query` and `candidate` or its mirror image (the larger count)."""
        features = self.keypoints(query)
        return max(_agreeing(features, self.keypoints(candidate)), _agreeing(features, self.keypoints(candidate, True)))


def _agreeing(a: tuple[np.ndarray, np.ndarray | None], b: tuple[np.ndarray, np.ndarray | None]) -> int:
    import cv2

    (points_a, desc_a), (points_b, desc_b) = a, b
    if desc_a is None or desc_b is None or len(desc_a) < 8 or len(desc_b) < 8:
        return 0
    pairs = cv2.BFMatcher(cv2.NORM_HAMMING).knnMatch(desc_a, desc_b, k=2)
    good = [m for m, n in (p for p in pairs if len(p) == 2) if m.distance < 0.8 * n.distance]
    if len(good) < 6:
        return 0
    source = points_a[[m.queryIdx for m in good]]
    target = points_b[[m.trainIdx for m in good]]
    transform, mask = cv2.estimateAffinePartial2D(
        source, target, method=cv2.RANSAC, ransacReprojThreshold=0.01, maxIters=500
    )
    if transform is None:
        return 0
    scale = float(np.sqrt(abs(np.linalg.det(transform[:, :2]))))
    return int(mask.sum()) if 0.7 < scale < 1.4 else 0


@dataclass
class Match:
    payload: int
    similarity: float
    inliers: int | None  # None: accepted on the descriptor alone

    def describe(self) -> str:
        how = "descriptor" if self.inliers is None else f"{self.inliers} keypoint matches"
        return f"cosine {self.similarity:.4f}, {how}"


class NearImageMatcher:
    """Index + verifier: `add` images, then `find` the first confirmed near-duplicate of a query.
    Its settings have one home and one set of defaults, `NearImageConfig` (build it with `.matcher()`)."""

    def __init__(
        self,
        *,
        candidates: int,
        min_similarity: float,
        exact_similarity: float,
        min_inliers: int,
        exact_rows: int = 60_000,
    ):
        self.candidates, self.min_similarity = candidates, min_similarity
        self.exact_similarity, self.min_inliers = exact_similarity, min_inliers
        self.index = NearImageIndex(exact_rows)
        self.verifier = OrbVerifier()
        self.images: dict[int, Any] = {}  # payload -> image path (or image) for keypoints
        self.unreadable = 0  # candidates left unconfirmed because an image file could not be read

    def add(self, descriptor: np.ndarray, payload: int, image: Any) -> None:
        self.index.add(descriptor, payload)
        self.images[payload] = image

    def add_many(self, descriptors: np.ndarray, payloads: list[int], images: list[Any]) -> None:
        self.index.add_many(descriptors, payloads)
        self.images.update(zip(payloads, images))

    def find(self, descriptor: np.ndarray, image: Any) -> Match | None:
        """The best confirmed match of a query image (its descriptor and its pixels or path)."""
        return self.confirm(self.index.search(descriptor, self.candidates), image)

    def confirm(self, candidates: list[tuple[int, float]], image: Any, allowed: Any = None) -> Match | None:
        """The first of `candidates` (best first) confirmed as the same picture as `image`.

        `allowed(payload)` restricts the candidates (dedup: earlier kept images). A candidate whose
        image file cannot be read (gone since it was described) stays unconfirmed and is counted in
        `unreadable`.
        """
        from medvl.io.images import ImageLoadError

        for payload, similarity in candidates:
            if similarity < self.min_similarity:
                break
            if allowed is not None and not allowed(payload):
                continue
            if similarity >= self.exact_similarity:
                return Match(payload, similarity, None)
            try:
                inliers = self.verifier.inliers(image, self.images[payload])
            except (OSError, ImageLoadError):
                self.unreadable += 1
                continue
            if inliers >= self.min_inliers:
                return Match(payload, similarity, inliers)
        return None


class NearImageConfig(Config):
    """Near-duplicate images: descriptor candidates confirmed by keypoints."""

    enabled: bool = True
    candidates: int = Field(5, ge=1, description="best images by descriptor checked per query")
    min_similarity: float = Field(0.5, ge=-1, le=1, description="candidates below are not checked")
    exact_similarity: float = Field(
        0.998, ge=-1, le=1, description="at or above: the same picture without keypoints (resize, re-encode, flip)"
    )
    min_inliers: int = Field(50, ge=4, description="agreeing ORB keypoint matches that confirm a candidate")

    def matcher(self) -> NearImageMatcher:
        return NearImageMatcher(candidates=self.candidates, min_similarity=self.min_similarity,
                                exact_similarity=self.exact_similarity, min_inliers=self.min_inliers)
