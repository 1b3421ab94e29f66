"""The production path: a saved medvl checkpoint names an architecture vLLM's registry accepts."""

from __future__ import annotations

import json
import shutil

import pytest

from medvl.model.build import build_model
from medvl.model.checkpoint import save_model
from medvl.model.families import vllm_text_architectures
from medvl.model.spec import tiny_spec
from medvl.serve.vllm_compat import VLLM_VISION_MODEL_TYPES, vllm_problems


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
    assert vllm_problems(tmp_path / "nowhere") == [f"{tmp_path / 'nowhere' / 'config.json'} does not exist"]
