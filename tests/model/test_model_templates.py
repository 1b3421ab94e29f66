"""Chat templates render the field's formats exactly, with several images per turn and several turns."""

from __future__ import annotations

import pytest
from transformers import AutoTokenizer

from legacy_testkit import write_sentencepiece_tokenizer

from medvl.model.build import load_tokenizer
from medvl.model.spec import TextSpec
from medvl.model.templates import (
    TEMPLATE_NAMES,
    guess_format,
    image_aware,
    resolve_chat_template,
    shipped_template,
    single_bos,
    text_start,
)

CONVERSATION = [
    {"role": "user", "content": [{"type": "image"}, {"type": "image"}, {"type": "text", "text": "Compare."}]},
    {"role": "assistant", "content": [{"type": "text", "text": "Left is larger."}]},
    {"role": "user", "content": "Why?"},
]
EXPECTED = {
    "chatml": "<|im_start|>user\n<image>\n<image>\nCompare.<|im_end|>\n<|im_start|>assistant\nLeft is larger.<|im_end|>\n"
              "<|im_start|>user\nWhy?<|im_end|>\n<|im_start|>assistant\n",
    "llama3": "<s><|start_header_id|>user<|end_header_id|>\n\n<image>\n<image>\nCompare.<|eot_id|>"
              "<|start_header_id|>assistant<|end_header_id|>\n\nLeft is larger.<|eot_id|>"
              "<|start_header_id|>user<|end_header_id|>\n\nWhy?<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n",
    "vicuna": "<s>A chat between a curious user and an artificial intelligence assistant. The assistant gives "
              "helpful, detailed, and polite answers to the user's questions. USER: <image>\n<image>\nCompare. "
              "ASSISTANT: Left is larger.</s>USER: Why? ASSISTANT:",
    "mistral_instruct": "<s>[INST] <image>\n<image>\nCompare. [/INST] Left is larger. </s>[INST] Why? [/INST]",
    "huatuo": "<|user|>\n<image>\n<image>\nCompare.\n<|assistant|>\nLeft is larger. \n<|user|>\nWhy?\n<|assistant|>\n",
}


def _render(template: str, messages, **kwargs) -> str:
    from transformers.utils.chat_template_utils import render_jinja_template

    rendered, _ = render_jinja_template(conversations=[messages], chat_template=template, add_generation_prompt=True,
                                        bos_token="<s>", eos_token="</s>", **kwargs)
    return rendered[0]


@pytest.mark.parametrize("name", TEMPLATE_NAMES)
def test_shipped_templates_render_exactly(name):
    assert _render(shipped_template(name), CONVERSATION) == EXPECTED[name]
    assert guess_format(shipped_template(name)) == name


def test_string_and_part_contents_render_the_same():
    as_strings = [{"role": "user", "content": "<image>\nCompare."}]
    as_parts = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Compare."}]}]
    template = shipped_template("chatml")
    assert _render(template, as_strings) == _render(template, as_parts)


def test_system_messages():
    system = [{"role": "system", "content": "Be brief."}, *CONVERSATION[:1]]
    assert _render(shipped_template("vicuna"), system).startswith("<s>Be brief. USER: <image>")
    assert _render(shipped_template("mistral_instruct"), system).startswith("<s>[INST] <<SYS>>\nBe brief.\n<</SYS>>")
    assert _render(shipped_template("chatml"), system).startswith("<|im_start|>system\nBe brief.<|im_end|>\n")


def test_auto_uses_the_tokenizers_own_template_image_aware(smol_tokenizer):
    tokenizer = AutoTokenizer.from_pretrained(smol_tokenizer)
    template = resolve_chat_template("auto", tokenizer)
    rendered = _render(template, CONVERSATION[:1])
    assert "You are a helpful AI assistant named SmolLM" in rendered  # SmolLM2's own default system prompt
    assert "<|im_start|>user\n<image>\n<image>\nCompare.<|im_end|>" in rendered
    assert image_aware(template) == template  # the prelude is added once


def test_auto_without_a_tokenizer_template_is_an_error(smol_tokenizer):
    tokenizer = AutoTokenizer.from_pretrained(smol_tokenizer)
    tokenizer.chat_template = None
    with pytest.raises(ValueError, match="no chat template"):
        resolve_chat_template("auto", tokenizer)
    with pytest.raises(ValueError, match="unknown chat template"):
        shipped_template("alpaca")


def test_image_placeholder_can_be_wrapped():
    template = shipped_template("vicuna", image_placeholder="<im_start><image><im_end>")
    assert "USER: <im_start><image><im_end>\n<im_start><image><im_end>\nCompare." in _render(template, CONVERSATION)


@pytest.mark.parametrize("name", TEMPLATE_NAMES)
def test_assistant_mask_covers_exactly_the_answer(smol_tokenizer, name):
    """The {% generation %} marks give transformers' assistant-token mask: answer (+ end marker) only."""
    tokenizer = AutoTokenizer.from_pretrained(smol_tokenizer)
    messages = [{"role": "user", "content": "Is it normal?"}, {"role": "assistant", "content": "No, abnormal."}]
    out = tokenizer.apply_chat_template(messages, chat_template=shipped_template(name), tokenize=True,
                                        return_dict=True, return_assistant_tokens_mask=True)
    ids = [i for i, m in zip(out["input_ids"], out["assistant_masks"]) if m]
    text = tokenizer.decode(ids)
    assert text.strip().startswith("No, abnormal.") and "Is it normal" not in text  # a leading space may share a token


def test_huatuo_training_target_ends_with_eos():
    """Past answers end " \n" as HuatuoGPT-Vision's cli.py renders history; a final answer ends with EOS."""
    messages = [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}]
    assert _render(shipped_template("huatuo"), messages).startswith("<|user|>\nQ\n<|assistant|>\nA</s>\n")


@pytest.fixture(scope="module")
def sentencepiece_tokenizers(tmp_path_factory):
    """LlamaTokenizer from a real tokenizer.model with legacy False (LLaVA-1.5) and True (Mistral)."""
    folders = {}
    for legacy in (False, True):
        folders[legacy] = tmp_path_factory.mktemp(f"sp-legacy-{legacy}")
        write_sentencepiece_tokenizer(folders[legacy], legacy=legacy)
    return lambda legacy: load_tokenizer(TextSpec(path=str(folders[legacy])))


def test_text_start_restores_the_word_boundary_after_special_tokens(sentencepiece_tokenizers, smol_tokenizer):
    strict = sentencepiece_tokenizers(False)
    assert text_start(strict) == " "
    assert strict.encode("<image> x", add_special_tokens=False)[1:] == strict.encode("x", add_special_tokens=False)
    assert text_start(sentencepiece_tokenizers(True)) == ""  # legacy=True already starts a word after a special
    assert text_start(AutoTokenizer.from_pretrained(smol_tokenizer)) == ""  # byte-level BPE has no such marker
    vicuna = resolve_chat_template("vicuna", strict)
    rendered = _render(vicuna, CONVERSATION[:1])
    assert rendered.startswith("<s> A chat") and "USER: <image> \n<image> \nCompare." in rendered
    wrapped = resolve_chat_template("vicuna", strict, image_wrap=("<im_start>", "<im_end>"))
    assert "USER: <im_start><image><im_end>\n" in _render(wrapped, CONVERSATION[:1])  # a special token follows


@pytest.mark.parametrize("name", ["vicuna", "mistral_instruct", "llama3"])
def test_single_bos_on_a_plain_tokenizer_call(sentencepiece_tokenizers, name):
    tokenizer = sentencepiece_tokenizers(False)
    template = resolve_chat_template(name, tokenizer)
    rendered = _render(template, CONVERSATION[:1])
    assert tokenizer(rendered)["input_ids"][:2].count(tokenizer.bos_token_id) == 2  # BOS in the text + added
    single_bos(tokenizer, template)
    assert tokenizer(rendered)["input_ids"].count(tokenizer.bos_token_id) == 1
    assert tokenizer.encode("x")[0] != tokenizer.bos_token_id
