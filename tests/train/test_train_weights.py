"""What a training run does to the tiny model's weights: the supervised loss, freeze policies, stage
chaining, save and reload, LoRA (merged on save; QLoRA needs a GPU), and `optim.projector_lr`'s optimizer
groups."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import TrainerCallback

from medvl.train.runner import run_training


def params_of(model, part: str) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if part in n}


def same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def a_batch(config, model_processor, n: int = 4):
    from medvl.train.dataset import Collator, TrainDataset
    from medvl.train.runner import prepare_data

    _, processor = model_processor
    report, sources, encoder, entries = prepare_data(config, processor, Path(config.output_dir), progress=False)
    dataset = TrainDataset(sources, entries, encoder, processor.image_processor)
    batch = Collator(processor.tokenizer.pad_token_id)([dataset[i] for i in range(n)])
    return {k: v for k, v in batch.items() if isinstance(v, torch.Tensor)}


def test_supervised_only_loss_equals_the_models_loss(train_config, tiny_model):
    from medvl.train.trainer import next_token_loss

    model, _ = tiny_model
    batch = a_batch(train_config(), tiny_model)
    with torch.no_grad():
        total, count, _ = next_token_loss(model, batch)
        reference = model(**batch).loss
    assert count == int((batch["labels"][:, 1:] != -100).sum()) > 0
    assert torch.allclose(total / count, reference, rtol=1e-5)


@pytest.fixture(scope="module")
def initial(tiny_spec_dict):
    """The weights a fresh build of the test spec starts from (the build is seeded)."""
    from medvl.model.build import build_model
    from medvl.model.spec import ModelSpec

    model, _ = build_model(ModelSpec.model_validate(tiny_spec_dict))
    return {part: params_of(model, part) for part in ("vision_tower", "multi_modal_projector", "language_model")}


def test_align_trains_only_the_projector_and_the_next_stage_starts_from_it(train_config, initial, tmp_path):
    first = run_training(train_config(tmp_path / "align", stage="align", optim__max_steps=3))
    assert same(params_of(first.model, "vision_tower"), initial["vision_tower"])
    assert same(params_of(first.model, "language_model"), initial["language_model"])
    assert not same(params_of(first.model, "multi_modal_projector"), initial["multi_modal_projector"])

    second = run_training(train_config(tmp_path / "sft", model={"path": str(tmp_path / "align")},
                                       trainable__vision=True, optim__max_steps=3))
    for part in ("vision_tower", "language_model", "multi_modal_projector"):
        assert not same(params_of(second.model, part), params_of(first.model, part)), part


def test_fixed_embeddings_stay_while_the_decoder_trains(train_config, initial, tmp_path):
    result = run_training(train_config(tmp_path / "run", trainable__embeddings=False, optim__max_steps=3))
    trained = params_of(result.model, "language_model")
    embedding = [name for name in trained if "embed_tokens" in name]
    assert embedding and same({n: trained[n] for n in embedding}, {n: initial["language_model"][n] for n in embedding})
    decoder = [name for name in trained if "layers." in name]
    assert not same({n: trained[n] for n in decoder}, {n: initial["language_model"][n] for n in decoder})
    assert not result.model.get_output_embeddings().weight.requires_grad
    summary = json.loads((result.output_dir / "train_summary.json").read_text())
    assert summary["trainable"]["head"]["trainable"] == 0 < summary["trainable"]["llm"]["trainable"]


def test_saved_model_reloads_with_transformers_and_gives_equal_logits(train_config, tiny_model, tmp_path):
    from PIL import Image
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from medvl.model.generate import GenerationSettings, Generator

    result = run_training(train_config(tmp_path / "run"))
    assert result.global_step == 6 and result.data.valid == 48
    reloaded = AutoModelForImageTextToText.from_pretrained(result.output_dir).eval()
    batch = a_batch(train_config(), tiny_model)
    with torch.no_grad():
        assert torch.allclose(result.model.eval()(**batch).logits, reloaded(**batch).logits, atol=1e-6)
    processor = AutoProcessor.from_pretrained(result.output_dir)
    assert processor.chat_template == tiny_model[1].chat_template
    answer = Generator(reloaded, processor, GenerationSettings(max_new_tokens=3)).generate(
        [[{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What color?"}]}]],
        [[Image.new("RGB", (32, 32), (200, 0, 0))]],
    )
    assert answer[0].new_tokens >= 1


def test_lora_is_merged_into_the_saved_model(train_config, initial, tmp_path):
    from transformers import AutoModelForImageTextToText

    result = run_training(train_config(tmp_path / "lora", lora__enabled=True, lora__r=4, optim__lr=1e-2,
                                       optim__max_steps=3))
    assert not hasattr(result.model, "peft_config")
    saved = AutoModelForImageTextToText.from_pretrained(result.output_dir)
    assert not any("lora" in name for name, _ in saved.named_parameters())
    trained = params_of(saved, "language_model.layers.0.self_attn.q_proj")
    start = {k: v for k, v in initial["language_model"].items() if "layers.0.self_attn.q_proj" in k}
    assert not same({k.replace("model.", "", 1): v for k, v in trained.items()},
                    {k.replace("model.", "", 1): v for k, v in start.items()})
    assert not same(params_of(saved, "multi_modal_projector"), initial["multi_modal_projector"])
    assert same(params_of(saved, "vision_tower"), initial["vision_tower"])
    # The projector trains as a peft copy beside its frozen original: counted once, all of it trained.
    projector = sum(p.numel() for p in initial["multi_modal_projector"].values())
    summary = json.loads((result.output_dir / "train_summary.json").read_text())
    assert summary["trainable"]["projector"] == {"total": projector, "trainable": projector}


def test_qlora_on_cpu_is_a_clear_error(train_config, tmp_path):
    from medvl.train.modeling import LoraUnavailable

    if torch.cuda.is_available():
        pytest.skip("this checks the CPU-only error")
    with pytest.raises(LoraUnavailable, match="needs a CUDA GPU and bitsandbytes"):
        run_training(train_config(tmp_path / "q", lora__enabled=True, lora__quantize="4bit"))


class GroupsAtStep(TrainerCallback):
    """The optimizer's groups after optimizer step `step`, as (parameter names, settings) pairs."""

    def __init__(self, step: int):
        self.step, self.groups, self.trainable = step, [], set()

    def on_step_end(self, args, state, control, model=None, optimizer=None, **kwargs):
        if state.global_step == self.step:
            names = {id(p): n for n, p in model.named_parameters()}
            self.trainable = {n for n, p in model.named_parameters() if p.requires_grad}
            self.groups = [({names[id(p)] for p in g["params"]}, {k: v for k, v in g.items() if k != "params"})
                           for g in optimizer.param_groups]


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_projector_lr_puts_the_projector_in_its_own_groups_and_the_schedule_keeps_the_ratio(
        train_config, tmp_path, lora):
    # LoRA: LLaVA's LoRA recipes are where mm_projector_lr is used (2e-5 beside 2e-4)
    config = train_config(tmp_path / "run", optim__projector_lr=3e-3, optim__weight_decay=0.1, optim__max_steps=4,
                          optim__warmup_ratio=0.25, lora__enabled=lora, lora__r=4)
    seen = GroupsAtStep(2)
    run_training(config, callbacks=[seen])
    grouped = [name for names, _ in seen.groups for name in names]
    assert len(grouped) == len(set(grouped)) and set(grouped) == seen.trainable  # each trained parameter once
    assert not any("vision_tower" in name for name in grouped)  # the instruct stage keeps the tower frozen
    assert any("lora_A" in name for name in grouped) == lora
    for names, settings in seen.groups:
        projector = {"multi_modal_projector" in name for name in names}
        assert len(projector) == 1  # a group is all projector or all the rest
        assert settings["initial_lr"] == (3e-3 if projector == {True} else 1e-3)
        assert settings["lr"] / settings["initial_lr"] == pytest.approx(0.75)  # the cosine's next step, for all
        decays = {"bias" not in name and "norm" not in name for name in names}
        assert decays == {settings["weight_decay"] > 0}  # no decay on biases and norms, in every group
    assert {settings["weight_decay"] for names, settings in seen.groups if settings["initial_lr"] == 3e-3} == {0.0, 0.1}
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert len({r["learning_rate"] for r in rows}) == 4  # cosine decay: the rates change every step
    assert all(r["projector_learning_rate"] == pytest.approx(3 * r["learning_rate"]) for r in rows)


def test_projector_lr_with_deepspeeds_own_optimizer_is_refused(train_config):
    from types import SimpleNamespace

    from medvl.config import ConfigError
    from medvl.train.runner import _check_projector_lr

    def trainer(deepspeed_config):  # what _check_projector_lr reads of a DeepSpeed-enabled Trainer
        return SimpleNamespace(is_deepspeed_enabled=True, args=SimpleNamespace(
            hf_deepspeed_config=SimpleNamespace(config=deepspeed_config)))

    config = train_config(optim__projector_lr=3e-3)
    _check_projector_lr(trainer({"zero_optimization": {"stage": 2}}), config)  # medvl's configs: the Trainer's optimizer
    _check_projector_lr(trainer({"optimizer": {"type": "AdamW"}}), train_config())  # no projector_lr: nothing to lose
    with pytest.raises(ConfigError, match="the DeepSpeed config has an `optimizer` section"):
        _check_projector_lr(trainer({"optimizer": {"type": "AdamW"}}), config)
