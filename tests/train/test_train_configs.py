"""The shipped recipes and accelerate configs load and say what the notes say."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from medvl.config import load_config
from medvl.train.config import TrainConfig

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
RECIPES = sorted((CONFIGS / "train").glob("*.yaml"))


def test_all_recipes_are_shipped():
    assert {p.stem for p in RECIPES} >= {
        "llava_med_stage1", "llava_med_stage2", "llava_med_finetune_vqa_rad", "huatuo_vision_align",
        "huatuo_vision_sft", "llava15_pretrain", "llava15_finetune",
    }


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.stem)
def test_recipe_validates(path):
    config = load_config(TrainConfig, path)
    assert config.data.sources and config.output_dir.startswith("runs/")


def test_recipes_carry_the_published_hyperparameters():
    def get(name: str) -> TrainConfig:
        return load_config(TrainConfig, CONFIGS / "train" / f"{name}.yaml")

    stage1, stage2, rad = get("llava_med_stage1"), get("llava_med_stage2"), get("llava_med_finetune_vqa_rad")
    assert (stage1.stage, stage1.optim.lr, stage1.optim.batch_size * stage1.optim.grad_accum * 8) == ("align", 2e-3, 128)
    assert (stage2.stage, stage2.optim.lr, stage2.optim.epochs, stage2.model.path) == (
        "instruct", 2e-5, 3, stage1.output_dir)
    assert (rad.stage, rad.model.path, rad.optim.epochs) == ("finetune", stage2.output_dir, 3)
    pre, ft = get("llava15_pretrain"), get("llava15_finetune")
    assert (pre.policy(), pre.optim.lr, pre.optim.batch_size * 8) == (
        {"vision": False, "projector": True, "llm": False, "embeddings": False}, 1e-3, 256)
    assert (ft.optim.lr, ft.optim.batch_size * 8, ft.model.path) == (2e-5, 128, pre.output_dir)
    align, sft = get("huatuo_vision_align"), get("huatuo_vision_sft")
    for config in (align, sft):
        assert config.policy() == {"vision": True, "projector": True, "llm": True, "embeddings": True}
        assert (config.optim.lr, config.optim.warmup_ratio, config.optim.weight_decay, config.optim.min_lr_ratio) == (
            5e-6, 0.05, 0.1, 0.15)
        assert (config.data.last_turn_only, config.data.max_images, config.data.max_length) == (True, 8, 4096)
        assert len(config.data.sources) == 2  # PubMedVision mixed with LLaVA data
    assert sft.model.path == align.output_dir


@pytest.mark.parametrize("name", ["cpu_2proc", "zero2", "zero3", "fsdp"])
def test_accelerate_configs_load(name):
    from accelerate.commands.config.config_args import load_config_from_file

    config = load_config_from_file(str(CONFIGS / "accelerate" / f"{name}.yaml"))
    assert config.num_processes == (2 if name == "cpu_2proc" else 8)
    if name.startswith("zero"):
        assert (CONFIGS.parent / config.deepspeed_config["deepspeed_config_file"]).is_file()


def test_projector_lr_is_positive_and_needs_a_trained_projector():
    from medvl.config import ConfigError

    assert load_config(TrainConfig, None, ["model.path=m"]).optim.projector_lr is None
    assert load_config(TrainConfig, None, ["model.path=m", "optim.projector_lr=2e-3"]).optim.projector_lr == 2e-3
    with pytest.raises(ConfigError, match="projector_lr"):
        load_config(TrainConfig, None, ["model.path=m", "optim.projector_lr=0"])
    with pytest.raises(ConfigError, match="projector_lr is set but the align stage's projector is frozen"):
        load_config(TrainConfig, None, ["model.path=m", "stage=align", "trainable.projector=false",
                                        "optim.projector_lr=2e-3"])


@pytest.mark.parametrize("command", ["train", "data check"])
def test_a_stage_whose_previous_stage_is_missing_names_model_path(medvl, tmp_path, monkeypatch, command):
    monkeypatch.chdir(tmp_path)  # the recipe's runs/llava_med_stage1 does not exist here
    outcome = medvl(*command.split(), CONFIGS / "train" / "llava_med_stage2.yaml")
    assert (outcome.code, outcome.err.strip()) == (
        2, "error: model.path: runs/llava_med_stage1 is not a saved model folder (no config.json)")


def _train_yaml(path: Path, model: dict, data: Path) -> Path:
    """A train config of `model` (a `model` section) on the records in `data`."""
    import yaml

    path.write_text(yaml.safe_dump({"model": model, "data": {"sources": [{"path": str(data)}]},
                                    "output_dir": str(path.parent / "run")}))
    return path


def _one_line(outcome: Any, start: str, *fragments: str) -> None:
    lines = outcome.err.strip().splitlines()
    assert outcome.code == 2 and len(lines) == 1, outcome.err
    assert lines[0].startswith(f"error: {start}") and all(f in lines[0] for f in fragments), lines[0]


def test_a_broken_model_config_is_one_line_naming_it(medvl, broken_model_dirs, color_data, tiny_spec_dict,
                                                      tmp_path):
    """`model.path` (train, data check) or `model.spec.vision.path` (data check) whose config.json is cut
    short, a list or has no model_type. Before: a JSONDecodeError, TypeError or ValueError traceback."""
    for folder, said in broken_model_dirs:
        config = _train_yaml(tmp_path / "train.yaml", {"path": str(folder)}, color_data)
        check_file = ("data", "check", color_data, "--model", folder)
        for command in (("train", config), ("data", "check", config), check_file):
            _one_line(medvl(*command), f"model.path: {said}", "; restore it")
        spec = {**tiny_spec_dict, "vision": {**tiny_spec_dict["vision"], "path": str(folder)}}
        config = _train_yaml(tmp_path / "spec.yaml", {"spec": spec}, color_data)
        _one_line(medvl("data", "check", config), f"model.spec.vision.path: {said}", "; restore it")


def test_a_model_path_transformers_cannot_load_is_one_line(medvl, tiny_model_dir, color_data, tmp_path):
    """A model.path folder without its weights file was an OSError traceback from `medvl train`."""
    folder = tmp_path / "no-weights"
    folder.mkdir()
    for path in tiny_model_dir.iterdir():
        if path.suffix != ".safetensors":
            (folder / path.name).symlink_to(path)
    outcome = medvl("train", _train_yaml(tmp_path / "train.yaml", {"path": str(folder)}, color_data))
    _one_line(outcome, f"model.path: {folder} is not a loadable medvl model (",
              "give the folder that `medvl train`, `medvl build` or `medvl convert` wrote")
