"""What the image decoders (`medvl.io.images`, `medvl.io.dicom`) share: the reasons an image fails
to load, `ImageLoadError`, the header pixel-count guard and the rescale of deep pixel data to 8 bits.

Use them through `medvl.io.images`, the one image loader; they live here so that the DICOM decoder
and the loader that calls it do not import each other.
"""

from __future__ import annotations

import numpy as np

from medvl.errors import Rejection

__all__ = ["REASONS", "ImageLoadError", "check_pixel_count", "rescale_to_uint8"]

REASONS = (
    "missing",  # no such file
    "unreadable",  # a directory, or no permission
    "empty",  # zero bytes
    "not_image",  # no supported image format recognised (text, HTML, random bytes, DICOM SR)
    "truncated",  # the data stops before the image does
    "corrupt",  # a known format whose content cannot be decoded
    "unsupported",  # valid, but needs a codec that is not installed (e.g. JPEG-LS DICOM)
    "too_large",  # more pixels than max_pixels, or more bytes than a data URL may carry
    "bad_frame",  # the requested DICOM frame does not exist
    "bad_data_url",  # not a base64 `data:image/...` URL
)


class ImageLoadError(Rejection):
    """Why one image could not be loaded: `.path` (or "<bytes>"), `.reason` (in REASONS), `.detail`."""

    def __init__(self, path: str, reason: str, detail: str):
        if reason not in REASONS:
            raise ValueError(f"unknown ImageLoadError reason {reason!r}; expected one of {REASONS}")
        self.path = str(path)
        super().__init__(reason, detail, f"{self.path}: {reason}: {detail}")


def rescale_to_uint8(
    values: np.ndarray, low: float | None = None, high: float | None = None
) -> np.ndarray:
    """Map `low`..`high` (default: the finite min..max of `values`) linearly onto 0..255.

    Values outside are clipped; NaN and -inf go to 0, +inf to 255; a constant image is all 0.
    """
    array = np.array(values, dtype=np.float32)  # a copy: the steps below work in place
    if low is None or high is None:
        finite = array[np.isfinite(array)]
        if finite.size == 0:
            return np.zeros(array.shape, dtype=np.uint8)
        low, high = float(finite.min()), float(finite.max())
    if not high > low:
        return np.zeros(array.shape, dtype=np.uint8)
    np.nan_to_num(array, copy=False, nan=low, posinf=high, neginf=low)
    array -= np.float32(low)
    array *= np.float32(255.0 / (high - low))
    return np.clip(np.rint(array, out=array), 0, 255, out=array).astype(np.uint8)


def check_pixel_count(name: str, width: int, height: int, max_pixels: int) -> None:
    """Raise `too_large` when a header declares more than `max_pixels` pixels."""
    if width * height > max_pixels:
        detail = f"{width}x{height} = {width * height} pixels exceeds max_pixels={max_pixels}"
        raise ImageLoadError(name, "too_large", detail)
