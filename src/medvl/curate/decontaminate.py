"""Decontamination: which training records show a benchmark's images or repeat its questions.

Plain inputs only — `ReferenceItem`s (a benchmark item: its images, question and answer) and
`TrainingSample`s (a training record: its images and texts); binding them to benchmark loaders and
training files is the caller's job (`medvl curate decontaminate`, `medvl curate run`).

- Images: every distinct benchmark image is indexed (`medvl.curate.near_images`); each training
  image is searched, and a confirmed near-duplicate (resized, re-encoded, brighter, cropped <= 10%,
  rotated <= 5 degrees, mirrored) contaminates the record with every item that uses that image.
- Text: the benchmark item's question and answer, lower-cased to word tokens, as word n-grams
  (`ngram`, default 8); a training record contaminates the item when it contains at least
  `min_text_overlap` of them. Items shorter than `ngram` words have no n-gram and are checked by
  image only (short generic questions — "is this an MRI?" — say nothing about contamination).

`Decontaminator.check(sample)` returns the `Contamination`s of one record; `summarise` counts them
per benchmark (items seen, % of the benchmark, records to remove); `decontaminate_files` runs it
over LLaVA-format training files and writes the cleaned files, `removed.jsonl`, `seen_items.json`
(benchmark/split → item ids, a plain file an evaluation can exclude) and the report.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter, OrderedDict, defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from medvl.curate.vocab import tokenize
from medvl.io.files import atomic_write_json

__all__ = [
    "ReferenceItem",
    "TrainingSample",
    "Contamination",
    "Decontaminator",
    "ngrams",
    "summarise",
    "decontaminate_files",
]


@dataclass(frozen=True)
class ReferenceItem:
    benchmark: str
    split: str
    id: str
    images: tuple[str, ...]
    question: str
    answer: str


@dataclass
class TrainingSample:
    id: str
    images: list[str]
    texts: list[str]
    descriptors: list[np.ndarray | None] = field(default_factory=list)  # precomputed, per image (optional)


@dataclass
class Contamination:
    kind: str  # "image" or "text"
    benchmark: str
    split: str
    item_ids: list[str]
    benchmark_image: str | None = None
    training_image: str | None = None
    similarity: float | None = None
    inliers: int | None = None
    overlap: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}

    def distance(self) -> str:
        if self.kind == "text":
            return f"{self.overlap:.0%} of the item's n-grams"
        how = "descriptor" if self.inliers is None else f"{self.inliers} keypoint matches"
        return f"cosine {self.similarity:.4f}, {how}"


def ngrams(text: str, n: int) -> set[int]:
    """64-bit digests of the word n-grams of `text` (lower-cased word tokens)."""
    tokens = tokenize(text)
    return {
        int.from_bytes(hashlib.blake2b(" ".join(tokens[i : i + n]).encode(), digest_size=8).digest(), "big")
        for i in range(len(tokens) - n + 1)
    }


class Decontaminator:
    """Indexes the benchmark side once; `check` one training record at a time (see module doc)."""

    def __init__(
        self,
        reference: list[ReferenceItem],
        *,
        ngram: int = 8,
        min_text_overlap: float = 0.5,
        image_matcher: Any = None,
        check_images: bool = True,
    ):
        from medvl.curate.dedup import near_image_matcher
        from medvl.curate.config import NearImageConfig

        self.reference, self.ngram, self.min_text_overlap = reference, ngram, min_text_overlap
        self.items_by_image: dict[str, list[int]] = defaultdict(list)
        for index, item in enumerate(reference):
            for image in item.images:
                self.items_by_image[image].append(index)
        self.images = list(self.items_by_image)
        self.missing_images: list[str] = []
        self._seen_images: OrderedDict[str, Any] = OrderedDict()  # recent training images -> their match
        self.matcher = None
        if check_images and self.images:
            self.matcher = image_matcher or near_image_matcher(NearImageConfig())
            self._index_images()
        self.item_grams = [ngrams(f"{item.question} {item.answer}", ngram) for item in reference]
        self.items_by_gram: dict[int, list[int]] = defaultdict(list)
        for index, grams in enumerate(self.item_grams):
            for gram in grams:
                self.items_by_gram[gram].append(index)

    def _index_images(self) -> None:
        from medvl.curate.near_images import describe
        from medvl.io.images import ImageLoadError, load_image

        descriptors, positions = [], []
        for position, image in enumerate(self.images):
            try:
                descriptors.append(describe(load_image(image)))
                positions.append(position)
            except (OSError, ImageLoadError):
                self.missing_images.append(image)
        if descriptors:
            self.matcher.add_many(np.stack(descriptors), positions, [self.images[p] for p in positions])

    def check(self, sample: TrainingSample) -> list[Contamination]:
        found = self._image_matches(sample) if self.matcher is not None else []
        return found + self._text_matches(sample)

    def _image_matches(self, sample: TrainingSample) -> list[Contamination]:
        from medvl.curate.near_images import describe
        from medvl.io.images import load_image

        found = []
        for position, path in enumerate(sample.images):
            if path not in self._seen_images:
                descriptor = sample.descriptors[position] if position < len(sample.descriptors) else None
                if descriptor is None:
                    descriptor = describe(load_image(path))
                self._seen_images[path] = self.matcher.find(descriptor, path)
                if len(self._seen_images) > 100_000:
                    self._seen_images.popitem(last=False)
            match = self._seen_images[path]
            if match is None:
                continue
            image = self.images[match.payload]
            found.extend(
                Contamination("image", benchmark, split, ids, image, path, round(match.similarity, 4), match.inliers)
                for (benchmark, split), ids in self._group(self.items_by_image[image]).items()
            )
        return found

    def _text_matches(self, sample: TrainingSample) -> list[Contamination]:
        grams = set().union(*(ngrams(text, self.ngram) for text in sample.texts)) if sample.texts else set()
        hits: Counter[int] = Counter(i for gram in grams for i in self.items_by_gram.get(gram, ()))
        found = []
        for index, count in hits.items():
            overlap = count / len(self.item_grams[index])
            if overlap >= self.min_text_overlap:
                item = self.reference[index]
                found.append(Contamination("text", item.benchmark, item.split, [item.id], overlap=round(overlap, 4)))
        return found

    def _group(self, indices: Iterable[int]) -> dict[tuple[str, str], list[str]]:
        groups: dict[tuple[str, str], list[str]] = defaultdict(list)
        for index in indices:
            item = self.reference[index]
            groups[(item.benchmark, item.split)].append(item.id)
        return groups


def summarise(
    reference: list[ReferenceItem], removed: list[list[Contamination]], records: int
) -> dict[str, Any]:
    """Per benchmark split: items, items seen in training (by image / text), %, records removed."""
    totals: Counter[tuple[str, str]] = Counter((item.benchmark, item.split) for item in reference)
    seen: dict[tuple[str, str], dict[str, set[str]]] = defaultdict(lambda: {"image": set(), "text": set()})
    removed_by: Counter[tuple[str, str]] = Counter()
    matched_images: dict[tuple[str, str], set[str]] = defaultdict(set)
    for found in removed:
        for key in {(c.benchmark, c.split) for c in found}:
            removed_by[key] += 1
        for c in found:
            seen[(c.benchmark, c.split)][c.kind].update(c.item_ids)
            if c.benchmark_image:
                matched_images[(c.benchmark, c.split)].add(c.benchmark_image)
    table = {}
    for key, total in sorted(totals.items()):
        by_image, by_text = seen[key]["image"], seen[key]["text"]
        either = by_image | by_text
        table[f"{key[0]}/{key[1]}"] = {
            "items": total,
            "items_seen": len(either),
            "items_seen_pct": round(100 * len(either) / total, 2) if total else 0.0,
            "items_seen_by_image": len(by_image),
            "items_seen_by_text": len(by_text),
            "benchmark_images_matched": len(matched_images[key]),
            "training_records_removed": removed_by[key],
        }
    return {"training_records": records, "removed": sum(1 for f in removed if f), "benchmarks": table}



def decontaminate_files(
    paths: list[Path],
    image_root: Path | None,
    checker: Decontaminator,
    out_dir: Path,
) -> dict[str, Any]:
    """Check LLaVA-format training files; write `<stem>.jsonl` (kept), `removed.jsonl`, `seen_items.json`
    and the report under `out_dir`; return the summary.

    A removed line is the training record plus `decontamination`: its matches (benchmark, split,
    item ids, kind, similarity / keypoint matches / n-gram overlap). Unreadable lines go to
    removed.jsonl too (`{"line", "error"}`), never silently away; a record whose image file is
    missing is checked by text only and counted.
    """
    from medvl.curate.decontaminate_report import write_decontamination_report
    from medvl.io.jsonl import JsonlLineError, iter_jsonl
    from medvl.records import IMAGE_TAG, RecordError, record_images

    out_dir.mkdir(parents=True, exist_ok=True)
    matches: list[tuple[str, list[Contamination]]] = []
    seen, unreadable, images_missing = 0, 0, 0
    with (out_dir / "removed.jsonl").open("w", encoding="utf-8") as removed:
        for path in paths:
            root = image_root or path.parent
            with (out_dir / f"{path.stem}.jsonl").open("w", encoding="utf-8") as kept:
                for number, record in iter_jsonl(path):
                    try:
                        if isinstance(record, JsonlLineError):
                            raise record
                        images = [str(root / image) for image in record_images(record)]
                    except (JsonlLineError, RecordError) as exc:
                        unreadable += 1
                        removed.write(json.dumps({"file": str(path), "line": number, "error": str(exc)}) + "\n")
                        continue
                    seen += 1
                    present = [image for image in images if Path(image).is_file()]
                    images_missing += len(images) - len(present)
                    texts = [str(t.get("value", "")).replace(IMAGE_TAG, " ") for t in record.get("conversations", [])]
                    found = checker.check(TrainingSample(str(record.get("id", number)), present, texts))
                    if found:
                        matches.append((str(record.get("id", number)), found))
                        removed.write(json.dumps({**record, "decontamination": [c.to_dict() for c in found]}) + "\n")
                    else:
                        kept.write(json.dumps(record) + "\n")
    summary = summarise(checker.reference, [found for _, found in matches], seen)
    summary.update(unreadable_lines=unreadable, training_images_missing=images_missing,
                   benchmark_images_unreadable=checker.missing_images[:50])
    seen_items: dict[str, set[str]] = defaultdict(set)
    for _, found in matches:
        for c in found:
            seen_items[f"{c.benchmark}/{c.split}"].update(c.item_ids)
    atomic_write_json(out_dir / "seen_items.json", {k: sorted(v) for k, v in sorted(seen_items.items())})
    write_decontamination_report(out_dir, summary, matches, checker.reference)
    return summary
