"""Batched, deterministic generation with a native LLaVA model.

`Generator.generate` takes chat conversations (messages with `{"type": "image"}` parts) and their
images, renders them with the processor's chat template, pads on the left, and decodes greedily by
default, stopping at EOS or the template's end of turn. Prompts are grouped by length into
batches and results come back in input order. `Generator.stream` yields text deltas of one
conversation (for chat and the API server's streaming mode) and counts its tokens as `generate`
does.

Two per-conversation hooks serve callers that share the model (the API server):
- `seeds`: sampling (`do_sample`) draws each row from its own seeded random generator, so a
  row's answer depends on its seed alone, not on its batch neighbours, and no global RNG is touched.
- `should_stop`: a callable per row, checked after every token; when it answers True that row
  ends (finish reason "cancelled") and the call returns as soon as every row has ended. Closing
  a `Stream` early stops its model run the same way.

A caller that has encoded a conversation already (the API server measures each prompt with
`encode_prompts` before queueing it) passes that encoding as `inputs`, so the prompt is rendered and
tokenised once: `join_prompts` pads such one-conversation encodings into a batch as the processor
would have. A call in which some conversations come encoded and some not encodes the rest one by one
(once each), so all are grouped by token counts. `load_generator` opens a saved model folder for every
caller (a folder that is not one is one line: `medvl.model.checkpoint.load_model`); `context_length`
reads a model config's positions.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import torch
from pydantic import Field
from transformers import (
    BatchFeature,
    LogitsProcessor,
    LogitsProcessorList,
    StoppingCriteria,
    StoppingCriteriaList,
    TemperatureLogitsWarper,
    TextIteratorStreamer,
    TopPLogitsWarper,
)

from medvl.config import Config
from medvl.model.templates import STOP_STRINGS, guess_format
from medvl.records import message_image_count

__all__ = ["GenerationSettings", "GenerationResult", "Generator", "Stream", "StopCheck",
           "context_length", "encode_prompts", "join_prompts", "load_generator"]

StopCheck = Callable[[], bool]


class GenerationSettings(Config):
    """Decoding settings; the defaults are greedy and therefore reproducible."""

    max_new_tokens: int = Field(128, ge=1)
    do_sample: bool = False
    temperature: float = Field(1.0, gt=0)
    top_p: float = Field(1.0, gt=0, le=1)
    repetition_penalty: float = Field(1.0, gt=0)
    seed: int = Field(0, ge=0, le=2**63 - 1, description="sampling seed of every row unless `seeds` are given")
    batch_size: int = Field(8, ge=1)


@dataclass
class GenerationResult:
    text: str
    prompt_tokens: int
    new_tokens: int
    finish_reason: str  # "stop" (EOS / end of turn), "length", or "cancelled" (its should_stop said so)


def load_generator(path: str | Path, dtype: str = "auto", device: str | None = None,
                   settings: GenerationSettings | None = None) -> "Generator":
    """A `Generator` over the saved model folder `path` (one that is not: `NotAModelFolder`,
    `ModelLoadError`)."""
    return Generator.from_pretrained(path, dtype=dtype, device=device, settings=settings)


def context_length(config: Any) -> int:
    """Positions the language model of a (LLaVA or plain) model config can attend to (prompt + answer)."""
    text_config = getattr(config, "text_config", config)
    return int(getattr(text_config, "max_position_embeddings", 0) or 1 << 30)


def render_prompt(processor: Any, messages: list[dict]) -> str:
    return processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)


def encode_prompts(processor: Any, conversations: Sequence[list[dict]], images: Sequence[Sequence[Any]]) -> Any:
    """Processor inputs for a batch: rendered prompts, padded, images flattened in order."""
    if len(conversations) != len(images):
        raise ValueError(f"{len(conversations)} conversations but {len(images)} image lists")
    for index, (messages, imgs) in enumerate(zip(conversations, images)):
        expected = message_image_count(messages)
        if expected != len(imgs):
            raise ValueError(f"conversation {index} has {expected} image parts but {len(imgs)} images")
    flat = [image for imgs in images for image in imgs]
    prompts = [render_prompt(processor, messages) for messages in conversations]
    return processor(text=prompts, images=flat or None, padding=True, return_tensors="pt",
                     add_special_tokens=False)


_TOKEN_KEYS = {"input_ids", "attention_mask", "token_type_ids", "mm_token_type_ids"}  # one entry per position


def join_prompts(encoded: Sequence[Any], pad_token_id: int) -> BatchFeature:
    """One batch from one-conversation encodings (`encode_prompts` of a single conversation each), as
    `encode_prompts` of them all would give: token rows left-padded (`pad_token_id`, attention 0),
    image tensors concatenated in order."""
    longest = max(int(e["input_ids"].shape[1]) for e in encoded)
    joined: dict[str, torch.Tensor] = {}
    for key in dict.fromkeys(key for e in encoded for key in e.keys()):
        rows = [e[key] for e in encoded if key in e]
        if key in _TOKEN_KEYS:
            value = pad_token_id if key == "input_ids" else 0
            rows = [torch.nn.functional.pad(r, (longest - r.shape[1], 0), value=value) for r in rows]
        joined[key] = torch.cat(rows)
    return BatchFeature(joined)


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
        return render_prompt(self.processor, messages)

    def encode(self, conversations: Sequence[list[dict]], images: Sequence[Sequence[Any]]) -> Any:
        """Processor inputs for a batch on the model's device (see `encode_prompts`)."""
        return encode_prompts(self.processor, conversations, images).to(self.device)

    def generate(self, conversations: Sequence[list[dict]], images: Sequence[Sequence[Any]] | None = None,
                 settings: GenerationSettings | None = None, *, seeds: Sequence[int] | None = None,
                 should_stop: Sequence[StopCheck | None] | None = None,
                 inputs: Sequence[Any | None] | None = None) -> list[GenerationResult]:
        """Answer every conversation; results are in input order (see the module notes for the hooks
        and `inputs`: a conversation's own encoding, or None to encode it here)."""
        settings = settings or self.settings
        images = images if images is not None else [[] for _ in conversations]
        seeds = list(seeds) if seeds is not None else [settings.seed] * len(conversations)
        checks = list(should_stop) if should_stop is not None else [None] * len(conversations)
        given = list(inputs) if inputs is not None else [None] * len(conversations)
        if not len(seeds) == len(checks) == len(given) == len(conversations):
            raise ValueError(f"{len(conversations)} conversations but {len(seeds)} seeds, {len(checks)} stop "
                             f"checks, {len(given)} inputs")
        if any(g is not None for g in given):  # sorted by tokens: the rest are encoded now, once, for their batch
            given = [encode_prompts(self.processor, [m], [i]) if g is None else g
                     for m, i, g in zip(conversations, images, given)]
            lengths = [int(g["input_ids"].shape[1]) for g in given]
        else:  # none encoded yet: an estimate in one unit (characters, an image as 1000)
            lengths = [len(self.render(m)) + 1000 * len(i) for m, i in zip(conversations, images)]
        order = sorted(range(len(conversations)), key=lambda i: lengths[i])
        results: list[GenerationResult | None] = [None] * len(conversations)
        for start in range(0, len(order), settings.batch_size):
            chunk = order[start:start + settings.batch_size]
            outputs = self._generate_batch([conversations[i] for i in chunk], [images[i] for i in chunk], settings,
                                           [seeds[i] for i in chunk], [checks[i] for i in chunk],
                                           [given[i] for i in chunk])
            for index, result in zip(chunk, outputs):
                results[index] = result
        return results  # type: ignore[return-value]

    def stream(self, messages: list[dict], images: Sequence[Any] = (), settings: GenerationSettings | None = None,
               *, seed: int | None = None, should_stop: StopCheck | None = None, inputs: Any = None) -> "Stream":
        """The text deltas of one answer as they are generated (a `Stream`: iterate it once); `inputs`:
        the conversation's own encoding, when the caller has one."""
        return Stream(self, messages, list(images), settings or self.settings, seed, should_stop, inputs)

    def _inputs(self, conversations: list[list[dict]], images: list[Sequence[Any]], given: list[Any | None]) -> Any:
        """The batch's processor inputs on the model's device: encoded here when no row has its encoding,
        else joined from `given` (`generate` gives either none or all)."""
        if all(g is None for g in given):
            return self.encode(conversations, images)
        return join_prompts(given, self.tokenizer.pad_token_id).to(self.device)

    def _generate_batch(self, conversations: list[list[dict]], images: list[Sequence[Any]],
                        settings: GenerationSettings, seeds: list[int], checks: list[StopCheck | None],
                        given: list[Any | None]) -> list[GenerationResult]:
        inputs = self._inputs(conversations, images, given)
        prompt_length = inputs["input_ids"].shape[1]
        stops = _RowsStopped(checks)
        with torch.inference_mode():
            output = self.model.generate(**inputs, **self._generate_kwargs(settings, seeds, stops))
        results = []
        for row, (tokens, attention) in enumerate(zip(output[:, prompt_length:], inputs["attention_mask"])):
            cancelled_at = stops.generated_when_stopped(row, prompt_length)
            text, counted, finish = self._answer(tokens.tolist()[:cancelled_at], cancelled_at is not None)
            results.append(GenerationResult(text, int(attention.sum()), counted, finish))
        return results

    def _answer(self, tokens: list[int], cancelled: bool) -> tuple[str, int, str]:
        """(answer text, tokens to count — an EOS included —, finish reason) of one row's new tokens."""
        stop_at = next((i for i, t in enumerate(tokens) if t in self.eos_ids), None)
        kept = tokens if stop_at is None else tokens[:stop_at]
        text = self.tokenizer.decode(kept, skip_special_tokens=True)
        cut = self._cut_at_stop(text)
        ended = stop_at is not None or cut is not None
        finish = "stop" if ended else "cancelled" if cancelled else "length"
        return (cut if cut is not None else text).strip(), len(tokens) if stop_at is None else stop_at + 1, finish

    def _generate_kwargs(self, settings: GenerationSettings, seeds: Sequence[int], stops: "_RowsStopped"
                         ) -> dict[str, Any]:
        kwargs: dict[str, Any] = {
            "max_new_tokens": settings.max_new_tokens,
            "do_sample": False,  # sampling is done per row by _SeededSampler, whose pick greedy decoding keeps
            "temperature": None, "top_p": None, "top_k": None,
            "repetition_penalty": settings.repetition_penalty,
            "pad_token_id": self.tokenizer.pad_token_id,
            "stopping_criteria": StoppingCriteriaList([stops]),
        }
        if settings.do_sample:
            kwargs["logits_processor"] = LogitsProcessorList(
                [_SeededSampler(seeds, settings.temperature, settings.top_p)])
        if self.stop_strings:
            kwargs.update(stop_strings=self.stop_strings, tokenizer=self.tokenizer)
        return kwargs

    def _cut_at_stop(self, text: str) -> str | None:
        positions = [text.find(s) for s in self.stop_strings if s in text]
        return text[: min(positions)] if positions else None

    def _is_multi_token(self, text: str) -> bool:
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"]) > 1


class Stream:
    """Text deltas of one answer; iterate once. `result` is its `GenerationResult` once the loop ends.

    The model runs in a helper thread. Leaving the loop early (break, an exception, `close()`) or
    the `should_stop` check answering True ends the model run at its next token.
    """

    def __init__(self, generator: Generator, messages: list[dict], images: list[Any], settings: GenerationSettings,
                 seed: int | None, should_stop: StopCheck | None, inputs: Any = None):
        self.generator, self.settings = generator, settings
        self.inputs = generator._inputs([messages], [images], [inputs])
        self.seed = settings.seed if seed is None else seed
        self.closed = threading.Event()
        self.stops = _RowsStopped([(lambda: self.closed.is_set() or should_stop()) if should_stop
                                   else self.closed.is_set])
        self.result: GenerationResult | None = None
        self._deltas = self._run()

    def __iter__(self) -> Iterator[str]:
        return self._deltas

    def close(self) -> None:
        self._deltas.close()

    def _run(self) -> Iterator[str]:
        generator = self.generator
        streamer = _CountingStreamer(generator.tokenizer, skip_prompt=True, skip_special_tokens=True)
        kwargs = {**self.inputs, **generator._generate_kwargs(self.settings, [self.seed], self.stops),
                  "streamer": streamer}
        errors: list[BaseException] = []

        def run() -> None:
            try:
                with torch.inference_mode():
                    generator.model.generate(**kwargs)
            except BaseException as exc:  # surfaced in the caller's thread below
                errors.append(exc)
                streamer.end()

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        emitted, cut = "", None
        try:
            for delta in streamer:
                if not emitted:  # answers are returned stripped; so is the stream's start
                    delta = delta.lstrip()
                    if not delta:
                        continue
                emitted += delta
                cut = generator._cut_at_stop(emitted)
                if cut is not None:
                    if len(cut) > len(emitted) - len(delta):
                        yield cut[len(emitted) - len(delta):]
                    break
                yield delta
        finally:
            self.closed.set()
            thread.join()
        if errors:
            raise errors[0]
        _, counted, finish = generator._answer(streamer.generated, self.stops.ended_at[0] is not None)
        prompt_tokens = int(self.inputs["attention_mask"].sum())
        self.result = GenerationResult((cut if cut is not None else emitted).strip(), prompt_tokens, counted, finish)


class _CountingStreamer(TextIteratorStreamer):
    """A TextIteratorStreamer that also keeps the generated token ids (prompt excluded)."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.generated: list[int] = []

    def put(self, value: torch.Tensor) -> None:
        if not (self.skip_prompt and self.next_tokens_are_prompt):
            self.generated.extend(int(token) for token in value.reshape(-1))
        super().put(value)


class _RowsStopped(StoppingCriteria):
    """Ends each row whose check answers True, and remembers the length it had then; rows without a
    check run on. A check is not asked again once it has answered True."""

    def __init__(self, checks: Sequence[StopCheck | None]):
        self.checks = list(checks)
        self.ended_at: list[int | None] = [None] * len(self.checks)

    def __call__(self, input_ids: torch.LongTensor, scores: Any, **kwargs: Any) -> torch.BoolTensor:
        for row, check in enumerate(self.checks):
            if self.ended_at[row] is None and check is not None and check():
                self.ended_at[row] = int(input_ids.shape[1])
        return torch.tensor([at is not None for at in self.ended_at], dtype=torch.bool, device=input_ids.device)

    def generated_when_stopped(self, row: int, prompt_length: int) -> int | None:
        """How many new tokens the row had when its check stopped it (None: never stopped)."""
        at = self.ended_at[row]
        return None if at is None else at - prompt_length


class _SeededSampler(LogitsProcessor):
    """Samples every row from its own seeded generator (after transformers' temperature and top-p
    warpers) and leaves only the drawn token finite, so greedy decoding takes it."""

    def __init__(self, seeds: Sequence[int], temperature: float, top_p: float):
        self.seeds = list(seeds)
        self.warpers = LogitsProcessorList([TemperatureLogitsWarper(temperature), TopPLogitsWarper(top_p)])
        self.generators: list[torch.Generator] = []

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if not self.generators:
            self.generators = [torch.Generator(scores.device).manual_seed(seed) for seed in self.seeds]
        probabilities = torch.softmax(self.warpers(input_ids, scores.float()), dim=-1)
        picked = torch.full_like(scores, float("-inf"))
        for row, generator in enumerate(self.generators):
            token = torch.multinomial(probabilities[row], 1, generator=generator)
            picked[row, token] = 0.0
        return picked
