"""Batched generation vs a one-at-a-time loop on the same tiny model, in one run.

The reference projects evaluate at batch 1 (a Python loop over `model.generate`). This prints
samples/s of that loop and of `Generator.generate` at batch sizes 1, 8 and 16 over the same
prompts and images, and the ratio of each to the loop. The prompts go in chunks of 16, each chunk
through every setting, in reverse order on every other chunk (`interleave.mirrored`).

    python bench/generate.py [--quick]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from interleave import mirrored  # bench/interleave.py
from PIL import Image

from medvl.model.build import build_model
from medvl.model.generate import GenerationSettings, Generator
from medvl.io.offline import smollm2_tokenizer
from medvl.model.spec import tiny_spec


LOOP = "loop (reference, batch 1)"
BATCH_SIZES = (1, 8, 16)


def _workload(n: int) -> tuple[list, list]:
    rng = np.random.default_rng(0)
    conversations, images = [], []
    for i in range(n):
        question = f"Question {i}: is there an abnormality in region {i % 7}?"
        conversations.append([{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}])
        images.append([Image.fromarray(rng.integers(0, 255, (48, 48, 3), dtype=np.uint8))])
    return conversations, images


def _loop_baseline(generator: Generator, conversations, images, max_new_tokens: int) -> None:
    """What the reference eval scripts do: one model.generate call per sample."""
    for messages, imgs in zip(conversations, images):
        inputs = generator.encode([messages], [imgs])
        with torch.inference_mode():
            generator.model.generate(**inputs, max_new_tokens=max_new_tokens, min_new_tokens=max_new_tokens,
                                     do_sample=False)


def run(quick: bool = False) -> list[dict]:
    torch.manual_seed(0)
    n, max_new_tokens = (32, 16) if quick else (96, 32)
    spec = tiny_spec(str(smollm2_tokenizer()), text__hidden_size=256, text__num_layers=4, text__intermediate_size=512)
    generator = Generator(*build_model(spec))
    conversations, images = _workload(n)
    generator.generate(conversations[:2], images[:2], GenerationSettings(max_new_tokens=2))  # warm-up
    generator.model.generation_config.min_new_tokens = max_new_tokens  # equal work per sample
    batch_sizes = {LOOP: 1, **{f"medvl batch {b}": b for b in BATCH_SIZES}}

    def seconds(name: str, part: slice) -> float:
        start = time.perf_counter()
        if name == LOOP:
            _loop_baseline(generator, conversations[part], images[part], max_new_tokens)
        else:
            settings = GenerationSettings(max_new_tokens=max_new_tokens, batch_size=batch_sizes[name])
            generator.generate(conversations[part], images[part], settings)
        return time.perf_counter() - start

    chunk = max(BATCH_SIZES)  # prompts per part: every setting on chunk 1, then in reverse on chunk 2, ...
    parts = [slice(start, start + chunk) for start in range(0, n, chunk)]
    totals = {name: sum(times) for name, times in mirrored(list(batch_sizes), parts, seconds).items()}
    generator.model.generation_config.min_new_tokens = None
    return [{"bench": "generate", "setting": name, "samples_per_s": n / total, "ratio": totals[LOOP] / total}
            for name, total in totals.items()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer samples and tokens")
    rows = run(quick=parser.parse_args().quick)
    print(f"{'setting':<28}{'samples/s':>12}{'vs loop':>10}")
    for row in rows:
        print(f"{row['setting']:<28}{row['samples_per_s']:>12.2f}{row['ratio']:>9.2f}x")


if __name__ == "__main__":
    main()
