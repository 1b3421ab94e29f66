"""The production path: a saved medvl checkpoint names an architecture vLLM's registry accepts, and a
folder vLLM would not load is told why (a file it could not read among the reasons, not a crash)."""

from __future__ import annotations

import json
import shutil

import pytest

from medvl.model.build import build_model
from medvl.model.checkpoint import save_model
from medvl.model.families import vllm_text_architectures
from medvl.model.spec import tiny_spec
from medvl.model.vllm_compat import VLLM_VISION_MODEL_TYPES, vllm_problems


def test_saved_checkpoint_is_loadable_by_vllm(tiny_model_dir):
    config = json.loads((tiny_model_dir / "config.json").read_text())
    assert config["architectures"] == ["LlavaForConditionalGeneration"] and config["model_type"] == "llava"
    assert config["text_config"]["architectures"][0] in vllm_text_architectures()
    assert config["vision_config"]["model_type"] in VLLM_VISION_MODEL_TYPES
    assert vllm_problems(tiny_model_dir) == []


@pytest.mark.parametrize("family,vision", [("qwen2", "siglip"), ("mistral", "clip")])
def test_other_families_are_loadable_by_vllm(smol_tokenizer, tmp_path, family, vision):
    model, processor = build_model(tiny_spec(str(smol_tokenizer), family=family, vision__family=vision))
    assert vllm_problems(save_model(model, processor, tmp_path / family)) == []


def test_problems_are_named(tiny_model_dir, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(tiny_model_dir, broken)
    config = json.loads((broken / "config.json").read_text())
    config["architectures"] = ["LlavaLlamaForCausalLM"]  # the legacy LLaVA layout vLLM cannot load
    config["model_type"] = "llava_llama"
    config["text_config"].pop("architectures", None)
    config["vision_config"]["model_type"] = "vit"
    (broken / "config.json").write_text(json.dumps(config))
    (broken / "chat_template.jinja").unlink()
    problems = "\n".join(vllm_problems(broken))
    for expected in ["LlavaLlamaForCausalLM", "llava_llama", "text_config.architectures", "'vit'", "chat template"]:
        assert expected in problems
    nowhere = tmp_path / "nowhere"
    assert vllm_problems(nowhere) == [f"{nowhere} is not a saved model folder (no config.json)"]


def test_files_it_cannot_read_are_problems_not_crashes(broken_model_dirs, tiny_model_dir, tmp_path):
    """Before: a config.json cut short was a JSONDecodeError, a list an AttributeError, a text_config that
    is no object an AttributeError, a tokenizer_config.json or processor_config.json cut short a
    JSONDecodeError."""
    for folder, said in broken_model_dirs:
        [problem] = vllm_problems(folder)
        assert problem.startswith(said), problem
    folder = tmp_path / "settings"
    shutil.copytree(tiny_model_dir, folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps(config | {"text_config": ["LlamaForCausalLM"]}))
    (folder / "chat_template.jinja").unlink()  # the template is then looked for in the files below
    for name, text in (("tokenizer_config.json", '{"chat_template": "{{'), ("processor_config.json", "[]")):
        (folder / name).write_text(text)
    problems = vllm_problems(folder)
    fix = ("expected a JSON object of settings; restore it from where the model came from (a copy cut "
           "short or edited), or save the model again")
    cut = "not valid JSON (Unterminated string starting at: line 1 column 19)"
    assert problems[:2] == [f"{folder / 'tokenizer_config.json'}: {cut}; {fix}",
                            f"{folder / 'processor_config.json'}: a list, not an object; {fix}"]
    assert problems[2:] == ["text_config.architectures is missing; vLLM resolves the language model from it",
                            "no chat template saved (chat_template.jinja or in tokenizer/processor config)"]
