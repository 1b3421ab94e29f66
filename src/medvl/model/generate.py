"""Batched, deterministic generation with a native LLaVA model.

`Generator.generate` takes chat conversations (messages with `{"type": "image"}` parts) and their
images, renders them with the processor's chat template, pads on the left, and decodes greedily by
default, stopping at EOS or the template's end of turn. Prompts are grouped by length into
batches and results come back in input order. `Generator.stream` yields text deltas of one
conversation (for chat and the API server's streaming mode).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch
from pydantic import Field

from medvl.config import Config
from medvl.model.templates import STOP_STRINGS, guess_format
from medvl.records import message_image_count

__all__ = ["GenerationSettings", "GenerationResult", "Generator"]


class GenerationSettings(Config):
    """Decoding settings; the defaults are greedy and therefore reproducible."""

    max_new_tokens: int = Field(128, ge=1)
    do_sample: bool = False
    temperature: float = Field(1.0, gt=0)
    top_p: float = Field(1.0, gt=0, le=1)
    repetition_penalty: float = Field(1.0, gt=0)
    seed: int = 0
    batch_size: int = Field(8, ge=1)


@dataclass
class GenerationResult:
    text: str
    prompt_tokens: int
    new_tokens: int
    finish_reason: str  # "stop" (EOS / end of turn) or "length"


class Generator:
    """Wraps (model, processor) for batched chat generation."""

    def __init__(self, model: Any, processor: Any, settings: GenerationSettings | None = None):
        self.model = model.eval()
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.tokenizer.padding_side = "left"
        self.settings = settings or GenerationSettings()
        fmt = guess_format(processor.chat_template)
        self.stop_strings = [s for s in STOP_STRINGS.get(fmt or "", []) if self._is_multi_token(s)]
        eos = model.generation_config.eos_token_id
        self.eos_ids = set(eos if isinstance(eos, list) else [eos]) - {None}

    @classmethod
    def from_pretrained(cls, path: str | Path, dtype: str = "auto", device: str | None = None,
                        settings: GenerationSettings | None = None) -> "Generator":
        from medvl.model.checkpoint import load_model

        return cls(*load_model(path, dtype=dtype, device=device), settings=settings)

    @property
    def device(self) -> torch.device:
        return self.model.device

    def render(self, messages: list[dict]) -> str:
        return self.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)

    def encode(self, conversations: Sequence[list[dict]], images: Sequence[Sequence[Any]]) -> Any:
        """Processor inputs for a batch: rendered prompts, left padding, images flattened in order."""
        if len(conversations) != len(images):
            raise ValueError(f"{len(conversations)} conversations but {len(images)} image lists")
        for index, (messages, imgs) in enumerate(zip(conversations, images)):
            expected = message_image_count(messages)
            if expected != len(imgs):
                raise ValueError(f"conversation {index} has {expected} image parts but {len(imgs)} images")
        flat = [image for imgs in images for image in imgs]
        prompts = [self.render(messages) for messages in conversations]
        return self.processor(
            text=prompts, images=flat or None, padding=True, return_tensors="pt", add_special_tokens=False
        ).to(self.device)

    def generate(self, conversations: Sequence[list[dict]], images: Sequence[Sequence[Any]] | None = None,
                 settings: GenerationSettings | None = None) -> list[GenerationResult]:
        """Answer every conversation; results are in input order."""
        settings = settings or self.settings
        images = images if images is not None else [[] for _ in conversations]
        lengths = [len(self.render(m)) + 1000 * len(i) for m, i in zip(conversations, images)]
        order = sorted(range(len(conversations)), key=lambda i: lengths[i])
        results: list[GenerationResult | None] = [None] * len(conversations)
        for start in range(0, len(order), settings.batch_size):
            chunk = order[start:start + settings.batch_size]
            outputs = self._generate_batch([conversations[i] for i in chunk], [images[i] for i in chunk], settings)
            for index, result in zip(chunk, outputs):
                results[index] = result
        return results  # type: ignore[return-value]

    def stream(self, messages: list[dict], images: Sequence[Any] = (), settings: GenerationSettings | None = None
               ) -> Iterator[str]:
        """Yield text deltas of one answer as they are generated."""
        from transformers import TextIteratorStreamer

        settings = settings or self.settings
        inputs = self.encode([messages], [list(images)])
        streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True)
        kwargs = {**inputs, **self._generate_kwargs(settings), "streamer": streamer}
        errors: list[BaseException] = []

        def run() -> None:
            try:
                with torch.inference_mode():
                    self.model.generate(**kwargs)
            except BaseException as exc:  # surfaced in the caller's thread below
                errors.append(exc)
                streamer.end()

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        emitted = ""
        for delta in streamer:
            if not emitted:  # answers are returned stripped; so is the stream's start
                delta = delta.lstrip()
                if not delta:
                    continue
            emitted += delta
            cut = self._cut_at_stop(emitted)
            if cut is not None:
                if len(cut) > len(emitted) - len(delta):
                    yield cut[len(emitted) - len(delta):]
                break
            yield delta
        thread.join()
        if errors:
            raise errors[0]

    def _generate_batch(self, conversations: list[list[dict]], images: list[Sequence[Any]],
                        settings: GenerationSettings) -> list[GenerationResult]:
        inputs = self.encode(conversations, images)
        prompt_length = inputs["input_ids"].shape[1]
        with torch.inference_mode():
            output = self.model.generate(**inputs, **self._generate_kwargs(settings))
        new = output[:, prompt_length:]
        results = []
        for row, attention in zip(new, inputs["attention_mask"]):
            tokens = row.tolist()
            stop_at = next((i for i, t in enumerate(tokens) if t in self.eos_ids), None)
            kept = tokens if stop_at is None else tokens[:stop_at]
            text = self.tokenizer.decode(kept, skip_special_tokens=True)
            cut = self._cut_at_stop(text)
            finished = stop_at is not None or cut is not None
            results.append(GenerationResult(
                text=(cut if cut is not None else text).strip(),
                prompt_tokens=int(attention.sum()),
                new_tokens=len(kept) + (1 if stop_at is not None else 0),
                finish_reason="stop" if finished else "length",
            ))
        return results

    def _generate_kwargs(self, settings: GenerationSettings) -> dict[str, Any]:
        kwargs: dict[str, Any] = {
            "max_new_tokens": settings.max_new_tokens,
            "do_sample": settings.do_sample,
            "repetition_penalty": settings.repetition_penalty,
            "pad_token_id": self.tokenizer.pad_token_id,
        }
        if settings.do_sample:
            torch.manual_seed(settings.seed)
            kwargs.update(temperature=settings.temperature, top_p=settings.top_p)
        else:
            kwargs.update(temperature=None, top_p=None, top_k=None)
        if self.stop_strings:
            kwargs.update(stop_strings=self.stop_strings, tokenizer=self.tokenizer)
        return kwargs

    def _cut_at_stop(self, text: str) -> str | None:
        positions = [text.find(s) for s in self.stop_strings if s in text]
        return text[: min(positions)] if positions else None

    def _is_multi_token(self, text: str) -> bool:
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"]) > 1
