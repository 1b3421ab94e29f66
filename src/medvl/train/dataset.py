"""The training dataset (validated, mixed records → tensors) and the batch collator.

`TrainDataset[i]` encodes entry i of the mix with the same `ChatEncoder` validation used, opens its
images with `medvl.io.images`, shrinks any of more than `data.max_pixels` (aspect kept) and runs the
processor's image processor. Validation has already
dropped every bad record; should an image still fail to open mid-epoch (a file changed after the
check), the sample is recorded in the run's `rejects.runtime.jsonl` and the next entry is used in
its place, so a long run does not die on one file.

`epoch_sampler` shuffles each epoch and pads it to a whole number of global batches
(batch x accumulation x processes) with a few more shuffled samples, so every optimizer step sees
a full global batch and N processes step on exactly the samples one process with N x the
accumulation does. (Unpadded, one process would take a short last step while accelerate pads the
multi-process one from the epoch's start: the two diverge whenever the epoch does not divide.)

`Collator` pads right (input ids with the pad token, labels with -100), concatenates the images of
the batch in order (LLaVA fills image tokens from `pixel_values` in sequence) and carries counts
(`num_tokens`, `num_images`, `num_supervised`) that the trainer pops for its throughput metrics.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch.utils.data import Dataset, RandomSampler

from medvl.io.images import ImageLoadError
from medvl.io.jsonl import RejectLog
from medvl.records import to_messages
from medvl.train.encode import IGNORE_INDEX, ChatEncoder
from medvl.train.sources import DataError, LoadedSource, open_image

__all__ = ["TrainDataset", "Collator", "STAT_KEYS", "epoch_sampler", "shrink_to"]

log = logging.getLogger(__name__)
STAT_KEYS = ("num_tokens", "num_images", "num_supervised")
_MAX_SUBSTITUTIONS = 16


class TrainDataset(Dataset):
    def __init__(self, sources: list[LoadedSource], entries: list[tuple[int, int]], encoder: ChatEncoder,
                 image_processor: Any, runtime_rejects: str | Path | None = None, max_pixels: int | None = None):
        if not entries:
            raise DataError("no usable training records (see the data check report)")
        self.sources, self.entries, self.encoder = sources, entries, encoder
        self.image_processor, self.max_pixels = image_processor, max_pixels
        self.runtime_rejects = Path(runtime_rejects) if runtime_rejects else None

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        for attempt in range(_MAX_SUBSTITUTIONS):
            position = (index + attempt) % len(self.entries)
            try:
                return self.example(position)
            except ImageLoadError as exc:
                self._record_failure(position, exc)
        raise DataError(f"{_MAX_SUBSTITUTIONS} consecutive samples from {index} failed to load their images "
                        "(see rejects.runtime.jsonl)")

    def example(self, position: int) -> dict[str, torch.Tensor]:
        source_index, row_index = self.entries[position]
        source = self.sources[source_index]
        row = source.row(row_index)
        refs = source.image_refs(row)
        encoded = self.encoder.encode(to_messages(row, embedded=True))
        item = {"input_ids": torch.tensor(encoded.input_ids), "labels": torch.tensor(encoded.labels)}
        if refs:
            images = [shrink_to(open_image(ref), self.max_pixels) for ref in refs]
            item["pixel_values"] = self.image_processor(images, return_tensors="pt")["pixel_values"]
        return item

    def _record_failure(self, position: int, exc: ImageLoadError) -> None:
        source_index, row_index = self.entries[position]
        source = self.sources[source_index]
        row_id = source.row_id(row_index, source.row(row_index))
        log.warning("sample %s: %s; using the next sample instead", row_id, exc)
        if self.runtime_rejects is not None:
            with RejectLog(self.runtime_rejects) as rejects:
                rejects.reject(row_id, "train", f"image_{exc.reason}", f"{exc.path}: {exc.detail}",
                               source=source.name, row=row_index + 1)


def shrink_to(image: Image.Image, max_pixels: int | None) -> Image.Image:
    """`image` scaled down, aspect kept, to at most `max_pixels` pixels (`data.max_pixels`; None: as it is)."""
    if max_pixels is None or image.width * image.height <= max_pixels:
        return image
    scale = (max_pixels / (image.width * image.height)) ** 0.5
    size = (max(1, int(image.width * scale)), max(1, int(image.height * scale)))
    return image.resize(size, Image.Resampling.BICUBIC)


def epoch_sampler(dataset: Dataset, global_batch: int) -> RandomSampler:
    """Each epoch: every sample once in shuffled order, then the start of a fresh shuffle up to a
    multiple of `global_batch`. A `RandomSampler`, so accelerate reseeds it per epoch alike on every
    process."""
    padded = -(-len(dataset) // global_batch) * global_batch
    return RandomSampler(dataset, num_samples=padded)


class Collator:
    """Right-pads a list of examples into a batch for `LlavaForConditionalGeneration`."""

    def __init__(self, pad_token_id: int, pad_to_multiple_of: int | None = None):
        self.pad_token_id = pad_token_id
        self.pad_to_multiple_of = pad_to_multiple_of

    def __call__(self, examples: list[dict[str, torch.Tensor]]) -> dict[str, Any]:
        longest = max(len(e["input_ids"]) for e in examples)
        if self.pad_to_multiple_of:
            longest = -(-longest // self.pad_to_multiple_of) * self.pad_to_multiple_of
        input_ids = torch.full((len(examples), longest), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(examples), longest), IGNORE_INDEX, dtype=torch.long)
        attention = torch.zeros((len(examples), longest), dtype=torch.long)
        for row, example in enumerate(examples):
            n = len(example["input_ids"])
            input_ids[row, :n] = example["input_ids"]
            labels[row, :n] = example["labels"]
            attention[row, :n] = 1
        batch: dict[str, Any] = {"input_ids": input_ids, "attention_mask": attention, "labels": labels}
        pixels = [e["pixel_values"] for e in examples if "pixel_values" in e]
        if pixels:
            batch["pixel_values"] = torch.cat(pixels)
        batch["num_tokens"] = int(attention.sum())
        batch["num_images"] = sum(len(p) for p in pixels)
        batch["num_supervised"] = int((labels[:, 1:] != IGNORE_INDEX).sum())
        return batch
