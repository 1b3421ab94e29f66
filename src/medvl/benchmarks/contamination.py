"""Contamination: which training records show a benchmark's images or repeat its questions.

The one matcher behind curation's decontamination (`medvl curate decontaminate`, the decontaminate
stage of `medvl curate run`) and `medvl data check --against`'s overlap warning, so both count the
same records. It works on plain inputs — `ReferenceItem`s (a benchmark item: its images, question and
answer; `benchmark_reference` loads them with the registry's loaders) and `TrainingSample`s (a
training record: its images and texts; `training_sample` makes one from a LLaVA record).

- Images: every distinct benchmark image is indexed (`medvl.benchmarks.near_images`); each training
  image is searched, and a confirmed near-duplicate (resized, re-encoded, brighter, cropped <= 10%,
  rotated <= 5 degrees, mirrored) contaminates the record with every item that uses that image.
- Text: the benchmark item's question and answer, lower-cased to word tokens (`tokenize`: runs of
  letters and digits, `h&e` one token), as word n-grams
  (`ngram`, default 8); a training record contaminates the item when it contains at least
  `min_text_overlap` of them. Items shorter than `ngram` words have no n-gram and are checked by
  image only (short generic questions — "is this an MRI?" — say nothing about contamination).

`Decontaminator.check(sample)` returns the `Contamination`s of one record; `summarise` counts them
per benchmark (items and images seen, % of the benchmark, records to remove).
"""

from __future__ import annotations

import hashlib
import re
from collections import Counter, OrderedDict, defaultdict
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable

import numpy as np

from medvl.benchmarks.near_images import NearImageConfig, describe
from medvl.benchmarks.registry import load_benchmark
from medvl.errors import UserError
from medvl.io.images import ImageLoadError, load_image
from medvl.records import IMAGE_TAG

__all__ = [
    "tokenize",
    "parse_against",
    "benchmark_reference",
    "training_sample",
    "ReferenceItem",
    "TrainingSample",
    "Contamination",
    "Decontaminator",
    "ngrams",
    "summarise",
]

_TOKEN = re.compile(r"[a-z0-9]+(?:&[a-z0-9]+)*")


def tokenize(text: str) -> list[str]:
    """Lower-cased word tokens: runs of letters and digits (`h&e` stays one token)."""
    return _TOKEN.findall(text.lower())


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


def training_sample(record_id: str, record: dict[str, Any], images: list[str]) -> TrainingSample:
    """A LLaVA record's sample: its turns' texts (image tags dropped) and `images`, the image files to
    check (the caller resolves the record's paths and leaves out those it cannot read)."""
    texts = [str(turn.get("value", "")).replace(IMAGE_TAG, " ") for turn in record.get("conversations", [])]
    return TrainingSample(record_id, images, texts)


def parse_against(specs: list[str]) -> list[tuple[str, str, str, dict]]:
    """`NAME[@SPLIT]=ROOT` options (split: test) → (name, root, split, options) for `benchmark_reference`."""
    parsed = []
    for spec in specs:
        name, sep, root = spec.partition("=")
        if not sep or not name or not root:
            raise UserError(f"--against {spec!r}: expected NAME[@SPLIT]=ROOT, e.g. vqa_rad=data/vqa-rad")
        name, _, split = name.partition("@")
        parsed.append((name, root, split or "test", {}))
    return parsed


def benchmark_reference(benchmarks: list[tuple[str, str, str, dict]]) -> list[ReferenceItem]:
    """(name, root, split, options) → the benchmark items as `ReferenceItem`s (the registry's loaders;
    an unknown name, a missing root or an empty split is a `BenchmarkError`)."""
    items = []
    for name, root, split, options in benchmarks:
        data = load_benchmark(name, root, split, **options)
        items += [
            ReferenceItem(name, split, str(item.id), tuple(item.images), item.question, item.answer)
            for item in data.items
        ]
    return items


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
            self.matcher = image_matcher or NearImageConfig().matcher()
            self._index_images()
        self.item_grams = [ngrams(f"{item.question} {item.answer}", ngram) for item in reference]
        self.items_by_gram: dict[int, list[int]] = defaultdict(list)
        for index, grams in enumerate(self.item_grams):
            for gram in grams:
                self.items_by_gram[gram].append(index)

    def _index_images(self) -> None:
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
    """Per benchmark split: items, items seen in training (by image / text), %, its distinct images and
    those matched, training records removed (those with any match in the split)."""
    totals: Counter[tuple[str, str]] = Counter((item.benchmark, item.split) for item in reference)
    images: dict[tuple[str, str], set[str]] = defaultdict(set)
    for item in reference:
        images[(item.benchmark, item.split)].update(item.images)
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
            "benchmark_images": len(images[key]),
            "benchmark_images_matched": len(matched_images[key]),
            "training_records_removed": removed_by[key],
        }
    return {"training_records": records, "removed": sum(1 for f in removed if f), "benchmarks": table}
