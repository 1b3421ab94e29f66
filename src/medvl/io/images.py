"""The one image loader: every stage (curation, training, eval, serving) opens images here.

`load_image(source)` takes a path or raw bytes and returns a fully decoded RGB `PIL.Image`, or
raises `ImageLoadError` with a machine-readable `.reason` from `REASONS`, so a caller records
the reject and goes on. `image_size(source)` reads (width, height) from the header only.
`image_files(sources)` lists the image files named or found (by suffix, `IMAGE_SUFFIXES`) under
files and folders: the one walk every stage that takes "images or folders of images" uses.

Choices made here, applied the same way everywhere:
- Formats: JPEG (camera MPO too), PNG, TIFF (first page), WebP, BMP, GIF (first frame), PPM,
  JPEG 2000; DICOM goes to `medvl.io.dicom` (found by its `DICM` magic or a .dcm/.dicom suffix).
  Other PIL plugins (EPS, PSD, ...) are not tried: EPS would run Ghostscript on untrusted input.
- 16-bit and float greyscale (`I;16*`, `I`, `F`) is stretched from the image's own finite
  min..max to 0..255; a constant image comes out black; NaN and -inf map to black, +inf to white.
- Transparency (RGBA, LA, PA, P/L/RGB with a transparent colour) is composited on white, the
  background of the papers and figures the toolkit reads.
- EXIF orientation is applied, and `image_size` reports the size after it.
- Decompression bombs: width*height from the header is checked against `max_pixels`
  (`DEFAULT_MAX_PIXELS` = 64 MP: a 8000x8000 scan passes) before any pixel is decoded. PIL's
  own limit (`Image.MAX_IMAGE_PIXELS`, about 89 MP; beyond twice that it raises) also stays in
  force: its warning is turned into `too_large` for the duration of the call, never globally, and
  the message says that `max_pixels` does not raise it.
"""

from __future__ import annotations

import base64
import binascii
import io
import os
import re
import warnings
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

from medvl.errors import UserError
from medvl.io.pixels import REASONS, ImageLoadError, check_pixel_count, rescale_to_uint8

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "DEFAULT_MAX_DATA_URL_BYTES",
    "REASONS",
    "ImageLoadError",
    "load_image",
    "image_size",
    "image_files",
    "IMAGE_SUFFIXES",
    "to_rgb",
    "rescale_to_uint8",
    "encode_data_url",
    "decode_data_url",
]

DEFAULT_MAX_PIXELS = 64_000_000
DEFAULT_MAX_DATA_URL_BYTES = 20 * 1024 * 1024

PIL_FORMATS = ("JPEG", "PNG", "TIFF", "WEBP", "BMP", "GIF", "PPM", "JPEG2000")
_MAGIC = (b"\xff\xd8\xff", b"\x89PNG", b"II*\x00", b"MM\x00*", b"GIF8", b"BM", b"RIFF")
_HIGH_DEPTH_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")
_ALPHA_MODES = ("RGBA", "RGBa", "LA", "La", "PA")
_BYTES_NAME = "<bytes>"
# The file suffixes of the formats above, matched case-insensitively when a folder is walked.
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".tif", ".tiff", ".webp", ".bmp", ".gif", ".ppm",
                            ".jp2", ".j2k", ".dcm", ".dicom"})

Source = str | Path | bytes


def load_image(
    source: Source, *, max_pixels: int = DEFAULT_MAX_PIXELS, frame: str | int = "middle"
) -> Image.Image:
    """Decode `source` (a path or the file's bytes) to an RGB image; raise `ImageLoadError`.

    `frame` picks the frame of a multi-frame DICOM ("middle", "first" or an index, negative
    counting from the end); TIFF and GIF always give their first page/frame.
    """
    with _opened(source) as (fp, name):
        return _load(fp, name, max_pixels=max_pixels, frame=frame)


def image_size(source: Source) -> tuple[int, int]:
    """(width, height) as `load_image` would return it, read from the header without decoding."""
    with _opened(source) as (fp, name), _failures_mapped(fp, name):
        from medvl.io import dicom

        if dicom.is_dicom(_head(fp), name):
            return dicom.dicom_size(fp, name)
        with _pil_bomb_limit():
            image = Image.open(fp, formats=PIL_FORMATS)
        width, height = image.size
        return (height, width) if _orientation(image) in (5, 6, 7, 8) else (width, height)


def image_files(sources: Iterable[str | Path]) -> list[Path]:
    """Every image file named or found (recursively, by `IMAGE_SUFFIXES`) under the given files and
    folders, sorted, each once. A named file is kept whatever its suffix; a source that does not
    exist is a `UserError`. Symlinked folders are walked (each real folder once, so a link cycle
    ends); a folder entry reached by two routes (`a` and `a/../a`, a folder and a link to it) is
    listed once, under the first route given. Two names for one file are two entries; a dangling
    symlink is listed, so that the stage reading it reports the missing image."""
    found: dict[Path, Path] = {}
    for source in map(Path, sources):
        if source.is_dir():
            candidates = _walked_images(source)
        elif source.is_file():
            candidates = [source]
        else:
            raise UserError(f"{source}: no such image file or folder")
        for path in candidates:
            found.setdefault(Path(os.path.realpath(path.parent)) / path.name, path)
    return sorted(found.values())


def _walked_images(folder: Path) -> Iterator[Path]:
    """Image files under `folder`, following symlinked folders but entering each real folder once."""
    seen: set[str] = set()
    for root, dirs, files in os.walk(folder, followlinks=True):
        real = os.path.realpath(root)
        if real in seen:
            dirs.clear()
            continue
        seen.add(real)
        for name in files:
            path = Path(root) / name
            if path.suffix.lower() in IMAGE_SUFFIXES and (path.is_file() or path.is_symlink()):
                yield path


def to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL mode to RGB (the same object when already RGB); see the module notes for how."""
    if image.mode in _HIGH_DEPTH_MODES:
        return Image.fromarray(rescale_to_uint8(np.asarray(image))).convert("RGB")
    if image.mode in _ALPHA_MODES or "transparency" in image.info:
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return image if image.mode == "RGB" else image.convert("RGB")


def encode_data_url(
    image: Image.Image, format: str = "JPEG", max_side: int | None = None, quality: int = 90
) -> str:
    """`data:image/...;base64,` URL of `image`, first shrunk (aspect kept) so no side > `max_side`."""
    kind = format.upper()
    if kind not in ("JPEG", "PNG"):
        raise ValueError(f"data URL format must be JPEG or PNG, not {format!r}")
    if max_side is not None and max(image.size) > max_side:
        image = image.copy()
        image.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    if kind == "JPEG" or image.mode not in ("RGB", "RGBA", "L", "LA"):
        image = to_rgb(image)
    buffer = io.BytesIO()
    image.save(buffer, kind, quality=quality)
    return f"data:image/{kind.lower()};base64,{base64.b64encode(buffer.getvalue()).decode('ascii')}"


def decode_data_url(
    url: str,
    *,
    max_bytes: int = DEFAULT_MAX_DATA_URL_BYTES,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> Image.Image:
    """Decode a base64 `data:image/...` (or `data:application/dicom`) URL with `load_image`'s checks;
    errors name "<data-url>". The format is found from the bytes, as for files, not from the label."""
    name = "<data-url>"
    header, comma, payload = url.strip().partition(",")
    media_type = header[len("data:") :].split(";")[0]
    if not (comma and header.startswith("data:") and header.endswith(";base64")):
        raise ImageLoadError(name, "bad_data_url", f"expected 'data:image/...;base64,', got {header[:40]!r}")
    if media_type and not (media_type.startswith("image/") or media_type == "application/dicom"):
        raise ImageLoadError(name, "bad_data_url", f"media type {media_type!r} is not an image")
    payload = "".join(payload.split())
    if (size := len(payload) * 3 // 4) > max_bytes:
        raise ImageLoadError(name, "too_large", f"about {size} bytes > max_bytes={max_bytes}")
    try:
        data = base64.b64decode(payload, validate=True)
    except binascii.Error as exc:
        raise ImageLoadError(name, "bad_data_url", f"invalid base64: {exc}") from exc
    if not data:
        raise ImageLoadError(name, "empty", "the data URL carries no bytes")
    return _load(io.BytesIO(data), name, max_pixels=max_pixels, frame="middle")


def _load(fp: BinaryIO, name: str, *, max_pixels: int, frame: str | int) -> Image.Image:
    with _failures_mapped(fp, name):
        from medvl.io import dicom

        if dicom.is_dicom(_head(fp), name):
            return dicom.read_dicom(fp, name, max_pixels=max_pixels, frame=frame)
        with _pil_bomb_limit():
            image = Image.open(fp, formats=PIL_FORMATS)
            check_pixel_count(name, *image.size, max_pixels)
            image.load()
        ImageOps.exif_transpose(image, in_place=True)
        return to_rgb(image)


@contextmanager
def _opened(source: Source) -> Iterator[tuple[BinaryIO, str]]:
    """A binary file object and display name for `source`; missing/unreadable/empty raise."""
    if isinstance(source, bytes):
        if not source:
            raise ImageLoadError(_BYTES_NAME, "empty", "no bytes given")
        yield io.BytesIO(source), _BYTES_NAME
        return
    name = os.fspath(source)
    try:
        if os.path.isdir(name):
            raise ImageLoadError(name, "unreadable", "is a directory")
        handle = open(name, "rb")
    except FileNotFoundError as exc:
        raise ImageLoadError(name, "missing", "no such file") from exc
    except OSError as exc:
        raise ImageLoadError(name, "unreadable", f"{type(exc).__name__}: {exc.strerror or exc}") from exc
    with handle:
        if os.fstat(handle.fileno()).st_size == 0:
            raise ImageLoadError(name, "empty", "file has 0 bytes")
        yield handle, name


@contextmanager
def _failures_mapped(fp: BinaryIO, name: str) -> Iterator[None]:
    """Turn whatever PIL, pydicom, numpy or the OS raise while decoding into one ImageLoadError.

    Catching `Exception` is deliberate: image decoders raise a wide, undocumented range of types
    (OSError, SyntaxError, struct.error, KeyError, ...) and callers need exactly one.
    """
    try:
        yield
    except ImageLoadError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageLoadError(name, "too_large", _pillow_limit_detail(exc)) from exc
    except MemoryError as exc:
        raise ImageLoadError(name, "too_large", str(exc) or type(exc).__name__) from exc
    except UnidentifiedImageError as exc:
        if _head(fp).startswith(_MAGIC):
            raise ImageLoadError(name, "corrupt", "image header is unreadable") from exc
        raise ImageLoadError(name, "not_image", f"not one of {', '.join(PIL_FORMATS)} or DICOM") from exc
    except Exception as exc:
        text = f"{type(exc).__name__}: {exc}"
        truncated = isinstance(exc, EOFError) or "truncated" in str(exc).lower()
        raise ImageLoadError(name, "truncated" if truncated else "corrupt", text) from exc


def _pillow_limit_detail(exc: Exception) -> str:
    """Pillow's bomb message in medvl's words: the pixels, Pillow's limit, and that `max_pixels` cannot lift it."""
    found = re.search(r"\((\d+) pixels\) exceeds limit of (\d+) pixels", str(exc))
    if found is None:
        return str(exc)
    pixels, limit = found.groups()
    return (f"{pixels} pixels exceeds Pillow's limit of {limit} (PIL.Image.MAX_IMAGE_PIXELS, which max_pixels "
            "does not raise)")


@contextmanager
def _pil_bomb_limit() -> Iterator[None]:
    """Within the block, PIL's DecompressionBombWarning is raised (and mapped to `too_large`).

    Before Python 3.14 warning filters are process-wide: threads racing here may leave this
    filter installed after the block (PIL's limit then stays strict) or drop a filter another
    thread set meanwhile, as with any `warnings.catch_warnings`.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        yield


def _head(fp: BinaryIO, size: int = 132) -> bytes:
    """The first `size` bytes of `fp`, leaving its position at the start."""
    fp.seek(0)
    head = fp.read(size)
    fp.seek(0)
    return head


def _orientation(image: Image.Image) -> int:
    # A PNG's EXIF may sit after the pixels and PIL would decode them to find it: only use it
    # when it came with the header.
    if image.format == "PNG" and "exif" not in image.info:
        return 1
    return int(image.getexif().get(ExifTags.Base.Orientation, 1))
