"""Batched generation is deterministic and equals one-at-a-time generation; it stops at end of turn."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from medvl.model.generate import GenerationSettings, Generator


def _image(seed: int, size=(40, 56)) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8))


def _conversation(question: str, n_images: int) -> list[dict]:
    parts = [{"type": "image"}] * n_images + [{"type": "text", "text": question}]
    return [{"role": "user", "content": parts}]


@pytest.fixture(scope="module")
def generator(tiny_model):
    return Generator(*tiny_model, settings=GenerationSettings(max_new_tokens=10, batch_size=4))


@pytest.fixture(scope="module")
def batch():
    questions = ["Is there a fracture?", "What organ is this, and which side is abnormal?", "Modality?",
                 "Describe the lesion in detail please.", "Compare these two.", "No image here: hello?", "Size?"]
    counts = [1, 1, 1, 1, 2, 0, 1]
    conversations = [_conversation(q, n) for q, n in zip(questions, counts)]
    images = [[_image(10 * i + j, (30 + 9 * i, 50)) for j in range(n)] for i, n in enumerate(counts)]
    return conversations, images


def test_batched_equals_one_at_a_time(generator, batch):
    conversations, images = batch
    batched = generator.generate(conversations, images)
    single = [generator.generate([c], [i])[0] for c, i in zip(conversations, images)]
    assert [r.text for r in batched] == [r.text for r in single]
    assert [r.new_tokens for r in batched] == [r.new_tokens for r in single]
    assert [r.prompt_tokens for r in batched] == [r.prompt_tokens for r in single]
    assert all(r.text for r in batched)


def test_generation_is_deterministic(generator, batch):
    conversations, images = batch
    first = [r.text for r in generator.generate(conversations, images)]
    second = [r.text for r in generator.generate(conversations[::-1], images[::-1])][::-1]
    assert first == second


def test_stream_equals_generate(generator, batch):
    conversations, images = batch
    streamed = "".join(generator.stream(conversations[0], images[0]))
    assert streamed == generator.generate(conversations[:1], images[:1])[0].text


def test_stops_at_end_of_turn(tiny_model):
    """Force the end-of-turn token to be the argmax: generation stops there and reports 'stop'."""
    import torch

    model, processor = tiny_model
    end = processor.tokenizer.convert_tokens_to_ids("<|im_end|>")
    original = model.lm_head.bias
    model.lm_head.bias = torch.nn.Parameter(torch.full((model.lm_head.out_features,), -1e4))
    model.lm_head.bias.data[end] = 1e4
    try:
        result = Generator(model, processor).generate([_conversation("Hi", 1)], [[_image(1)]])[0]
    finally:
        model.lm_head.bias = original
    assert result.finish_reason == "stop" and result.text == "" and result.new_tokens == 1


def test_length_finish_and_image_count_check(generator):
    result = generator.generate([_conversation("Hi", 1)], [[_image(2)]], GenerationSettings(max_new_tokens=3))[0]
    assert result.finish_reason in ("length", "stop") and result.new_tokens <= 3
    with pytest.raises(ValueError, match="1 image parts but 2 images"):
        generator.generate([_conversation("Hi", 1)], [[_image(2), _image(3)]])


def test_sampling_is_seeded(generator, batch):
    conversations, images = batch
    settings = GenerationSettings(max_new_tokens=8, do_sample=True, temperature=1.5, seed=7)
    first = generator.generate(conversations[:2], images[:2], settings)
    second = generator.generate(conversations[:2], images[:2], settings)
    assert [r.text for r in first] == [r.text for r in second]
