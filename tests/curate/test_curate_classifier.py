"""The medical-image classifier learns real medical images vs rendered charts; the filter applies it."""

from __future__ import annotations

import io
import random
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medvl.curate.classifier import MedicalImageClassifier, builtin_embedding, make_embedder, train_classifier
from medvl.curate.filters.image import ImageFilter, ImageFilterConfig
from medvl.curate.ingest_document import make_document


def medical_images(shared: Path | None) -> list[Image.Image]:
    """Real medical images that install offline (+ VQA-RAD radiology images when ../shared exists)."""
    import pydicom.data
    from skimage import data

    from medvl.io.images import load_image

    images = [
        Image.fromarray(data.retina()),
        Image.fromarray(data.immunohistochemistry()),
        Image.fromarray(data.microaneurysms()).convert("RGB"),
        Image.fromarray(data.cell()).convert("RGB"),
    ]
    for name in ("CT_small.dcm", "MR_small.dcm", "liver_1frame.dcm"):
        images.append(load_image(pydicom.data.get_testdata_file(name, download=False)))
    if shared is not None:
        folder = shared / "data" / "vqa-rad" / "images"
        images += [load_image(p) for p in sorted(folder.glob("*.jpg"))[:24]]
    return images


def chart_images(n: int, seed: int) -> list[Image.Image]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        fig, ax = plt.subplots(figsize=(rng.uniform(3, 6), rng.uniform(2.5, 5)), dpi=60)
        kind = i % 5
        x = np.arange(rng.integers(4, 12))
        if kind == 0:
            ax.bar(x, rng.random(len(x)))
        elif kind == 1:
            ax.plot(x, rng.random((len(x), 3)))
        elif kind == 2:
            ax.scatter(rng.random(40), rng.random(40), c=rng.random(40))
        elif kind == 3:
            ax.pie(rng.random(4) + 0.2)
        else:
            ax.hist(rng.normal(size=200), bins=15)
        ax.set_title(f"Figure {i}")
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png")
        plt.close(fig)
        out.append(Image.open(io.BytesIO(buffer.getvalue())).convert("RGB"))
    return out


def augment(image: Image.Image, rng: random.Random) -> Image.Image:
    w, h = image.size
    scale = rng.uniform(0.6, 1.0)
    cw, ch = max(32, int(w * scale)), max(32, int(h * scale))
    left, top = rng.randint(0, w - cw), rng.randint(0, h - ch)
    crop = image.crop((left, top, left + cw, top + ch))
    if rng.random() < 0.5:
        crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return crop.resize((rng.randint(200, 400), rng.randint(200, 400)))


@pytest.fixture(scope="module")
def trained(tmp_path_factory, request) -> tuple[Path, list, list]:
    shared = Path(__file__).resolve().parents[2].parent / "shared"
    rng = random.Random(0)
    medical = medical_images(shared if (shared / "data" / "vqa-rad").is_dir() else None)
    train_med, held_med = medical[::2] + medical[1::4], medical[3::4]
    examples = [(augment(m, rng), True) for m in train_med for _ in range(6)]
    examples += [(c, False) for c in chart_images(40, seed=1)]
    folder = tmp_path_factory.mktemp("classifier")
    result = train_classifier(examples, folder, encoder="builtin", val_fraction=0.25, seed=0)
    held_out = [augment(m, rng) for m in held_med for _ in range(3)]
    return folder, result, held_out


def test_probe_separates_medical_images_from_charts(trained):
    folder, result, held_out = trained
    assert result.val_accuracy >= 0.9, result.summary()
    classifier = MedicalImageClassifier.load(folder)
    assert classifier.meta["encoder"] == "builtin" and classifier.meta["val_accuracy"] == result.val_accuracy
    new_charts = chart_images(10, seed=99)
    p_charts = classifier.predict_proba(new_charts)
    p_medical = classifier.predict_proba(held_out)
    accuracy = ((p_charts < 0.5).sum() + (p_medical >= 0.5).sum()) / (len(p_charts) + len(p_medical))
    assert accuracy >= 0.85, (p_charts, p_medical)


def test_image_filter_applies_the_classifier_with_its_threshold(trained, tmp_path: Path):
    folder, _, held_out = trained
    chart_path, scan_path = tmp_path / "chart.png", tmp_path / "scan.png"
    chart_images(1, seed=7)[0].resize((500, 400)).save(chart_path)
    held_out[0].resize((500, 400)).save(scan_path)
    image_filter = ImageFilter(ImageFilterConfig(classifier=str(folder)))
    chart = make_document("chart", [str(chart_path)], "x", order=[0, 0, 0], source="s")
    scan = make_document("scan", [str(scan_path)], "x", order=[0, 0, 1], source="s")
    assert image_filter.filter(chart) == (False, "non_medical_image")
    assert image_filter.filter(scan) is True and scan.metadata["medical_prob"][0] >= 0.5
    strict = ImageFilter(ImageFilterConfig(classifier=str(folder), classifier_threshold=1.0))
    assert (
        strict.filter(make_document("scan2", [str(scan_path)], "x", order=[0, 0, 2], source="s"))[0] is False
    )


def test_without_classifier_the_step_is_skipped_and_counted(tmp_path: Path, rgb_image):
    path = tmp_path / "big.png"
    rgb_image.resize((400, 400)).save(path)
    image_filter = ImageFilter(ImageFilterConfig())
    assert image_filter.filter(make_document("a", [str(path)], "x", order=[0, 0, 0], source="s")) is True
    assert image_filter.stats["classifier_skipped"].total == 1


def test_training_needs_both_classes_and_unknown_encoders_fail(tmp_path: Path, rgb_image):
    with pytest.raises(ValueError, match="both"):
        train_classifier([(rgb_image, True)] * 4, tmp_path / "c")
    with pytest.raises(ValueError, match="unknown encoder"):
        make_embedder("clip")
    assert builtin_embedding(rgb_image).shape == builtin_embedding(rgb_image.resize((300, 90))).shape


def test_a_validation_share_that_leaves_no_two_class_training_split_is_one_line(tmp_path: Path, rgb_image, medvl):
    """Two images, one per class: the held-out one leaves a one-class training split (scikit-learn's traceback
    before); a --val-fraction of 1 or more (nothing left to train) or below 0 is refused before any output."""
    rgb_image.save(tmp_path / "a.png")
    Image.new("RGB", (64, 64), "white").save(tmp_path / "b.png")
    labels = tmp_path / "labels.jsonl"
    labels.write_text('{"image": "a.png", "label": "medical"}\n{"image": "b.png", "label": "non_medical"}\n')
    outcome = medvl("curate", "train-classifier", labels, "--out", tmp_path / "c")
    assert outcome.code == 2 and "holds one class only" in outcome.err and "--val-fraction" in outcome.err
    assert not (tmp_path / "c" / "classifier.json").exists()
    for share in ("1.0", "1.5", "-0.5"):
        outcome = medvl("curate", "train-classifier", labels, "--out", tmp_path / "d", f"--val-fraction={share}")
        assert outcome.code == 2 and f"--val-fraction {float(share)}" in outcome.err, outcome.err
        assert "Traceback" not in outcome.err and not (tmp_path / "d").exists()


def test_a_classifier_setting_that_names_no_classifier_is_a_user_error(tmp_path: Path):
    """filter.image.classifier at a folder without classifier.json: a UserError (one line, exit 2), not the
    FileNotFoundError traceback `curate run` / `estimate` printed."""
    from medvl.errors import UserError

    with pytest.raises(UserError, match="is not a classifier folder .*train-classifier"):
        MedicalImageClassifier.load(tmp_path)


def test_an_empty_labels_file_is_named(tmp_path: Path, medvl):
    (tmp_path / "labels.jsonl").write_text("\n")
    outcome = medvl("curate", "train-classifier", tmp_path / "labels.jsonl", "--out", tmp_path / "c")
    assert outcome.code == 2 and "labels.jsonl: no labels in it" in outcome.err and not (tmp_path / "c").exists()


def test_hf_and_medvl_encoders_embed_images(tmp_path: Path, tiny_model_dir: Path, rgb_image):
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel

    folder = tmp_path / "tiny-clip"
    config = CLIPVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=32,
        patch_size=8,
    )
    CLIPVisionModel(config).save_pretrained(folder)
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(
        folder
    )
    for spec in (f"hf:{folder}", f"medvl:{tiny_model_dir}"):
        vectors = make_embedder(spec)([rgb_image, rgb_image.rotate(90)])
        assert vectors.shape[0] == 2 and vectors.shape[1] > 8 and np.isfinite(vectors).all()
