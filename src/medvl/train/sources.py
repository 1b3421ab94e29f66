"""Training data sources: LLaVA JSON/JSONL files, parquet files and Hugging Face datasets, their images, the mix.

A source yields rows in the LLaVA conversation format (`medvl.records`). Image entries may be paths
(relative ones resolve against the source's `image_root`, else the data file's folder) or, in a HF
dataset or parquet file, `{"bytes", "path"}` dicts (its image columns are read undecoded: medvl's
loader decodes them, so a corrupt one is a reject) or decoded images
(`records.record_images(row, embedded=True)`). Rows that are not JSON objects stay in the row list
as `JsonlLineError`s so validation can count them like any other reject. What cannot be a source at
all is one `DataError` line: a file that is one JSON object wrapping the records, a dataset that does
not load, a split it lacks.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medvl.errors import UserError, first_line
from medvl.io.images import load_image, to_rgb
from medvl.io.jsonl import READ_TEXT, JsonlLineError, iter_jsonl
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
    """Read a source's rows (JSON/JSONL files are read whole; parquet files and HF datasets stay
    memory-mapped, their images undecoded until `open_image`)."""
    if config.path is not None:
        path = Path(config.path).expanduser()
        if not path.is_file():
            problem = "is a folder; give the JSONL/JSON file itself" if path.is_dir() else "not found"
            raise DataError(f"data source {config.label()!r}: {path} {problem}")
        if path.suffix.lower() == ".parquet":
            rows = _load_hf(config, str(path))
        else:
            rows = [item for _, item in iter_jsonl(path)]
            _refuse_wrapped_records(config, path, rows)
        fingerprint = file_fingerprint(config)
        root = Path(config.image_root).expanduser() if config.image_root else path.parent
    else:
        rows = _load_hf(config, config.hf)
        fingerprint = f"hf:{config.hf}:{config.hf_split}:{getattr(rows, '_fingerprint', '')}:{len(rows)}"
        root = Path(config.image_root or ".").expanduser()
    return LoadedSource(config=config, rows=rows, image_root=root, fingerprint=fingerprint)


def _refuse_wrapped_records(config: SourceConfig, path: Path, rows: list[Any]) -> None:
    """A DataError for a file that is one JSON object holding the records (`{"data": [...]}`), rather
    than an array or lines of them: read line by line, it was dozens of `bad_json` rejects (one per
    line of a pretty-printed file) or one record without conversations."""
    first = rows[0] if rows else None
    suspect = isinstance(first, JsonlLineError) or (len(rows) == 1 and "conversations" not in first)
    if not suspect:
        return
    try:
        whole = json.loads(path.read_text(**READ_TEXT))
    except (json.JSONDecodeError, UnicodeError):
        return
    if not isinstance(whole, dict) or "conversations" in whole:
        return
    lists = [key for key, value in whole.items() if isinstance(value, list)]
    inside = f"; its {lists[0]!r} holds a list of {len(whole[lists[0]])}: save that list as the file" if lists else ""
    raise DataError(f"data source {config.label()!r}: {path} is one JSON object (keys: {', '.join(map(str, whole))}), "
                    f"not records: give a JSON array of records or JSONL, one record per line{inside}")


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


def _load_hf(config: SourceConfig, target: str) -> Any:
    """The split's rows: a `save_to_disk` folder, a parquet file, or a `load_dataset` path. Image columns
    are left undecoded (`{"bytes", "path"}`), so `open_image` decodes them as it decodes files and one
    corrupt image is one reject (decoded by `datasets`, it stopped the check with a traceback)."""
    import datasets

    where = Path(target).expanduser()
    try:
        if (where / "state.json").is_file() or (where / "dataset_dict.json").is_file():
            loaded = datasets.load_from_disk(str(where))
            if isinstance(loaded, datasets.DatasetDict):
                if config.hf_split not in loaded:
                    raise DataError(f"data source {config.label()!r}: {where} has no split {config.hf_split!r} "
                                    f"(it has {', '.join(loaded)}): set hf_split")
                loaded = loaded[config.hf_split]
        elif where.is_file() and where.suffix.lower() == ".parquet":
            loaded = datasets.load_dataset("parquet", data_files=str(where), split="train")
        else:
            loaded = datasets.load_dataset(target, split=config.hf_split)
    except DataError:
        raise
    except Exception as exc:  # datasets raises many types (FileNotFoundError, ValueError, its own errors)
        raise DataError(f"data source {config.label()!r}: cannot load {target} as a Hugging Face dataset "
                        f"(split {config.hf_split!r}): {first_line(exc)}") from exc
    for column, feature in loaded.features.items():
        stored = _undecoded(feature)
        if stored != feature:
            loaded = loaded.cast_column(column, stored)
    return loaded


def _undecoded(feature: Any) -> Any:
    """`feature` with every `datasets.Image` in it set to `decode=False`."""
    import datasets

    if isinstance(feature, datasets.Image):
        return datasets.Image(decode=False)
    if isinstance(feature, (datasets.List, datasets.LargeList)):
        return type(feature)(_undecoded(feature.feature), **({"length": feature.length}
                                                             if isinstance(feature, datasets.List) else {}))
    if isinstance(feature, dict):
        return {key: _undecoded(value) for key, value in feature.items()}
    if isinstance(feature, list):
        return [_undecoded(value) for value in feature]
    return feature


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
