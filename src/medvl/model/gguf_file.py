"""A GGUF file checked whole before transformers reads it (`check_gguf`).

transformers reads a GGUF file's header for the config and the tokenizer, then dequantises its
tensors. A file cut short (an interrupted download) fails in there as a `struct.error` traceback
when the cut is in the header, or as a reshape error that names no file when it is in the tensors
(after some seconds of dequantising when it is near the end). Here the `gguf` package's own reader
maps the whole file first (header, metadata, a view of every tensor; no dequantising), and what it
cannot read is one line naming the file. That read takes about 2 s for SmolLM2-135M's 98 MB file, and
a build checks the file for its tokenizer and again for its LLM: a file read whole once is not read
again while its size and modification time stay the same.
"""

from __future__ import annotations

import struct
from functools import lru_cache
from pathlib import Path

from medvl.config import ConfigError

__all__ = ["check_gguf"]


def check_gguf(path: Path, key: str) -> None:
    """Raise a ConfigError naming `key` and `path` unless `path` is a GGUF file that holds all its tensors."""
    with path.open("rb") as file:
        if file.read(4) != b"GGUF":
            fix = "download it again" if path.suffix == ".gguf" else "name the model's .gguf file"
            raise ConfigError(f"{key}: {path} is not a GGUF file (it does not start with the bytes 'GGUF'); {fix}")
    stat = path.stat()
    try:
        _read_whole(str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    except (ValueError, IndexError, struct.error) as error:
        raise ConfigError(f"{key}: {path} is cut short or damaged ({stat.st_size:,} bytes; the gguf package "
                          f"reads: {error}); download it again") from None


@lru_cache(maxsize=8)
def _read_whole(path: str, size: int, mtime_ns: int) -> None:
    """Read GGUF file `path` whole with the gguf package's reader (raising what it raises); `size` and
    `mtime_ns` key the cache, so a file changed since is read again."""
    from gguf import GGUFReader

    GGUFReader(path)
