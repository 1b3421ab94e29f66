"""Training data sources: LLaVA JSON/JSONL files and Hugging Face datasets, their images, the mix.

A source yields rows in the LLaVA conversation format (`medvl.records`). Image entries may be paths
(relative ones resolve against the source's `image_root`, else the data file's folder) or, in a HF
dataset, decoded images / `{"bytes", "path"}` dicts (`records.record_images(row, embedded=True)`).
Rows that are not JSON objects stay in the row list as `JsonlLineError`s so validation can count
them like any other reject.

`mix_entries` turns each source's valid rows into one list of (source, row) entries: `ratio` 0.5
keeps a seeded half of a source, 2.0 repeats it twice, 1.5 once plus a seeded half.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medvl.errors import UserError
from medvl.io.images import load_image, to_rgb
from medvl.io.jsonl import JsonlLineError, iter_jsonl
from medvl.records import record_id, record_images
from medvl.train.config import SourceConfig

__all__ = ["DataError", "LoadedSource", "load_source", "file_fingerprint", "stat_fingerprint", "ImageRef",
           "open_image", "mix_entries"]

# An image as a row holds it: a resolved path, raw bytes, or an already decoded PIL image.
ImageRef = Any


class DataError(UserError, ValueError):
    """Training data that cannot be used: a source file that is not there, no usable record, images that
    stopped loading mid-run. The message names the source or the report to read."""


@dataclass
class LoadedSource:
    config: SourceConfig
    rows: Any  # list of dict | JsonlLineError, or a datasets.Dataset
    image_root: Path
    fingerprint: str

    @property
    def name(self) -> str:
        return self.config.label()

    def __len__(self) -> int:
        return len(self.rows)

    def row(self, index: int) -> dict[str, Any] | JsonlLineError:
        return self.rows[index]

    def row_id(self, index: int, row: Any) -> str:
        if isinstance(row, dict) and record_id(row):
            return record_id(row)
        return f"{self.name}:{index + 1}"

    def image_refs(self, row: dict[str, Any]) -> list[ImageRef]:
        """The row's images to open (`records.record_images` with embedded images): paths resolved
        against the image root, raw bytes, or decoded images. Raises RecordError for a bad entry."""
        refs: list[ImageRef] = []
        for entry in record_images(row, embedded=True):
            if isinstance(entry, str):
                path = Path(entry).expanduser()
                refs.append(path if path.is_absolute() else self.image_root / path)
            elif isinstance(entry, dict):
                refs.append(entry["bytes"] if entry.get("bytes") else self.image_root / entry["path"])
            else:
                refs.append(entry)
        return refs


def load_source(config: SourceConfig) -> LoadedSource:
    """Read a source's rows (files are read whole; HF datasets stay memory-mapped)."""
    if config.path is not None:
        path = Path(config.path).expanduser()
        if not path.is_file():
            problem = "is a folder; give the JSONL/JSON file itself" if path.is_dir() else "not found"
            raise DataError(f"data source {config.label()!r}: {path} {problem}")
        rows = [item for _, item in iter_jsonl(path)]
        fingerprint = file_fingerprint(config)
        root = Path(config.image_root).expanduser() if config.image_root else path.parent
    else:
        rows = _load_hf(config)
        fingerprint = f"hf:{config.hf}:{config.hf_split}:{getattr(rows, '_fingerprint', '')}:{len(rows)}"
        root = Path(config.image_root or ".").expanduser()
    return LoadedSource(config=config, rows=rows, image_root=root, fingerprint=fingerprint)


def file_fingerprint(config: SourceConfig) -> str | None:
    """A file source's fingerprint (path, size, modification time) from its stat alone, as `load_source`
    gives it; None for a Hugging Face dataset (known only once loaded) or a file that is not there."""
    return None if config.path is None else stat_fingerprint(Path(config.path).expanduser())


def stat_fingerprint(path: Path) -> str | None:
    """A file's resolved path, size and modification time; None when it is not there."""
    try:
        stat = path.stat()
    except OSError:
        return None
    return f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}"


def _load_hf(config: SourceConfig) -> Any:
    import datasets

    folder = Path(config.hf).expanduser()
    if (folder / "state.json").is_file() or (folder / "dataset_dict.json").is_file():
        loaded = datasets.load_from_disk(str(folder))
        return loaded[config.hf_split] if isinstance(loaded, datasets.DatasetDict) else loaded
    return datasets.load_dataset(config.hf, split=config.hf_split)


def open_image(ref: ImageRef) -> Any:
    """A decoded RGB PIL image from an ImageRef; raises `ImageLoadError`."""
    if isinstance(ref, (str, Path, bytes)):
        return load_image(ref)
    return to_rgb(ref)


def mix_entries(valid: list[list[int]], ratios: list[float], seed: int) -> list[tuple[int, int]]:
    """(source, row) entries of one epoch: each source's valid rows scaled by its ratio, seeded."""
    rng = random.Random(seed)
    entries: list[tuple[int, int]] = []
    for source, (rows, ratio) in enumerate(zip(valid, ratios)):
        whole, fraction = divmod(ratio, 1.0)
        chosen = list(rows) * int(whole)
        extra = round(fraction * len(rows))
        chosen += sorted(rng.sample(list(rows), extra)) if extra else []
        entries.extend((source, row) for row in chosen)
    return entries
