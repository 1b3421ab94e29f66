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


def test_given_encodings_are_used_as_encoding_here_would_be(generator, batch):
    """A caller's own one-conversation encodings (the API server's admission makes them) give the
    same batch and the same answers as encoding here: the prompt is processed once, not twice."""
    from medvl.model.generate import encode_prompts, join_prompts

    conversations, images = batch
    encoded = [encode_prompts(generator.processor, [c], [i]) for c, i in zip(conversations, images)]
    joined, together = join_prompts(encoded, generator.tokenizer.pad_token_id), generator.encode(conversations, images)
    assert joined.keys() == together.keys() and all((joined[k] == together[k]).all() for k in together)
    here = generator.generate(conversations, images)
    assert generator.generate(conversations, images, inputs=encoded) == here
    some = [e if k % 2 else None for k, e in enumerate(encoded)]  # the others are encoded here
    assert generator.generate(conversations, images, inputs=some) == here
    assert "".join(generator.stream(conversations[4], images[4], inputs=encoded[4])) == here[4].text


def test_a_mixed_call_groups_by_tokens_and_renders_each_prompt_once(generator, batch, monkeypatch):
    """When some conversations come encoded and some not, all are sorted by their token counts (not
    tokens against characters), and each is rendered once: the encoded ones not at all."""
    from medvl.model import generate as module

    conversations, images = batch
    encoded = [module.encode_prompts(generator.processor, [c], [i]) for c, i in zip(conversations, images)]
    tokens = [int(e["input_ids"].shape[1]) for e in encoded]
    some = [e if k % 2 else None for k, e in enumerate(encoded)]
    rendered, batches = [], []
    real_render, real_batch = module.render_prompt, generator._generate_batch
    monkeypatch.setattr(module, "render_prompt", lambda p, m: rendered.append(m) or real_render(p, m))
    monkeypatch.setattr(generator, "_generate_batch",
                        lambda convs, *rest: batches.append([conversations.index(c) for c in convs])
                        or real_batch(convs, *rest))
    here = generator.generate(conversations, images)
    rendered.clear(), batches.clear()
    assert generator.generate(conversations, images, inputs=some) == here
    assert sorted(conversations.index(m) for m in rendered) == [k for k, e in enumerate(some) if e is None]
    order = [index for chunk in batches for index in chunk]
    assert [tokens[i] for i in order] == sorted(tokens)


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


def test_sampled_rows_depend_on_their_seed_only(generator, batch):
    """A sampled answer is the same alone or in a batch, and the global RNG is left alone."""
    import torch

    conversations, images = batch
    settings = GenerationSettings(max_new_tokens=8, do_sample=True, temperature=1.5, top_p=0.9)
    state = torch.random.get_rng_state()
    together = generator.generate(conversations[:3], images[:3], settings, seeds=[11, 12, 2**63 - 1])
    alone = [generator.generate([c], [i], settings, seeds=[s])[0]
             for c, i, s in zip(conversations[:3], images[:3], [11, 12, 2**63 - 1])]
    assert torch.equal(state, torch.random.get_rng_state())
    assert [r.text for r in together] == [r.text for r in alone]
    others = generator.generate(conversations[:3], images[:3], settings, seeds=[21, 22, 23])
    assert [r.text for r in others] != [r.text for r in together]


def _stops_after(calls: int):
    seen = []

    def check() -> bool:
        seen.append(1)
        return len(seen) > calls

    return check


def test_a_stopped_row_ends_and_its_neighbours_do_not_change(generator, batch):
    conversations, images = batch
    settings = GenerationSettings(max_new_tokens=12)
    plain = generator.generate(conversations[:3], images[:3], settings)
    mixed = generator.generate(conversations[:3], images[:3], settings, should_stop=[None, _stops_after(2), None])
    assert mixed[1].finish_reason == "cancelled" and mixed[1].new_tokens == 3
    assert [mixed[0].text, mixed[2].text] == [plain[0].text, plain[2].text]
    everyone = generator.generate(conversations[:3], images[:3], settings, should_stop=[lambda: True] * 3)
    assert [r.new_tokens for r in everyone] == [1, 1, 1]
    assert {r.finish_reason for r in everyone} == {"cancelled"}


def test_stream_counts_tokens_as_generate_does(generator, batch, tiny_model):
    import torch

    conversations, images = batch
    settings = GenerationSettings(max_new_tokens=10)
    stream = generator.stream(conversations[1], images[1], settings)
    text = "".join(stream)
    expected = generator.generate(conversations[1:2], images[1:2], settings)[0]
    assert (text, stream.result) == (expected.text, expected)
    model, processor = tiny_model
    end = processor.tokenizer.convert_tokens_to_ids("<|im_end|>")
    original = model.lm_head.bias
    model.lm_head.bias = torch.nn.Parameter(torch.full((model.lm_head.out_features,), -1e4))
    model.lm_head.bias.data[end] = 1e4
    try:  # an answer that is only the end-of-turn token counts it, streamed or not
        ended = Generator(model, processor).stream(_conversation("Hi", 1), [_image(1)])
        assert "".join(ended) == "" and (ended.result.new_tokens, ended.result.finish_reason) == (1, "stop")
    finally:
        model.lm_head.bias = original


def test_a_stream_stops_its_model_run(generator, batch):
    conversations, images = batch
    settings = GenerationSettings(max_new_tokens=40)
    stopped = generator.stream(conversations[0], images[0], settings, should_stop=_stops_after(3))
    "".join(stopped)
    assert (stopped.result.new_tokens, stopped.result.finish_reason) == (4, "cancelled")
    left = generator.stream(conversations[0], images[0], settings)
    next(iter(left))
    left.close()  # the consumer went away: the model thread ends at its next token
    assert left.closed.is_set() and left.result is None
