"""A GGUF file checked whole before transformers reads it (`check_gguf`).

transformers reads a GGUF file's header for the config and the tokenizer, then dequantises its
tensors. A file cut short (an interrupted download) fails in there as a `struct.error` traceback
when the cut is in the header, or as a reshape error that names no file when it is in the tensors
(after some seconds of dequantising when it is near the end). Here the header is walked (GGUF v2/v3:
metadata, then the tensor table) and the file's size compared with the end of its last tensor, in
a fraction of a second. What this walk does not know (another version, a value or tensor type it
has no size for) is left to transformers, which says what it makes of it.
"""

from __future__ import annotations

import mmap
import struct
from math import prod
from pathlib import Path

from medvl.config import ConfigError

__all__ = ["check_gguf"]

_WIDTHS = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}  # metadata value type: bytes
_STRING, _ARRAY, _UINT32 = 8, 9, 4
_ALIGNMENT_KEY = b"general.alignment"


def check_gguf(path: Path, key: str) -> None:
    """Raise a ConfigError naming `key` and `path` unless `path` is a GGUF file that holds all its tensors."""
    with path.open("rb") as file:
        if file.read(4) != b"GGUF":
            fix = "download it again" if path.suffix == ".gguf" else "name the model's .gguf file"
            raise ConfigError(f"{key}: {path} is not a GGUF file (it does not start with the bytes 'GGUF'); {fix}")
        size = path.stat().st_size
        with mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ) as blob:
            try:
                end = _data_end(blob)
            except struct.error:
                raise ConfigError(f"{key}: {path} is cut short in its header ({size:,} bytes; an interrupted "
                                  "download?); download it again") from None
    if end is not None and end > size:
        raise ConfigError(f"{key}: {path} is cut short: its tensors end at byte {end:,}, the file has {size:,} (an "
                          "interrupted download?); download it again")


def _data_end(blob: mmap.mmap) -> int | None:
    """Where the last tensor of GGUF file `blob` ends (None: a file this walk cannot measure); a
    `struct.error` where the header runs past the end of the file."""
    from gguf import GGML_QUANT_SIZES

    version, tensors, values = struct.unpack_from("<IQQ", blob, 4)
    if version not in (2, 3):
        return None
    pos, alignment = 24, 32  # 32: GGUF's alignment where general.alignment is not set
    for _ in range(values):
        name_end = _skip_string(blob, pos)
        (kind,) = struct.unpack_from("<I", blob, name_end)
        if kind == _UINT32 and blob[pos + 8:name_end] == _ALIGNMENT_KEY:
            (alignment,) = struct.unpack_from("<I", blob, name_end + 4)
        pos = _skip_value(blob, name_end + 4, kind)
        if pos is None or alignment < 1:
            return None
    end = 0
    for _ in range(tensors):
        pos = _skip_string(blob, pos)
        (dims,) = struct.unpack_from("<I", blob, pos)
        shape = struct.unpack_from(f"<{dims}Q", blob, pos + 4)
        kind, offset = struct.unpack_from("<IQ", blob, pos + 4 + 8 * dims)
        pos += 16 + 8 * dims
        if kind not in GGML_QUANT_SIZES:
            return None
        block, block_bytes = GGML_QUANT_SIZES[kind]
        end = max(end, offset + prod(shape) // block * block_bytes)
    return -(-pos // alignment) * alignment + end  # the tensor data starts at the next multiple of alignment


def _skip_string(blob: mmap.mmap, pos: int) -> int:
    (length,) = struct.unpack_from("<Q", blob, pos)
    if pos + 8 + length > len(blob):
        raise struct.error("a string runs past the end of the file")
    return pos + 8 + length


def _skip_value(blob: mmap.mmap, pos: int, kind: int) -> int | None:
    """The offset past the metadata value of type `kind` at `pos` (None: a type GGUF does not define)."""
    if kind in _WIDTHS:
        return pos + _WIDTHS[kind]
    if kind == _STRING:
        return _skip_string(blob, pos)
    if kind != _ARRAY:
        return None
    item, count = struct.unpack_from("<IQ", blob, pos)
    pos += 12
    if item in _WIDTHS:
        return pos + count * _WIDTHS[item]
    for _ in range(count):
        pos = _skip_value(blob, pos, item)
        if pos is None:
            return None
    return pos
