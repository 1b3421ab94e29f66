"""The ingest formats: how each `SourceConfig.format` reads its files into items and parses an item
into the normalised record (`medvl.curate.ingest_document`).

Formats (`SourceConfig.format`):
- `pmc_jsonl`: MedICaT / PMC figure JSONL (`pdf_hash`, `fig_uri`, `s2_caption`, `s2orc_references`,
  `radiology`, `predicted_type`, `oa_info`); image at `{image_root}/{pdf_hash}_{fig_uri}`.
- `llava_med`: `llava_med_instruct_fig_captions.json`, a dict domain → list of `{pair_id, fig_label,
  fig_caption, in_text_mention (strings or {"tokens"}), domain: {chest_xray, ct_scan, ...}}`
  (a plain list or JSONL of such samples works too); image at `{image_root}/{pair_id}.jpg`.
- `pairs`: PMC-OA / ROCO style JSONL, JSON array, CSV or TSV with an image and a caption column.
- `roco`: ROCO's `captions.txt` (`ROCO_xxxxx<TAB>caption`, no header); images at
  `{image_root or <folder>/images}/ROCO_xxxxx.jpg`; the licence and PMC figure file of each id come
  from `licences.txt` (or `cc_*.csv`, the same columns `ROCO_ID,PMC_ID,CC`) beside it; the domain is
  `radiology` or `non-radiology` from the folder name.
- `folder`: images with a caption sidecar of the same stem (`.txt`, or `.json` with `caption`,
  optional `mentions`, `licence`).

Adding a format is one parser (`source, label, order, raw item, file` → `make_document(...)`) and
one line in `PARSERS` (plus its name in `SourceConfig.format`, and a branch in `file_items` when its
files are not JSONL, JSON, CSV or TSV). A reader yields an `IngestError` in place of an item it
cannot read and a parser raises one for an item it cannot normalise: either becomes a reject, never
a crash. Each reader takes the items `index % world_size == rank` of its file, parsing only those.
"""

from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

from datatrove.data import Document

from medvl.curate.ingest_document import make_document, pmcid_in
from medvl.io.images import image_files
from medvl.io.jsonl import READ_TEXT, decode_line, not_utf8

if TYPE_CHECKING:
    from medvl.curate.config import SourceConfig

__all__ = ["PARSERS", "IngestError", "RawItem", "file_items"]

LLAVA_MED_DOMAINS = ("chest_xray", "ct_scan", "gross", "histology", "mri")


class IngestError(ValueError):
    """An input item that cannot be normalised; `reason` is a short code for the reject log."""

    def __init__(self, reason: str, detail: str = ""):
        self.reason, self.detail = reason, detail
        super().__init__(f"{reason}: {detail}")


@dataclass
class RawItem:
    """One raw input item before normalisation."""

    file: Path
    file_index: int
    item_index: int
    raw: Any  # dict, a CSV row dict, an image Path (folder), or an IngestError
    where: str = ""  # the item's place for a reject's detail: `file:line`, `file: row N`, an image's path


# ---------------------------------------------------------------- items per format


def file_items(source: SourceConfig, path: Path, rank: int, world_size: int) -> Iterator[RawItem]:
    if source.format == "roco":
        return _roco_items(path, rank, world_size)
    if source.format == "folder":
        files = image_files([path])
        return (RawItem(path, 0, i, p, str(p.relative_to(path))) for i, p in enumerate(files) if i % world_size == rank)
    if source.format == "llava_med" or path.suffix.lower() == ".json":
        return _json_document_items(path, rank, world_size)
    if path.suffix.lower() in (".csv", ".tsv"):
        return _csv_items(path, source, rank, world_size)
    return _jsonl_items(path, rank, world_size)


def _jsonl_items(path: Path, rank: int, world_size: int) -> Iterator[RawItem]:
    with path.open("r", **READ_TEXT) as handle:
        for index, line in enumerate(handle):
            if index % world_size != rank or not line.strip():
                continue
            line, where = line.rstrip("\r\n"), f"{path.name}:{index + 1}"
            raw, problem = decode_line(line)
            if problem is not None:
                raw = IngestError("malformed_line", f"{where}: {problem}")
            if not isinstance(raw, (dict, IngestError)):
                raw = IngestError("malformed_line", f"{where}: not a JSON object")
            yield RawItem(path, 0, index, raw, where)


def _roco_licences(folder: Path) -> dict[str, tuple[str, str] | IngestError]:
    """ROCO id -> (PMC figure file, licence) from `licences.txt` or `cc_*.csv` beside the captions; a row
    holding bytes that are not UTF-8 maps its id to the `malformed_licence` error its caption is rejected
    with (its licence is never read with a byte changed)."""
    files = [folder / "licences.txt", *sorted(folder.glob("cc_*.csv"))]
    found: dict[str, tuple[str, str] | IngestError] = {}
    for file in (f for f in files if f.is_file()):
        with file.open("r", newline="", **READ_TEXT) as handle:
            rows = csv.DictReader(handle)
            for row in rows:
                roco_id, pmc_id = (row.get("ROCO_ID") or "").strip(), (row.get("PMC_ID") or "").strip()
                if not (roco_id and pmc_id):
                    continue
                if problem := not_utf8(" ".join(value for value in row.values() if isinstance(value, str))):
                    found[roco_id] = IngestError(
                        "malformed_licence", f"{file.name}:{rows.line_num}: the licence row of {roco_id}: {problem}")
                else:
                    found[roco_id] = (pmc_id, (row.get("CC") or "").strip())
    return found


def _roco_items(path: Path, rank: int, world_size: int) -> Iterator[RawItem]:
    """ROCO `captions.txt`: `ROCO_xxxxx<TAB>caption` lines, no header (a folder: its captions.txt)."""
    if path.is_dir():
        path = path / "captions.txt"
    if not path.is_file():
        if rank == 0:
            yield RawItem(path, 0, 0, IngestError("missing_file", f"{path}: no ROCO captions.txt"))
        return
    licences = _roco_licences(path.parent)
    with path.open("r", **READ_TEXT) as handle:
        for index, line in enumerate(handle):
            if index % world_size != rank or not line.strip():
                continue
            roco_id, tab, caption = line.rstrip("\n").partition("\t")
            where = f"{path.name}:{index + 1}"
            if problem := not_utf8(line):
                raw: Any = IngestError("malformed_line", f"{where}: {problem}")
            elif not tab or not roco_id.strip():
                raw = IngestError("malformed_line", f"{where}: expected ROCO_ID<TAB>caption")
            else:
                entry = licences.get(roco_id.strip(), (None, None))
                if isinstance(entry, IngestError):
                    raw = entry
                else:
                    raw = {"id": roco_id.strip(), "caption": caption, "figure": entry[0], "licence": entry[1]}
            yield RawItem(path, 0, index, raw, where)


def _json_document_items(path: Path, rank: int, world_size: int) -> Iterator[RawItem]:
    """A whole-file JSON array, or LLaVA-Med's dict domain → list (flattened in key order)."""
    text = path.read_text(**READ_TEXT)
    if problem := not_utf8(text):
        if rank == 0:
            yield RawItem(path, 0, 0, IngestError("malformed_file", f"{path.name}: {problem}"))
        return
    if not text.lstrip().startswith(("[", "{")):
        yield from _jsonl_items(path, rank, world_size)
        return
    try:
        loaded = json.loads(text)
    except json.JSONDecodeError as exc:
        if text.lstrip().startswith("{") and "\n{" in text:  # JSONL with a .json name
            yield from _jsonl_items(path, rank, world_size)
            return
        if rank == 0:
            yield RawItem(path, 0, 0, IngestError("malformed_file", f"{path.name}: {exc}"))
        return
    del text
    samples: list[tuple[str | None, Any]]
    if isinstance(loaded, dict) and all(isinstance(v, list) for v in loaded.values()):
        samples = [(domain, s) for domain, group in loaded.items() for s in group]
    elif isinstance(loaded, list):
        samples = [(None, s) for s in loaded]
    else:
        samples = [(None, loaded)]
    for index, (domain, sample) in enumerate(samples):
        if index % world_size != rank:
            continue
        if not isinstance(sample, dict):
            yield RawItem(
                path,
                0,
                index,
                IngestError("malformed_line", f"{path.name}: item {index + 1} is not an object"),
            )
            continue
        if domain is not None:
            sample = {**sample, "_group": domain}
        yield RawItem(path, 0, index, sample, f"{path.name}: item {index + 1}")


def _csv_items(path: Path, source: SourceConfig, rank: int, world_size: int) -> Iterator[RawItem]:
    delimiter = source.csv_delimiter or ("\t" if path.suffix.lower() == ".tsv" else ",")
    with path.open("r", newline="", **READ_TEXT) as handle:
        for index, row in enumerate(csv.DictReader(handle, delimiter=delimiter)):
            if index % world_size == rank:
                where = f"{path.name}: row {index + 2}"
                if None in row:  # more fields than the header names
                    row = IngestError("malformed_line", f"{where} has extra fields")
                elif problem := not_utf8(" ".join(value or "" for value in row.values())):
                    row = IngestError("malformed_line", f"{where}: {problem}")
                yield RawItem(path, 0, index, row, where)


# ---------------------------------------------------------------- parsers


def _text(raw: dict, key: str, required: bool = True) -> str:
    value = raw.get(key)
    if value is None or (isinstance(value, str) and not value.strip()):
        if required:
            raise IngestError("missing_field", f"no {key!r}")
        return ""
    if not isinstance(value, str):
        raise IngestError("bad_field", f"{key!r} is {type(value).__name__}, not text")
    return " ".join(value.split())


def _mentions(value: Any) -> list[str]:
    """In-text mentions: a list of strings or of `{"tokens": ...}` dicts (LLaVA-Med); None → []."""
    if value is None:
        return []
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list):
        raise IngestError("bad_field", f"mentions are {type(value).__name__}, not a list")
    out = []
    for item in value:
        if isinstance(item, dict):
            item = item.get("tokens", item.get("text"))
        if isinstance(item, list):
            item = " ".join(map(str, item))
        if isinstance(item, str) and item.strip():
            out.append(" ".join(item.split()))
    return out


def _parse_pmc(source: SourceConfig, label: str, order: list[int], raw: dict, file: Path) -> Document:
    pdf_hash, fig_uri = _text(raw, "pdf_hash"), _text(raw, "fig_uri")
    caption = _text(raw, "s2_caption", required=False) or _text(raw, "s2orc_caption")
    root = Path(source.image_root) if source.image_root else file.parent / "figures"
    oa = (raw.get("oa_info") or {}).get("oa") or {}
    licence = oa.get("license") or source.licence
    record_id = f"{pdf_hash}_{fig_uri}"
    return make_document(
        record_id,
        [_image_in(root, record_id)],
        caption,
        order=order,
        source=label,
        mentions=_mentions(raw.get("s2orc_references")),
        licence=licence,
        domain="radiology" if raw.get("radiology") else None,
        fig_label=raw.get("fig_key"),
        figure_id=fig_uri,
        extra={k: raw[k] for k in ("predicted_type", "radiology") if k in raw}
        | {"doi": (raw.get("oa_info") or {}).get("doi")},
    )


def _parse_llava_med(source: SourceConfig, label: str, order: list[int], raw: dict, file: Path) -> Document:
    pair_id = _text(raw, "pair_id")
    flags = raw.get("domain") or {}
    domain = next((d for d in LLAVA_MED_DOMAINS if isinstance(flags, dict) and flags.get(d)), None)
    root = Path(source.image_root) if source.image_root else file.parent / "images"
    return make_document(
        pair_id,
        [_image_in(root, f"{pair_id}.jpg")],
        _text(raw, "fig_caption"),
        order=order,
        source=label,
        mentions=_mentions(raw.get("in_text_mention")),
        licence=source.licence,
        domain=domain or raw.get("_group"),
        fig_label=raw.get("fig_label"),
        pmcid=pmcid_in(str(raw.get("pmcid") or raw.get("pmc_id") or "")),
        figure_id=pair_id,
        extra={k: raw[k] for k in ("pmid", "fig_id") if k in raw},
    )


def _parse_pairs(source: SourceConfig, label: str, order: list[int], raw: dict, file: Path) -> Document:
    images = raw.get(source.image_key)
    if isinstance(images, str):
        images = [images]
    if (
        not images
        or not isinstance(images, list)
        or not all(isinstance(i, str) and i.strip() for i in images)
    ):
        raise IngestError("missing_field", f"no image path in {source.image_key!r}")
    root = Path(source.image_root) if source.image_root else file.parent
    paths = [_image_in(root, f"{i.strip()}{source.image_suffix}") for i in images]
    record_id = _text(raw, source.id_key) if source.id_key else Path(images[0]).stem
    extra = {k: v for k, v in raw.items() if k not in {source.image_key, source.caption_key} and _scalar(v)}
    return make_document(
        record_id,
        paths,
        _text(raw, source.caption_key),
        order=order,
        source=label,
        mentions=_mentions(raw.get(source.mentions_key)) if source.mentions_key else [],
        licence=raw.get("licence") or raw.get("license") or source.licence,
        pmcid=pmcid_in(" ".join([*(str(raw.get(k) or "") for k in ("pmcid", "PMC_ID", "pmc_id")), record_id])),
        figure_id=str(raw.get("url_name") or Path(images[0]).name),
        extra=extra,
    )


def _parse_roco(source: SourceConfig, label: str, order: list[int], raw: dict, file: Path) -> Document:
    root = Path(source.image_root) if source.image_root else file.parent / "images"
    domain = file.parent.name if file.parent.name in ("radiology", "non-radiology") else None
    figure = raw["figure"]
    pmcid, _, figure_id = figure.partition("_") if figure else (None, "", None)
    return make_document(
        raw["id"],
        [_image_in(root, f"{raw['id']}.jpg")],
        _text(raw, "caption"),
        order=order,
        source=label,
        licence=raw["licence"] or source.licence,
        domain=domain,
        pmcid=pmcid,
        figure_id=figure_id or None,
    )


def _parse_folder(source: SourceConfig, label: str, order: list[int], image: Path, file: Path) -> Document:
    root = file
    txt, meta = image.with_suffix(".txt"), image.with_suffix(".json")
    info: dict[str, Any] = {}
    if (text := _sidecar_text(meta)) is not None:
        try:
            info = json.loads(text)
        except json.JSONDecodeError as exc:
            raise IngestError("malformed_sidecar", f"{meta.name}: {exc}") from None
        if not isinstance(info, dict):
            raise IngestError("malformed_sidecar", f"{meta.name}: not a JSON object")
    elif (text := _sidecar_text(txt)) is not None:
        info = {"caption": text}
    else:
        raise IngestError("missing_caption", "no .txt or .json sidecar")
    return make_document(
        str(image.relative_to(root).with_suffix("")),
        [str(image)],
        _text(info, "caption"),
        order=order,
        source=label,
        mentions=_mentions(info.get("mentions")),
        licence=info.get("licence") or info.get("license") or source.licence,
        domain=info.get("domain"),
        pmcid=info.get("pmcid"),
        figure_id=info.get("figure_id"),
    )


def _sidecar_text(path: Path) -> str | None:
    """The text of a sidecar, None where there is none. One that is there but cannot be read (a folder, a
    link to nothing, a pipe, no permission) is `unreadable_sidecar`, never skipped for the other sidecar
    (a .json's licence would be lost) nor a crash; bytes that are not UTF-8 are `malformed_sidecar`."""
    if not os.path.lexists(path):
        return None
    where = f"{path.name} (a link to {os.readlink(path)})" if path.is_symlink() else path.name
    fix = "make it a readable file or remove it"
    if path.exists() and not path.is_file():  # a folder, or a pipe whose read would wait for a writer
        kind = "a folder" if path.is_dir() else "not a regular file"
        raise IngestError("unreadable_sidecar", f"{where}: {kind}; {fix}")
    try:
        text = path.read_text(**READ_TEXT)
    except OSError as exc:
        raise IngestError("unreadable_sidecar", f"{where}: {exc.strerror or exc}; {fix}") from None
    if problem := not_utf8(text):
        raise IngestError("malformed_sidecar", f"{path.name}: {problem}")
    return text


def _image_in(root: Path, name: str) -> str:
    """`root / name`, refused when `name` leads outside `root` (`..`, an absolute path): an input line
    would otherwise put any file of the machine into the release."""
    path = root / name
    if not Path(os.path.normpath(path)).is_relative_to(os.path.normpath(root)):
        raise IngestError("image_outside_root", f"image {name!r} is not under {root}; give image paths relative "
                          "to the source's image_root (or set image_root to a folder that holds them)")
    return str(path)


def _scalar(value: Any) -> bool:
    return isinstance(value, (str, int, float, bool)) or value is None


PARSERS = {
    "pmc_jsonl": _parse_pmc,
    "llava_med": _parse_llava_med,
    "pairs": _parse_pairs,
    "roco": _parse_roco,
    "folder": _parse_folder,
}
