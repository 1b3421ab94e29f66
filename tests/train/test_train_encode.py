"""Label masks: exactly the assistant text is supervised, for every shipped template, both span methods."""

from __future__ import annotations

import re

import pytest

from medvl.train.encode import IGNORE_INDEX, ChatEncoder, EncodeError

TEMPLATES = ("chatml", "llama3", "vicuna", "mistral_instruct", "huatuo")

# The supervised text of each assistant turn, decoded. SmolLM2's tokenizer has no special tokens for
# other families' markers, so `<|eot_id|>` is ordinary BPE: its last piece `><` straddles the span end
# and the next header's `<` (a straddling token is supervised: the model must emit the whole marker).
# Vicuna / mistral put a space before the answer; the space-prefixed token is supervised, as the model
# generates it after "ASSISTANT:" / "[/INST]". HuatuoGPT-Vision's cli.py ends a past answer with " " (no EOS);
# only the final answer ends with EOS.
EXPECTED = {
    "chatml": ["red<|im_end|>", "yes, red<|im_end|>"],
    "llama3": ["red<|eot_id|><", "yes, red<|eot_id|>"],
    "vicuna": [" red<|im_end|>", " yes, red<|im_end|>"],
    "mistral_instruct": [" red <|im_end|>", " yes, red <|im_end|>"],
    "huatuo": ["red ", "yes, red<|im_end|>"],
}


def user(*parts: str) -> dict:
    content = [{"type": "image"} if p == "<image>" else {"type": "text", "text": p} for p in parts]
    return {"role": "user", "content": content}


def assistant(text: str) -> dict:
    return {"role": "assistant", "content": [{"type": "text", "text": text}]}


CONVERSATION = [user("<image>", "What color?"), assistant("red"), user("Sure?"), assistant("yes, red")]


@pytest.fixture(scope="module")
def processors(smol_tokenizer):
    from medvl.model.build import build_processor, load_tokenizer
    from medvl.model.spec import tiny_spec

    result = {}
    for name in TEMPLATES:
        spec = tiny_spec(str(smol_tokenizer), chat_template=name)
        result[name] = build_processor(spec, load_tokenizer(spec.text))
    return result


def supervised_runs(encoded, tokenizer) -> list[str]:
    runs, current = [], []
    for token, label in zip(encoded.input_ids, encoded.labels):
        if label != IGNORE_INDEX:
            assert label == token
            current.append(token)
        elif current:
            runs.append(tokenizer.decode(current))
            current = []
    if current:
        runs.append(tokenizer.decode(current))
    return runs


def without_generation_tags(template: str) -> str:
    return re.sub(r"\{%-?\s*(end)?generation\s*-?%\}", "", template)


@pytest.mark.parametrize("name", TEMPLATES)
def test_exact_assistant_masks_for_each_template(processors, name):
    processor = processors[name]
    encoder = ChatEncoder(processor, max_length=512)
    assert encoder.uses_generation_tags
    encoded = encoder.encode(CONVERSATION)
    assert supervised_runs(encoded, processor.tokenizer) == EXPECTED[name]
    image_positions = [i for i, t in enumerate(encoded.input_ids) if t == processor.image_token_id]
    assert len(image_positions) == encoder.tokens_per_image == 16
    assert all(encoded.labels[i] == IGNORE_INDEX for i in image_positions)


@pytest.mark.parametrize("name", TEMPLATES)
def test_prefix_rendering_fallback_gives_the_same_labels(processors, name):
    processor = processors[name]
    tagged = ChatEncoder(processor, max_length=512).encode(CONVERSATION)
    fallback_encoder = ChatEncoder(processor, max_length=512, chat_template=without_generation_tags(processor.chat_template))
    assert not fallback_encoder.uses_generation_tags
    if name == "huatuo":  # its final answer ends differently (EOS) from past ones: refused, its tags label it
        with pytest.raises(EncodeError, match="template_not_prefix_stable"):
            fallback_encoder.encode(CONVERSATION)
        return
    fallback = fallback_encoder.encode(CONVERSATION)
    assert fallback.input_ids == tagged.input_ids
    assert fallback.labels == tagged.labels


def test_fallback_rejects_a_template_that_is_not_prefix_stable(processors):
    processor = processors["chatml"]
    # A template that marks the last message differently breaks prefix rendering: refused, not mislabelled.
    template = (
        "{% for m in messages %}{{ m['role'] }}{% if loop.last %}!{% endif %}: "
        "{{ m['content'] if m['content'] is string else m['content'][-1]['text'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}assistant: {% endif %}"
    )
    with pytest.raises(EncodeError) as info:
        ChatEncoder(processor, 512, chat_template=template).encode([user("hi"), assistant("yo")])
    assert info.value.reason == "template_not_prefix_stable"


def test_last_turn_only_supervises_the_final_answer(processors):
    processor = processors["chatml"]
    encoded = ChatEncoder(processor, 512, last_turn_only=True).encode(CONVERSATION)
    assert supervised_runs(encoded, processor.tokenizer) == ["yes, red<|im_end|>"]


def test_multi_image_ids_match_the_processor(processors, rgb_image):
    processor = processors["chatml"]
    messages = [user("<image>", "<image>", "Compare."), assistant("same")]
    encoder = ChatEncoder(processor, 512)
    encoded = encoder.encode(messages)
    expected = processor(text=[encoder.render(messages)], images=[rgb_image, rgb_image], add_special_tokens=False)
    assert encoded.input_ids == expected["input_ids"][0]
    assert encoded.num_images == 2
    assert encoded.input_ids.count(processor.image_token_id) == 2 * encoder.tokens_per_image
    assert supervised_runs(encoded, processor.tokenizer) == ["same<|im_end|>"]


def test_truncation_keeps_images_and_cuts_text(processors):
    processor = processors["chatml"]
    full = ChatEncoder(processor, 512).encode(CONVERSATION)
    first_answer_end = max(i for i, label in enumerate(full.labels[:40]) if label != IGNORE_INDEX) + 1
    cut = ChatEncoder(processor, first_answer_end + 3).encode(CONVERSATION)
    assert cut.input_ids == full.input_ids[: first_answer_end + 3]
    assert cut.full_length == len(full.input_ids)
    assert supervised_runs(cut, processor.tokenizer) == ["red<|im_end|>"]


def test_truncation_never_cuts_an_image_span(processors):
    processor = processors["chatml"]
    with pytest.raises(EncodeError) as info:
        ChatEncoder(processor, max_length=16).encode(CONVERSATION)  # the image span ends at 20
    assert info.value.reason == "image_cut_by_truncation"


def test_truncation_that_leaves_no_answer_is_rejected(processors):
    processor = processors["chatml"]
    with pytest.raises(EncodeError) as info:
        ChatEncoder(processor, max_length=24).encode(CONVERSATION)
    assert info.value.reason == "no_supervised_tokens"


def test_overlong_reject_policy(processors):
    processor = processors["chatml"]
    with pytest.raises(EncodeError) as info:
        ChatEncoder(processor, max_length=30, overlong="reject").encode(CONVERSATION)
    assert info.value.reason == "too_long"
