"""DICOM for the image loader: one frame of a DICOM file as a display-ready RGB image.

Called by `medvl.io.images.load_image` / `image_size` (use those); errors are its
`ImageLoadError`. The display pipeline follows DICOM PS3.3 C.11 with pydicom's own functions:

1. decode one frame (`frame`: "middle" (default), "first" or an index; negative counts from
   the end) with pydicom's decoder for the transfer syntax. The compressed syntaxes decode
   through the permissively licensed plugins medvl depends on: python-gdcm (JPEG lossless,
   JPEG-LS, JPEG 2000, and 12-bit JPEG through `medvl.io.gdcm_jpeg12`), pylibjpeg-openjpeg
   (JPEG 2000 and HTJ2K) and pyjpegls (JPEG-LS); a syntax no installed plugin decodes is
   `unsupported`, named;
2. greyscale: modality LUT (RescaleSlope/Intercept) → VOI LUT sequence, else window
   centre/width (the first of several), mapped to 0..255 over the window's own output range;
   with neither, or an invalid window (e.g. width 0), the frame's own min..max; MONOCHROME1 is
   inverted so that bright means dense as in MONOCHROME2;
3. colour: YBR_FULL / YBR_FULL_422 → RGB with `convert_color_space`, PALETTE COLOR through its
   LUT; samples deeper than 8 bits are scaled by their bit depth.

The pixel limit is checked on Rows x Columns before any pixel data is decoded.
"""

from __future__ import annotations

import threading
from typing import BinaryIO

import numpy as np
import pydicom
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.pixels import (
    apply_color_lut,
    apply_modality_lut,
    apply_voi,
    apply_windowing,
    as_pixel_options,
    convert_color_space,
    get_decoder,
)
from pydicom.pixels.utils import get_expected_length
from pydicom.uid import (
    UID,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEGExtended12Bit,
)

from medvl.io.pixels import ImageLoadError, check_pixel_count, rescale_to_uint8

__all__ = ["DICOM_SUFFIXES", "FRAME_RULES", "is_dicom", "dicom_size", "read_dicom", "frame_index"]

DICOM_SUFFIXES = (".dcm", ".dicom")
FRAME_RULES = ("middle", "first")
_NATIVE_SYNTAXES = {  # (implicit VR, little endian) → transfer syntax
    (True, True): ImplicitVRLittleEndian,
    (False, True): ExplicitVRLittleEndian,
    (False, False): ExplicitVRBigEndian,
}
_PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
_JPEG12_PLUGIN = "gdcm-12bit"
_PLUGIN_LOCK = threading.Lock()


def is_dicom(head: bytes, name: str) -> bool:
    """True for the `DICM` magic at byte 128 (any name) or a .dcm/.dicom file name."""
    return head[128:132] == b"DICM" or name.lower().endswith(DICOM_SUFFIXES)


def dicom_size(fp: BinaryIO, name: str) -> tuple[int, int]:
    """(Columns, Rows) from the header, without reading pixel data."""
    return _columns_rows(_read(fp, name, header_only=True), name)


def _columns_rows(ds: Dataset, name: str) -> tuple[int, int]:
    if "Rows" not in ds or "Columns" not in ds:
        raise ImageLoadError(name, "not_image", "DICOM header has no Rows/Columns")
    return int(ds.Columns), int(ds.Rows)


def frame_index(name: str, n_frames: int, frame: str | int) -> int:
    """The 0-based frame `frame` selects among `n_frames`; `bad_frame` when there is none."""
    if frame == "middle":
        return n_frames // 2
    if frame == "first":
        return 0
    if isinstance(frame, int) and -n_frames <= frame < n_frames:
        return frame % n_frames
    detail = f"frame {frame!r} not in {FRAME_RULES} or an index for {n_frames} frame(s)"
    raise ImageLoadError(name, "bad_frame", detail)


def read_dicom(fp: BinaryIO, name: str, *, max_pixels: int, frame: str | int) -> Image.Image:
    """One frame of the DICOM in `fp` as RGB, following the module's display pipeline."""
    ds = _read(fp, name, header_only=False)
    if not any(keyword in ds for keyword in _PIXEL_KEYWORDS):
        detail = (
            f"no pixel data (SOP class {ds.get('SOPClassUID', 'unknown')}, "
            f"modality {ds.get('Modality', 'unknown')}): a non-image object or a file cut short"
        )
        raise ImageLoadError(name, "not_image", detail)
    check_pixel_count(name, *_columns_rows(ds, name), max_pixels)
    index = frame_index(name, int(ds.get("NumberOfFrames") or 1), frame)
    pixels, photometric = _decode_frame(ds, name, index)
    if pixels.ndim == 3:
        rgb = _colour(pixels, photometric, ds, name)
    elif photometric == "PALETTE COLOR":
        rgb = apply_color_lut(pixels, ds)
        rgb = _to_uint8_by_depth(rgb, 8 * rgb.itemsize)
    else:
        return Image.fromarray(_greyscale(pixels, ds, photometric)).convert("RGB")
    return Image.fromarray(rgb, "RGB")


def _read(fp: BinaryIO, name: str, *, header_only: bool) -> Dataset:
    try:
        # force=True also reads a .dcm without the 128-byte preamble.
        return pydicom.dcmread(fp, force=True, stop_before_pixels=header_only)
    except InvalidDicomError as exc:
        raise ImageLoadError(name, "not_image", f"not a DICOM file: {exc}") from exc


def _decode_frame(ds: Dataset, name: str, index: int) -> tuple[np.ndarray, str]:
    """The frame's samples in their stored colour space, and that photometric interpretation."""
    syntax = _transfer_syntax(ds)
    if syntax is None:
        raise ImageLoadError(name, "corrupt", "no Transfer Syntax UID and no readable encoding")
    _add_jpeg12_plugin()
    try:
        decoder = get_decoder(syntax)
    except NotImplementedError as exc:
        raise ImageLoadError(name, "unsupported", f"transfer syntax {syntax.name} ({syntax})") from exc
    if not decoder.is_available:
        needs = "; ".join(decoder.missing_dependencies)
        raise ImageLoadError(name, "unsupported", f"transfer syntax {syntax.name} needs one of: {needs}")
    if decoder.is_native and "PixelData" in ds and len(ds.PixelData) < get_expected_length(ds):
        detail = f"pixel data has {len(ds.PixelData)} of {get_expected_length(ds)} bytes"
        raise ImageLoadError(name, "truncated", detail)
    try:
        pixels, properties = decoder.as_array(ds, index=index, raw=True, **as_pixel_options(ds))
    except RuntimeError as exc:  # every plugin failed; "does not support" means a codec limit
        if "not support" not in str(exc):
            raise
        raise ImageLoadError(name, "unsupported", f"transfer syntax {syntax.name}: {exc}") from exc
    return pixels, str(properties.get("photometric_interpretation", ds.PhotometricInterpretation))


def _add_jpeg12_plugin() -> None:
    """Give pydicom's 12-bit JPEG decoder medvl's GDCM plugin (once per process; pydicom's call is not thread-safe)."""
    decoder = get_decoder(JPEGExtended12Bit)
    if _JPEG12_PLUGIN in decoder.available_plugins:
        return
    with _PLUGIN_LOCK:
        try:
            decoder.add_plugin(_JPEG12_PLUGIN, ("medvl.io.gdcm_jpeg12", "decode_frame"))
        except ValueError:  # added already (without GDCM it stays among the unavailable ones)
            pass


def _transfer_syntax(ds: Dataset) -> UID | None:
    """The file's transfer syntax; a file without a meta header (ACR-NEMA style) is
    uncompressed in the encoding pydicom read it with."""
    syntax = getattr(ds, "file_meta", Dataset()).get("TransferSyntaxUID")
    if syntax is not None:
        return UID(syntax)
    return _NATIVE_SYNTAXES.get(ds.original_encoding)


def _greyscale(pixels: np.ndarray, ds: Dataset, photometric: str) -> np.ndarray:
    values = apply_modality_lut(pixels, ds)
    try:
        grey = _apply_voi(values, ds)
    except (ValueError, AttributeError, NotImplementedError, IndexError, TypeError):
        grey = None  # an unusable VOI module: show the frame's own range instead
    if grey is None:
        grey = rescale_to_uint8(values)
    return 255 - grey if photometric == "MONOCHROME1" else grey


def _apply_voi(values: np.ndarray, ds: Dataset) -> np.ndarray | None:
    """`values` through the VOI LUT (preferred) or the window, scaled over its output range.

    These are the two halves of pydicom's `apply_voi_lut`, called apart to learn the output
    range: the LUT's over all its inputs, the window's from pushing -inf and +inf through it.
    """
    if ds.get("VOILUTSequence"):
        entries, first_input = ds.VOILUTSequence[0].LUTDescriptor[:2]
        table = apply_voi(np.arange(first_input, first_input + (entries or 2**16)), ds)
        mapped = apply_voi(np.rint(values).astype(np.int64), ds)
        return rescale_to_uint8(mapped, float(table.min()), float(table.max()))
    if "WindowCenter" in ds and "WindowWidth" in ds:
        low, high = apply_windowing(np.array([-np.inf, np.inf]), ds)
        return rescale_to_uint8(apply_windowing(values, ds), float(low), float(high))
    return None


def _colour(pixels: np.ndarray, photometric: str, ds: Dataset, name: str) -> np.ndarray:
    rgb = _to_uint8_by_depth(pixels, int(ds.get("BitsStored") or 8 * pixels.itemsize))
    if photometric in ("YBR_FULL", "YBR_FULL_422"):
        return convert_color_space(rgb, photometric, "RGB")
    if photometric != "RGB":
        raise ImageLoadError(name, "unsupported", f"colour photometric interpretation {photometric}")
    return rgb


def _to_uint8_by_depth(samples: np.ndarray, bits: int) -> np.ndarray:
    """Samples of `bits` significant bits scaled to 8 bits (unchanged when already uint8)."""
    if samples.dtype == np.uint8:
        return samples
    return rescale_to_uint8(samples, 0.0, float(2**bits - 1))
