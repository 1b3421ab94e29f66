"""The learned medical-text filter: a linear probe on all-MiniLM-L6-v2 caption embeddings, optionally
with two vocabulary features beside them.

- `load_labelled(paths)` reads labelled captions: JSONL with `text` and `label` (`medical`,
  `non_medical`; `ambiguous` lines are skipped), an optional `split` (`test` lines are held out) and
  an optional `pmcid` (the article: its captions stay in one cross-validation fold).
  The shipped set is `assets/medical_captions.jsonl` (real PMC captions from ROCO, hand labelled,
  CC BY / CC0 only; `assets/README.md` has the provenance, the labelling rules and the split).
- Features (`features=`): `lm+embedding+vocabulary` (the default): a causal LM's view of the
  caption (`medvl.curate.embed.make_lm_embedder`: SmolLM2-135M cut to its first 8 decoder layers,
  its output averaged over tokens), the caption embedding and `VOCABULARY_FEATURES`, log(1 + distinct terms
  of the medical vocabulary, `medvl.curate.vocab`) and log(1 + words), each standardised;
  `embedding+vocabulary`: the embedding and the vocabulary features, scaled by a weight chosen with
  `C`; or `embedding`, the caption embedding alone. The default and the LM layer were chosen by
  cross-validation on the shipped set's train split (docs/curation.md).
- `train_text_probe(examples, out_dir)` fits a scikit-learn logistic regression (balanced classes)
  on the training captions. Every choice is made by cross-validation on them alone (5 folds grouped
  by article, repeated `CV_REPEATS` times, out-of-fold logits averaged): the regularisation `C` (of
  `C_GRID`, or `STANDARDISED_C_GRID` for standardised features) and the vocabulary weight (of
  `VOCABULARY_WEIGHTS`, for `embedding+vocabulary`) with the best cross-validated
  precision at the target recall, and the operating point, the highest threshold whose
  cross-validated recall reaches `target_recall`. The held-out captions are scored once, at the end,
  with that threshold. It saves `text_filter.json` — encoder, weights, the vocabulary's path and
  sha256, threshold, cross-validated and held-out precision/recall — plain JSON, no pickle (a
  standardisation is folded into the weights, so the probe stays one linear function of the features).
- `TextProbe.load(folder or "builtin")` → `predict_proba(texts)`; "builtin" is the probe shipped in
  `assets/medical_text_probe.json`, trained on the shipped set's train split. A probe whose
  vocabulary file changed since training refuses to load (retrain it), and so does a file that is
  not JSON or lacks a key its features need (one line naming it; `medvl curate run` loads the
  configured probe before any stage runs).
- `precision_recall(predicted, labels)` → counts, precision and recall with Wilson 95% intervals.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from medvl.curate.vocab import Vocabulary, default_vocabulary_path, load_vocabulary, tokenize
from medvl.errors import UserError
from medvl.io.files import atomic_write_json, ensure_folder
from medvl.io.jsonl import check_json_fields, read_json_object

__all__ = [
    "PROBE_FILE",
    "FEATURE_SETS",
    "VOCABULARY_FEATURES",
    "LabelledCaption",
    "shipped_labels_path",
    "load_labelled",
    "precision_recall",
    "vocabulary_features",
    "cross_validation_folds",
    "TextProbe",
    "train_text_probe",
]

PROBE_FILE = "text_filter.json"
LABELS = {"medical": True, "non_medical": False}
FEATURE_SETS = ("lm+embedding+vocabulary", "embedding+vocabulary", "embedding")
VOCABULARY_FEATURES = ("log1p_medical_terms", "log1p_words")
C_GRID = (0.3, 1.0, 3.0, 10.0, 30.0)
VOCABULARY_WEIGHTS = (0.25, 0.5, 1.0)
STANDARDISED_C_GRID = (0.003, 0.01, 0.03, 0.1)
LM_DEFAULT, LM_LAYER, LM_MAX_TOKENS = "offline:smollm2", 8, 256
CV_FOLDS, CV_REPEATS = 5, 3
# what `TextProbe.load` wants of a text_filter.json: its keys, and those of the parts its features use
_SAVED_WHAT = "the text filter `medvl curate train-text-filter` saves"
_SAVED_FIELDS: dict[str, Any] = {"encoder": (str, type(None)), "coef": list, "intercept": float, "threshold": float}
_SAVED_PARTS: dict[str, dict[str, Any]] = {
    "lm": {"spec": str, "layer": int, "max_tokens": int},
    "vocabulary": {"path": (str, type(None)), "sha256": str},
    "vocabulary_coef": dict.fromkeys(VOCABULARY_FEATURES, float),
}


class TextProbeError(UserError, ValueError):
    """Labelled captions or a probe folder that cannot be used; the message says which and why."""


@dataclass(frozen=True)
class LabelledCaption:
    text: str
    medical: bool
    held_out: bool
    group: str  # the article (`pmcid`), else the text: captions of one group share a fold


def _assets() -> Path:
    return Path(__file__).parent / "assets"


def shipped_labels_path() -> Path:
    return _assets() / "medical_captions.jsonl"


def load_labelled(paths: Sequence[str | Path] = ()) -> list[LabelledCaption]:
    """Labelled captions from JSONL files (the shipped set when none are given); see the module doc."""
    examples = []
    for path in paths or [shipped_labels_path()]:
        path = Path(path)
        if path.is_dir():
            raise TextProbeError(f"{path} is a folder; give the labelled captions JSONL itself")
        if not path.is_file():
            raise TextProbeError(f"{path}: no such labels file")
        try:
            text = path.read_text(encoding="utf-8-sig")
        except UnicodeDecodeError as exc:
            raise TextProbeError(f"{path}: not UTF-8 text (byte {exc.start}); save it as UTF-8") from None
        if not text.strip():
            raise TextProbeError(f"{path}: empty; expected JSON lines with 'text' and 'label'")
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                text, label = row["text"], row["label"]
            except (json.JSONDecodeError, KeyError, TypeError) as exc:
                raise TextProbeError(f"{path}:{number}: expected JSON with 'text' and 'label' ({exc})") from None
            if not isinstance(text, str) or not text.strip():
                raise TextProbeError(f"{path}:{number}: 'text' must be the caption, a non-empty string (got {text!r})")
            if label == "ambiguous":
                continue
            if label not in LABELS:
                raise TextProbeError(f"{path}:{number}: label {label!r} is not medical, non_medical or ambiguous")
            group = str(row.get("pmcid") or text)
            examples.append(LabelledCaption(str(text), LABELS[label], row.get("split") == "test", group))
    return examples


def vocabulary_features(texts: Sequence[str], vocabulary: Vocabulary) -> np.ndarray:
    """`VOCABULARY_FEATURES` of each text: log(1 + distinct medical terms), log(1 + words)."""
    return np.asarray([[np.log1p(vocabulary.count(t)), np.log1p(len(tokenize(t)))] for t in texts], np.float32)


def _vocabulary(path: str | None) -> tuple[Vocabulary, dict[str, Any]]:
    """The vocabulary (None: the shipped list) and what the probe records of it: path and sha256."""
    vocabulary = load_vocabulary(path)  # a missing, non-UTF-8 or empty file: a VocabularyError naming it
    file = Path(path) if path else default_vocabulary_path()
    sha256 = hashlib.sha256(file.read_bytes()).hexdigest()
    return vocabulary, {"path": str(file.resolve()) if path else None, "sha256": sha256}


def cross_validation_folds(labels: np.ndarray, groups: Sequence[str], repeat: int, seed: int) -> list[Any]:
    """Stratified 5-fold splits (train, test indices) that never split a group (an article)."""
    from sklearn.model_selection import StratifiedGroupKFold

    splitter = StratifiedGroupKFold(CV_FOLDS, shuffle=True, random_state=seed + repeat)
    return list(splitter.split(np.zeros(len(labels)), labels, list(groups)))


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


def _sigmoid(logits: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-logits))


@dataclass
class TextProbe:
    """A fitted probe: p(medical) = sigmoid(embedding · coef + vocabulary features · vocabulary_coef + intercept)."""

    encoder: str | None
    coef: np.ndarray
    intercept: float
    threshold: float
    meta: dict[str, Any]
    vocabulary: Vocabulary | None = None  # set when the probe uses the vocabulary features
    vocabulary_coef: np.ndarray | None = None
    lm: dict[str, Any] | None = None  # make_lm_embedder's arguments, when the probe uses the LM features
    lm_coef: np.ndarray | None = None

    def predict_proba(self, texts: list[str]) -> np.ndarray:
        from medvl.curate.embed import make_lm_embedder, make_text_embedder

        if not texts:
            return np.zeros(0, np.float32)
        _, embed = make_text_embedder(self.encoder)
        logits = embed(texts) @ self.coef + self.intercept
        if self.vocabulary is not None and self.vocabulary_coef is not None:
            logits = logits + vocabulary_features(texts, self.vocabulary) @ self.vocabulary_coef
        if self.lm is not None and self.lm_coef is not None:
            logits = logits + make_lm_embedder(**self.lm)(texts) @ self.lm_coef
        return _sigmoid(logits)

    @classmethod
    def from_meta(cls, meta: dict[str, Any], where: str | Path = "the probe") -> "TextProbe":
        vocabulary = vocabulary_coef = lm_coef = None
        if meta.get("features", "embedding").endswith("+vocabulary"):
            vocabulary, identity = _vocabulary(meta["vocabulary"]["path"])
            if identity["sha256"] != meta["vocabulary"]["sha256"]:
                raise TextProbeError(
                    f"{where}: the vocabulary {identity['path'] or 'shipped with medvl'} changed since the probe was "
                    "trained; retrain it with `medvl curate train-text-filter`"
                )
            vocabulary_coef = np.asarray([meta["vocabulary_coef"][name] for name in VOCABULARY_FEATURES], np.float32)
        if meta.get("lm"):
            lm_coef = np.asarray(meta["lm_coef"], np.float32)
        return cls(meta["encoder"], np.asarray(meta["coef"], np.float32), float(meta["intercept"]),
                   float(meta["threshold"]), meta, vocabulary, vocabulary_coef, meta.get("lm"), lm_coef)

    @classmethod
    def load(cls, where: str | Path) -> "TextProbe":
        """The probe in the folder `where` (or the shipped one, "builtin"), its file checked: one that is not
        JSON, or has a key missing or of the wrong type, is a `UserError` naming it and the command that
        makes it again."""
        path = _assets() / "medical_text_probe.json" if str(where) == "builtin" else Path(where) / PROBE_FILE
        if not path.is_file():
            raise TextProbeError(
                f"{where} is not a text-filter folder (no {PROBE_FILE}); make one with "
                "`medvl curate train-text-filter`, or use 'builtin'"
            )
        fix = f"make it again with `medvl curate train-text-filter [LABELS...] --out {where}`, or use 'builtin'"
        meta = read_json_object(path, _SAVED_WHAT, fix, _SAVED_FIELDS)
        features = meta.get("features", "embedding")
        if features not in FEATURE_SETS:
            raise TextProbeError(f"{path}: 'features' is {features!r}, not one of {', '.join(FEATURE_SETS)}; {fix}")
        parts = (["lm"] if features.startswith("lm+") else []) + (
            ["vocabulary", "vocabulary_coef"] if features.endswith("+vocabulary") else [])
        check_json_fields(meta, str(path), _SAVED_WHAT, fix, {part: dict for part in parts}
                          | ({"lm_coef": list} if "lm" in parts else {}))
        for part in parts:
            check_json_fields(meta[part], f"{path} '{part}'", _SAVED_WHAT, fix, _SAVED_PARTS[part])
        return cls.from_meta(meta, path)


def _threshold_at_recall(probabilities: np.ndarray, labels: np.ndarray, target_recall: float) -> float:
    """The highest threshold (rounded down to 6 digits) that keeps `target_recall` of the medical captions."""
    medical = np.sort(probabilities[labels])
    return float(np.floor(medical[int(np.floor((1 - target_recall) * len(medical)))] * 1e6) / 1e6)


def train_text_probe(
    examples: Sequence[LabelledCaption],
    out_dir: str | Path,
    *,
    encoder: str | None = None,
    features: str = "lm+embedding+vocabulary",
    vocabulary: str | None = None,
    lm: str = LM_DEFAULT,
    lm_layer: int = LM_LAYER,
    target_recall: float = 0.98,
    c: float | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Fit, pick every setting and the operating point on the training captions by cross-validation,
    score the held-out ones once, save; see the module doc."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from medvl.curate.embed import make_lm_embedder, make_text_embedder

    if features not in FEATURE_SETS:
        raise TextProbeError(f"features {features!r} is not one of {', '.join(FEATURE_SETS)}")
    if not 0 < target_recall <= 1:
        raise TextProbeError(f"--target-recall {target_recall}: give the share of medical captions to keep, "
                             "above 0 and at most 1 (default 0.98)")
    if c is not None and c <= 0:
        raise TextProbeError(f"--c {c}: the inverse regularisation strength must be above 0 (or leave it out to "
                             "choose it by cross-validation)")
    if vocabulary and not features.endswith("+vocabulary"):
        raise TextProbeError(f"--vocabulary {vocabulary} is read only by the '+vocabulary' features, not {features!r}")
    train = [e for e in examples if not e.held_out]
    held_out = [e for e in examples if e.held_out]
    _check_folds(train)
    vocab, identity = _vocabulary(vocabulary) if features.endswith("+vocabulary") else (None, None)
    folder = ensure_folder(out_dir)  # before the embedding and the cross-validation, not after
    lm_args = {"spec": lm, "layer": lm_layer, "max_tokens": LM_MAX_TOKENS} if features.startswith("lm+") else None
    lm_embed = make_lm_embedder(**lm_args) if lm_args else None  # a bad --lm fails before any embedding
    name, embed = make_text_embedder(encoder)
    texts = [e.text for e in train]
    embeddings = embed(texts)
    extra = vocabulary_features(texts, vocab) if vocab is not None else np.zeros((len(train), 0), np.float32)
    lm_features = lm_embed(texts) if lm_embed else np.zeros((len(train), 0), np.float32)
    labels = np.asarray([e.medical for e in train])
    standardised = lm_args is not None  # LM hidden states are far from unit scale; the embedding is unit norm
    weighted = vocab is not None and not standardised
    folds = [cross_validation_folds(labels, [e.group for e in train], r, seed) for r in range(CV_REPEATS)]

    def model(strength: float) -> Any:
        regression = LogisticRegression(C=strength, max_iter=5000, class_weight="balanced")
        return make_pipeline(StandardScaler(), regression) if standardised else regression

    def design(weight: float) -> np.ndarray:
        return np.hstack([lm_features, embeddings, weight * extra])

    def cross_validated(strength: float, weight: float) -> tuple[float, float, np.ndarray]:
        """(cross-validated precision at the target recall, threshold, out-of-fold p(medical))."""
        matrix = design(weight)
        logits = np.zeros(len(labels))
        for splits in folds:
            for fit, score in splits:
                logits[score] += model(strength).fit(matrix[fit], labels[fit]).decision_function(matrix[score])
        probabilities = _sigmoid(logits / CV_REPEATS)
        threshold = _threshold_at_recall(probabilities, labels, target_recall)
        return precision_recall(probabilities >= threshold, labels)["precision"] or 0.0, threshold, probabilities

    strengths = [c] if c is not None else (STANDARDISED_C_GRID if standardised else C_GRID)
    grid = [(s, w) for s in strengths for w in (VOCABULARY_WEIGHTS if weighted else (1.0,))]
    searched = {setting: cross_validated(*setting) for setting in grid}
    c, weight = max(searched, key=lambda setting: searched[setting][0])
    _, threshold, cv_probabilities = searched[(c, weight)]
    coef, intercept = _raw_weights(model(c).fit(design(weight), labels))
    lm_coef, coef = coef[: lm_features.shape[1]], coef[lm_features.shape[1]:]
    result: dict[str, Any] = {
        "encoder": encoder,
        "encoder_name": name,
        "features": features,
        "coef": [round(float(w), 6) for w in coef[: embeddings.shape[1]]],
        "intercept": intercept,
        "threshold": threshold,
        "target_recall": target_recall,
        "C": c,
        "cv": f"{CV_FOLDS}-fold grouped by article, {CV_REPEATS} repeats, training captions only",
        "searched": {
            f"C={s}" + (f" vocabulary_weight={w}" if weighted else ""): round(v[0], 4) for (s, w), v in searched.items()
        },
        "n_train": len(train),
        "n_held_out": len(held_out),
        "cross_validated": precision_recall(cv_probabilities >= threshold, labels),
    }
    if lm_args:
        result["lm"] = lm_args
        result["lm_coef"] = [round(float(w), 7) for w in lm_coef]
    if vocab is not None:
        if weighted:
            result["vocabulary_weight"] = weight
        result["vocabulary"] = identity
        vocabulary_coef = coef[embeddings.shape[1]:] * weight  # in the features' own units
        result["vocabulary_coef"] = {n: round(float(w), 6) for n, w in zip(VOCABULARY_FEATURES, vocabulary_coef)}
    if held_out:  # scored once, with the saved probe and the threshold chosen above
        probe = TextProbe.from_meta(result)
        scores = probe.predict_proba([e.text for e in held_out])
        result["held_out"] = precision_recall(scores >= threshold, [e.medical for e in held_out])
    atomic_write_json(folder / PROBE_FILE, result)
    return result


def _check_folds(train: Sequence[LabelledCaption]) -> None:
    """Each class needs `CV_FOLDS` training captions from as many articles, or a cross-validation fold
    would be fitted on one class (the counts and the fix in the message)."""
    for medical, name in ((True, "medical"), (False, "non_medical")):
        captions = [e for e in train if e.medical == medical]
        articles = len({e.group for e in captions})
        if articles < CV_FOLDS:
            raise TextProbeError(
                f"train-text-filter needs {name} training captions from at least {CV_FOLDS} articles for its "
                f"{CV_FOLDS}-fold cross-validation; got {len(captions)} from {articles} (ambiguous and split=test "
                "lines do not count; captions sharing a pmcid are one article): add labelled captions"
            )


def _raw_weights(fitted: Any) -> tuple[np.ndarray, float]:
    """(coefficients, intercept) of a fitted regression on the raw features, a standardisation folded in."""
    if not hasattr(fitted, "steps"):  # a bare regression
        return fitted.coef_[0], float(fitted.intercept_[0])
    scaler, regression = fitted[0], fitted[-1]
    coef = regression.coef_[0] / scaler.scale_
    return coef, float(regression.intercept_[0]) - float(coef @ scaler.mean_)
