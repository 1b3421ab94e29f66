"""The learned medical-text filter: a linear probe on all-MiniLM-L6-v2 caption embeddings.

- `load_labelled(paths)` reads labelled captions: JSONL with `text` and `label` (`medical`,
  `non_medical`; `ambiguous` lines are skipped) and an optional `split` (`test` lines are held out).
  The shipped set is `assets/medical_captions.jsonl` (real PMC captions from ROCO, hand labelled,
  CC BY / CC0 only; `assets/README.md` has the provenance, the labelling rules and the split).
- `train_text_probe(examples, out_dir)` fits a scikit-learn logistic regression (balanced classes)
  on the training captions; 5-fold cross-validation on them alone picks the regularisation `C`
  (of `C_GRID`: the best cross-validated precision at the target recall) and the operating point
  (the highest threshold whose cross-validated recall reaches `target_recall`). The held-out
  captions are scored once, at the end, with that threshold. It saves `text_filter.json` — encoder, weights,
  threshold, cross-validated and held-out precision/recall — plain JSON, no pickle.
- `TextProbe.load(folder or "builtin")` → `predict_proba(texts)`; "builtin" is the probe shipped in
  `assets/medical_text_probe.json`, trained on the shipped set's train split.
- `precision_recall(predicted, labels)` → counts, precision and recall with Wilson 95% intervals.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from medvl.errors import UserError
from medvl.io.files import atomic_write_json

__all__ = [
    "PROBE_FILE",
    "LabelledCaption",
    "shipped_labels_path",
    "load_labelled",
    "precision_recall",
    "TextProbe",
    "train_text_probe",
]

PROBE_FILE = "text_filter.json"
LABELS = {"medical": True, "non_medical": False}
C_GRID = (0.3, 1.0, 3.0, 10.0)


class TextProbeError(UserError, ValueError):
    """Labelled captions or a probe folder that cannot be used; the message says which and why."""


@dataclass(frozen=True)
class LabelledCaption:
    text: str
    medical: bool
    held_out: bool


def _assets() -> Path:
    return Path(__file__).parent / "assets"


def shipped_labels_path() -> Path:
    return _assets() / "medical_captions.jsonl"


def load_labelled(paths: Sequence[str | Path] = ()) -> list[LabelledCaption]:
    """Labelled captions from JSONL files (the shipped set when none are given); see the module doc."""
    examples = []
    for path in paths or [shipped_labels_path()]:
        path = Path(path)
        if not path.is_file():
            raise TextProbeError(f"{path}: no such labels file")
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                text, label = row["text"], row["label"]
            except (json.JSONDecodeError, KeyError, TypeError) as exc:
                raise TextProbeError(f"{path}:{number}: expected JSON with 'text' and 'label' ({exc})") from None
            if label == "ambiguous":
                continue
            if label not in LABELS:
                raise TextProbeError(f"{path}:{number}: label {label!r} is not medical, non_medical or ambiguous")
            examples.append(LabelledCaption(str(text), LABELS[label], row.get("split") == "test"))
    return examples


def precision_recall(predicted: Sequence[bool], labels: Sequence[bool]) -> dict[str, Any]:
    """Precision and recall of the medical class, with Wilson 95% intervals and the counts."""
    from scipy.stats import binomtest

    predicted, labels = np.asarray(predicted, bool), np.asarray(labels, bool)
    tp, fp, fn = int((predicted & labels).sum()), int((predicted & ~labels).sum()), int((~predicted & labels).sum())

    def rate(hits: int, total: int) -> tuple[float | None, list[float] | None]:
        if total == 0:
            return None, None
        interval = binomtest(hits, total).proportion_ci(method="wilson")
        return round(hits / total, 4), [round(float(interval.low), 4), round(float(interval.high), 4)]

    precision, precision_ci = rate(tp, tp + fp)
    recall, recall_ci = rate(tp, tp + fn)
    return {
        "precision": precision,
        "precision_ci95": precision_ci,
        "recall": recall,
        "recall_ci95": recall_ci,
        "tp": tp,
        "fp": fp,
        "fn": fn,
        "n": int(len(labels)),
    }


@dataclass
class TextProbe:
    """A fitted probe: p(medical) = sigmoid(embedding · coef + intercept)."""

    encoder: str | None
    coef: np.ndarray
    intercept: float
    threshold: float
    meta: dict[str, Any]

    def predict_proba(self, texts: list[str]) -> np.ndarray:
        from medvl.curate.embed import make_text_embedder

        if not texts:
            return np.zeros(0, np.float32)
        _, embed = make_text_embedder(self.encoder)
        return 1.0 / (1.0 + np.exp(-(embed(texts) @ self.coef + self.intercept)))

    @classmethod
    def load(cls, where: str | Path) -> "TextProbe":
        path = _assets() / "medical_text_probe.json" if str(where) == "builtin" else Path(where) / PROBE_FILE
        if not path.is_file():
            raise TextProbeError(
                f"{where} is not a text-filter folder (no {PROBE_FILE}); make one with "
                "`medvl curate train-text-filter`, or use 'builtin'"
            )
        meta = json.loads(path.read_text(encoding="utf-8"))
        return cls(meta["encoder"], np.asarray(meta["coef"], np.float32), float(meta["intercept"]),
                   float(meta["threshold"]), meta)


def train_text_probe(
    examples: Sequence[LabelledCaption],
    out_dir: str | Path,
    *,
    encoder: str | None = None,
    target_recall: float = 0.98,
    c: float | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Fit, pick the operating point on the training captions, score the held-out ones, save; see module doc."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict

    from medvl.curate.embed import make_text_embedder

    train = [e for e in examples if not e.held_out]
    held_out = [e for e in examples if e.held_out]
    labels = np.asarray([e.medical for e in train])
    if labels.all() or not labels.any() or min(labels.sum(), (~labels).sum()) < 5:
        raise TextProbeError("train-text-filter needs at least 5 medical and 5 non_medical training captions")
    name, embed = make_text_embedder(encoder)
    features = embed([e.text for e in train])
    folds = StratifiedKFold(5, shuffle=True, random_state=seed)

    def operating_point(strength: float) -> tuple[float, float, np.ndarray]:
        """(cross-validated precision at the target recall, threshold, cross-validated scores)."""
        probe = LogisticRegression(C=strength, max_iter=5000, class_weight="balanced")
        scores = cross_val_predict(probe, features, labels, cv=folds, method="predict_proba")[:, 1]
        medical_scores = np.sort(scores[labels])
        threshold = float(medical_scores[int(np.floor((1 - target_recall) * len(medical_scores)))])
        return precision_recall(scores >= threshold, labels)["precision"] or 0.0, threshold, scores

    searched = {strength: operating_point(strength) for strength in ([c] if c is not None else C_GRID)}
    c = max(searched, key=lambda strength: searched[strength][0])
    _, threshold, cv_scores = searched[c]
    probe = LogisticRegression(C=c, max_iter=5000, class_weight="balanced").fit(features, labels)
    result: dict[str, Any] = {
        "encoder": encoder,
        "encoder_name": name,
        "coef": [round(float(w), 6) for w in probe.coef_[0]],
        "intercept": float(probe.intercept_[0]),
        "threshold": round(threshold, 6),
        "target_recall": target_recall,
        "C": c,
        "C_searched": {str(k): round(v[0], 4) for k, v in searched.items()},
        "n_train": len(train),
        "n_held_out": len(held_out),
        "cross_validated": precision_recall(cv_scores >= threshold, labels),
    }
    if held_out:
        scores = 1.0 / (1.0 + np.exp(-(embed([e.text for e in held_out]) @ probe.coef_[0] + probe.intercept_[0])))
        result["held_out"] = precision_recall(scores >= threshold, [e.medical for e in held_out])
    folder = Path(out_dir)
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_json(folder / PROBE_FILE, result)
    return result
