"""The medical-image classifier: a linear probe (logistic regression) on image embeddings.

PubMedVision trained a classifier on 1K hand-labelled + 10K MLLM-labelled images to drop charts and
other non-medical figures. medvl provides the labelling (`medvl curate label`, `label.py`) and this
half: `train_classifier(labels, encoder)` fits a scikit-learn `LogisticRegression` on embeddings from
any encoder, reports validation accuracy and saves `probe.joblib` + `classifier.json` to a folder
that `filter.image.classifier` points at. `read_classifier(folder)` reads them back, checked: a
folder without them, a probe.joblib that is not a fitted two-class probe (truncated, another
object) or a classifier.json without its keys is one `ClassifierError` line naming the file and the
command that makes it again; `MedicalImageClassifier.load` adds the encoder, and `medvl curate run`
reads the configured one before any stage runs.

Encoders (`encoder` spec string):
- `builtin`: no weights, works offline — a 16x16 grey thumbnail plus colour, saturation, edge and
  palette statistics (charts are flat, few-coloured and sharp-edged; scans and slides are not).
- `hf:<folder>`: a local Hugging Face vision model (CLIP/SigLIP vision or full model, or any
  `AutoModel` with pooled output) and its image processor.
- `medvl:<folder>`: the vision tower of a saved medvl model (mean of the last hidden states).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
from PIL import Image

from medvl.errors import UserError, first_line
from medvl.io.files import atomic_write_json, ensure_folder
from medvl.io.jsonl import read_json_object

__all__ = [
    "Embedder",
    "make_embedder",
    "builtin_embedding",
    "MedicalImageClassifier",
    "read_classifier",
    "train_classifier",
    "TrainResult",
    "ClassifierError",
]

PROBE_FILE = "probe.joblib"
META_FILE = "classifier.json"


class ClassifierError(UserError, ValueError):
    """Training data or an encoder the classifier cannot use; the message says what to change."""


def builtin_embedding(image: Image.Image) -> np.ndarray:
    """A weight-free 300-d descriptor: grey thumbnail, colour/saturation stats, edges, palette."""
    rgb = image.convert("RGB")
    small = np.asarray(rgb.resize((64, 64), Image.Resampling.BILINEAR), dtype=np.float32) / 255.0
    grey = small.mean(axis=2)
    thumb = np.asarray(rgb.convert("L").resize((16, 16), Image.Resampling.BILINEAR), dtype=np.float32) / 255.0
    hsv = np.asarray(rgb.resize((64, 64)).convert("HSV"), dtype=np.float32) / 255.0
    saturation = hsv[..., 1]
    gx, gy = np.abs(np.diff(grey, axis=1)), np.abs(np.diff(grey, axis=0))
    edges = np.concatenate([gx.ravel(), gy.ravel()])
    quantised = (small * 7.999).astype(np.int32)
    palette = np.unique(quantised[..., 0] * 64 + quantised[..., 1] * 8 + quantised[..., 2]).size / 512.0
    stats = [
        *small.reshape(-1, 3).mean(axis=0),
        *small.reshape(-1, 3).std(axis=0),
        saturation.mean(),
        saturation.std(),
        (saturation > 0.25).mean(),
        grey.mean(),
        grey.std(),
        (grey > 0.94).mean(),
        (grey < 0.06).mean(),
        edges.mean(),
        edges.std(),
        (edges > 0.25).mean(),
        (edges < 0.01).mean(),
        palette,
    ]
    histogram = np.histogram(grey, bins=16, range=(0, 1))[0] / grey.size
    edge_histogram = np.histogram(edges, bins=12, range=(0, 1))[0] / edges.size
    return np.concatenate([thumb.ravel(), np.asarray(stats, np.float32), histogram, edge_histogram]).astype(
        np.float32
    )


class Embedder:
    """images → (n, d) float32 embeddings; `spec` names it in the saved classifier."""

    def __init__(self, spec: str, embed: Callable[[list[Image.Image]], np.ndarray]):
        self.spec, self._embed = spec, embed

    def __call__(self, images: Sequence[Image.Image]) -> np.ndarray:
        return np.asarray(self._embed(list(images)), dtype=np.float32)


def _encoder_kind(spec: str) -> tuple[str, str]:
    """(kind, folder) of an encoder spec; one naming no encoder, or a folder that is not there, is a
    ClassifierError."""
    kind, _, folder = spec.partition(":")
    if kind == "builtin":
        return kind, folder
    if kind in ("hf", "medvl") and folder:
        if not Path(folder).is_dir():
            raise ClassifierError(f"encoder {spec!r}: {folder} is not a folder; give a local model folder")
        return kind, folder
    raise ClassifierError(f"unknown encoder {spec!r}: use builtin, hf:<folder> or medvl:<folder>")


def make_embedder(spec: str, batch_size: int = 16) -> Embedder:
    """`builtin`, `hf:<folder>` or `medvl:<folder>` (see the module docstring)."""
    kind, folder = _encoder_kind(spec)
    if kind == "builtin":
        return Embedder(spec, lambda images: np.stack([builtin_embedding(i) for i in images]))
    encode = _hf_encoder(folder) if kind == "hf" else _medvl_encoder(folder)

    def embed(images: list[Image.Image]) -> np.ndarray:
        out = [encode(images[i : i + batch_size]) for i in range(0, len(images), batch_size)]
        return np.concatenate(out) if out else np.zeros((0, 1), np.float32)

    return Embedder(spec, embed)


def _hf_encoder(folder: str) -> Callable[[list[Image.Image]], np.ndarray]:
    import torch
    from transformers import AutoImageProcessor, AutoModel

    processor = AutoImageProcessor.from_pretrained(folder)
    model = AutoModel.from_pretrained(folder).eval()

    @torch.inference_mode()
    def encode(images: list[Image.Image]) -> np.ndarray:
        pixels = processor(images=[i.convert("RGB") for i in images], return_tensors="pt")["pixel_values"]
        if hasattr(model, "get_image_features"):
            features = model.get_image_features(pixel_values=pixels)
            features = getattr(features, "pooler_output", features)
        else:
            output = model(pixel_values=pixels)
            pooled = getattr(output, "pooler_output", None)
            features = pooled if pooled is not None else output.last_hidden_state.mean(dim=1)
        return features.float().reshape(len(images), -1).numpy()

    return encode


def _medvl_encoder(folder: str) -> Callable[[list[Image.Image]], np.ndarray]:
    import torch

    from medvl.model.checkpoint import load_model

    model, processor = load_model(folder, dtype="float32", device="cpu")
    tower = model.model.vision_tower if hasattr(model.model, "vision_tower") else model.vision_tower

    @torch.inference_mode()
    def encode(images: list[Image.Image]) -> np.ndarray:
        pixels = processor.image_processor(images=[i.convert("RGB") for i in images], return_tensors="pt")
        hidden = tower(pixel_values=pixels["pixel_values"]).last_hidden_state
        return hidden.mean(dim=1).float().numpy()

    return encode


@dataclass
class MedicalImageClassifier:
    """A fitted probe and the encoder it was trained on; `predict_proba` gives p(medical)."""

    probe: Any
    embedder: Embedder
    threshold: float
    meta: dict[str, Any]

    def predict_proba(self, images: Sequence[Image.Image]) -> np.ndarray:
        features = self.embedder(images)
        return self.probe.predict_proba(features)[:, 1]

    @classmethod
    def load(cls, folder: str | Path) -> "MedicalImageClassifier":
        probe, meta = read_classifier(folder)
        return cls(probe, make_embedder(meta["encoder"]), float(meta["threshold"]), meta)


def read_classifier(folder: str | Path) -> tuple[Any, dict[str, Any]]:
    """The fitted probe and the metadata `train_classifier` saved in `folder`, checked (module notes)."""
    import joblib

    folder = Path(folder)
    meta_file, probe_file = folder / META_FILE, folder / PROBE_FILE
    if not meta_file.is_file():
        raise ClassifierError(
            f"{folder} is not a classifier folder (no {META_FILE}); make one with `medvl curate train-classifier`"
        )
    fix = f"make it again with `medvl curate train-classifier LABELS... --out {folder}`"
    meta = read_json_object(meta_file, "the classifier metadata `medvl curate train-classifier` saves", fix,
                            {"encoder": str, "dim": int, "threshold": float})
    try:
        _encoder_kind(meta["encoder"])
    except ClassifierError as exc:
        raise ClassifierError(f"{meta_file}: {exc}; or {fix}") from None
    if not 0 <= meta["threshold"] <= 1:
        raise ClassifierError(f"{meta_file}: 'threshold' is {meta['threshold']}, not a p(medical) from 0 to 1; {fix}")
    if not probe_file.is_file():
        raise ClassifierError(f"{probe_file}: missing beside {META_FILE}; {fix}")
    try:
        probe = joblib.load(probe_file)
    except Exception as exc:  # a truncated or foreign pickle fails in any of pickle's ways (EOFError, struct.error, ...)
        raise ClassifierError(f"{probe_file}: not a readable probe ({type(exc).__name__}: {first_line(exc)}); "
                              f"{fix}") from None
    fitted = getattr(probe, "n_features_in_", None) == meta["dim"] and len(getattr(probe, "classes_", ())) == 2
    if not (fitted and callable(getattr(probe, "predict_proba", None))):
        raise ClassifierError(f"{probe_file}: holds a {type(probe).__name__}, not a two-class probe fitted on "
                              f"{meta['dim']}-number embeddings (the 'dim' of {META_FILE}); {fix}")
    return probe, meta


@dataclass
class TrainResult:
    folder: Path
    n_train: int
    n_val: int
    val_accuracy: float | None
    train_accuracy: float
    skipped: list[tuple[str, str]]

    def summary(self) -> str:
        return (
            f"classifier saved to {self.folder}: {self.n_train} train / {self.n_val} validation images, "
            f"validation accuracy {_fmt(self.val_accuracy)} (train {self.train_accuracy:.3f}); "
            f"{len(self.skipped)} images skipped"
        )


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def train_classifier(
    examples: Sequence[tuple[str | Path | Image.Image, bool]],
    out_dir: str | Path,
    *,
    encoder: str = "builtin",
    val_fraction: float = 0.2,
    threshold: float = 0.5,
    seed: int = 0,
    c: float = 1.0,
) -> TrainResult:
    """Fit the probe on (image or path, is_medical) pairs; save it with its validation accuracy."""
    import joblib
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from medvl.io.images import ImageLoadError, load_image

    if not 0 <= val_fraction < 1:
        raise ClassifierError(f"--val-fraction {val_fraction}: give a share from 0 (no validation) up to, not "
                              "including, 1 (the rest trains the probe)")
    folder = ensure_folder(out_dir)  # first: a blocked output path must not cost the embedding and the fit
    embedder = make_embedder(encoder)
    features, labels, skipped = [], [], []
    for source, label in examples:
        try:
            image = source if isinstance(source, Image.Image) else load_image(source)
        except ImageLoadError as exc:
            skipped.append((str(source), exc.reason))
            continue
        features.append(embedder([image])[0])
        labels.append(int(bool(label)))
    if len(set(labels)) < 2:
        medical = sum(labels)
        raise ClassifierError(f"train-classifier needs both medical and non-medical examples: got {medical} medical "
                              f"and {len(labels) - medical} non-medical readable images ({len(skipped)} unreadable)")
    order = list(range(len(labels)))
    random.Random(seed).shuffle(order)
    n_val = max(1, int(round(len(order) * val_fraction))) if val_fraction > 0 else 0
    val, train = order[:n_val], order[n_val:]
    x, y = np.stack(features), np.asarray(labels)
    if len(set(y[train])) < 2:
        raise ClassifierError(f"the training split ({len(train)} of {len(labels)} readable images, after holding out "
                              f"{n_val} for validation) holds one class only: add labelled images of both classes, "
                              "or lower --val-fraction")
    probe = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=2000, class_weight="balanced"))
    probe.fit(x[train], y[train])
    val_accuracy = float((probe.predict(x[val]) == y[val]).mean()) if val else None
    train_accuracy = float((probe.predict(x[train]) == y[train]).mean())
    joblib.dump(probe, folder / PROBE_FILE)
    meta = {
        "encoder": embedder.spec,
        "dim": int(x.shape[1]),
        "threshold": threshold,
        "classes": ["non_medical", "medical"],
        "n_train": len(train),
        "n_val": len(val),
        "n_medical": int(y.sum()),
        "val_accuracy": val_accuracy,
        "train_accuracy": train_accuracy,
        "seed": seed,
    }
    atomic_write_json(folder / META_FILE, meta)
    return TrainResult(folder, len(train), len(val), val_accuracy, train_accuracy, skipped)
