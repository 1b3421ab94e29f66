"""The learned medical-text filter: training picks its operating point on training captions only,
the held-out figures are what the report prints, and the filter rejects with p(medical)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from medvl.cli import build_app
from medvl.curate.filters.medical_text import MedicalTextConfig, MedicalTextFilter
from medvl.curate.ingest_document import make_document
from medvl.curate.report import text_filter_quality
from medvl.curate.embed import make_text_embedder
from medvl.curate.text_probe import (
    TextProbe,
    TextProbeError,
    cross_validation_folds,
    load_labelled,
    precision_recall,
    shipped_labels_path,
    train_text_probe,
    vocabulary_features,
)
from medvl.curate.vocab import load_vocabulary

MEDICAL = ["Axial CT of the {} showing a hypodense lesion", "MRI of the {} with contrast enhancement",
           "Histology of the {} biopsy stained with H&E", "Ultrasound of the {} showing a cyst"]
OTHER = ["TEM image of {} nanoparticles on a carbon grid", "Map of {} sampling sites in the river basin",
         "Wing venation of a {} moth specimen", "Stress simulation of a {} steel beam under load"]
WORDS = ["liver", "kidney", "spleen", "thyroid", "pancreas", "brain", "gold", "silver", "oak", "copper"]


def write_labels(path: Path) -> Path:
    rows = []
    for i, word in enumerate(WORDS):
        for j, template in enumerate(MEDICAL):
            rows.append({"text": template.format(word), "label": "medical", "split": "test" if (i + j) % 4 == 0 else "train"})
        for j, template in enumerate(OTHER):
            rows.append({"text": template.format(word), "label": "non_medical", "split": "test" if (i + j) % 4 == 0 else "train"})
    rows.append({"text": "Figure 4", "label": "ambiguous"})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_shipped_labelled_set_is_split_by_article():
    rows = [json.loads(line) for line in shipped_labels_path().read_text().splitlines()]
    articles = {}
    for row in rows:
        articles.setdefault(row["pmcid"], set()).add(row["split"])
        assert row["licence"] in ("CC BY", "CC0") and row["label"] in ("medical", "non_medical", "ambiguous")
    assert all(len(splits) == 1 for splits in articles.values())
    examples = load_labelled()
    assert sum(e.held_out for e in examples) == 319 and len(examples) == 1982  # ambiguous ones left out


def test_labels_errors_are_one_clear_line(tmp_path: Path):
    (tmp_path / "bad.jsonl").write_text('{"text": "x", "label": "maybe"}\n')
    with pytest.raises(TextProbeError, match="bad.jsonl:1: label 'maybe'"):
        load_labelled([tmp_path / "bad.jsonl"])
    with pytest.raises(TextProbeError, match="no such labels file"):
        load_labelled([tmp_path / "missing.jsonl"])
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(TextProbeError, match="empty.jsonl: empty; expected JSON lines"):
        load_labelled([tmp_path / "empty.jsonl"])


def test_a_caption_that_is_not_text_is_named(tmp_path: Path):
    (tmp_path / "numbers.jsonl").write_text('{"text": 5, "label": "medical"}\n')
    with pytest.raises(TextProbeError, match="numbers.jsonl:1: 'text' must be the caption"):
        load_labelled([tmp_path / "numbers.jsonl"])


def test_too_few_articles_for_the_folds_is_refused_before_any_output(tmp_path: Path, medvl):
    """Captions of one article (one pmcid) cannot be split into 5 grouped folds: one line, exit 2, no folder."""
    rows = [json.loads(line) for line in write_labels(tmp_path / "labels.jsonl").read_text().splitlines()]
    (tmp_path / "one_article.jsonl").write_text("".join(json.dumps(dict(r, pmcid="PMC1")) + "\n" for r in rows))
    outcome = medvl("curate", "train-text-filter", tmp_path / "one_article.jsonl", "--out", tmp_path / "probe",
                    "--features", "embedding", "--encoder", "hashing")
    assert outcome.code == 2 and "from at least 5 articles" in outcome.err and "got 30 from 1" in outcome.err
    assert "Traceback" not in outcome.err and not (tmp_path / "probe").exists()


def test_an_lm_folder_that_cannot_serve_is_one_clear_line(tmp_path: Path, tiny_lm: Path, tiny_model_dir: Path, medvl):
    """--lm naming a missing folder, a file, a LLaVA model, or --lm-layer past the LM's last layer (which
    transformers would fill with random layers) is refused before anything is embedded or written."""
    labels = write_labels(tmp_path / "labels.jsonl")
    (tmp_path / "empty").mkdir()
    cases = {
        str(tmp_path / "missing"): ("2", "is not a folder"),
        str(labels): ("2", "is not a folder"),
        str(tmp_path / "empty"): ("2", "has no config.json"),
        str(tiny_model_dir): ("2", "holds a llava model, not a causal LM"),
        str(tiny_lm): ("4", "--lm-layer 4: .* has 3 decoder layers; give a layer from 1 to 3"),
    }
    for lm, (layer, message) in cases.items():
        outcome = medvl("curate", "train-text-filter", labels, "--out", tmp_path / "probe", "--encoder", "hashing",
                        "--lm", lm, "--lm-layer", layer)
        assert outcome.code == 2 and re.search(message, outcome.err), (lm, outcome.err)
        assert len(outcome.err.strip().splitlines()) == 1 and not (tmp_path / "probe" / "text_filter.json").exists()


def test_settings_out_of_range_are_one_line_before_any_output(tmp_path: Path, medvl):
    """A target recall outside (0, 1] (1.5 trained a filter at an impossible operating point and exited 0), a C
    of 0 or below, a vocabulary the features do not read, or a caption encoder that is not a model folder."""
    labels = write_labels(tmp_path / "labels.jsonl")
    (tmp_path / "empty").mkdir()
    cases = [("--target-recall=1.5", "--target-recall 1.5"), ("--target-recall=0", "--target-recall 0.0"),
             ("--c=0", "--c 0.0: the inverse regularisation strength must be above 0"),
             (f"--vocabulary={labels}", "is read only by the '\\+vocabulary' features"),
             (f"--encoder={tmp_path / 'empty'}", "caption encoder .*empty cannot be loaded"),
             (f"--encoder={tmp_path / 'missing'}", "caption encoder .*missing is not a folder")]
    for flag, message in cases:
        outcome = medvl("curate", "train-text-filter", labels, "--out", tmp_path / "probe", "--features", "embedding",
                        *([] if flag.startswith("--encoder") else ["--encoder", "hashing"]), flag)
        assert outcome.code == 2 and re.search(message, outcome.err), (flag, outcome.err)
        assert "Traceback" not in outcome.err and not (tmp_path / "probe" / "text_filter.json").exists()


def test_precision_recall_counts_and_intervals():
    result = precision_recall([True, True, False, True], [True, False, True, True])
    assert (result["tp"], result["fp"], result["fn"]) == (2, 1, 1)
    assert result["precision"] == pytest.approx(2 / 3, abs=1e-4) and result["recall"] == pytest.approx(2 / 3, abs=1e-4)
    assert result["precision_ci95"][0] < 2 / 3 < result["precision_ci95"][1]


def test_train_text_filter_command_and_the_filter(tmp_path: Path, tiny_lm: Path):
    labels = write_labels(tmp_path / "labels.jsonl")
    out = tmp_path / "probe"
    result = CliRunner().invoke(build_app(), ["curate", "train-text-filter", str(labels), "--out", str(out),
                                              "--encoder", "hashing", "--lm", str(tiny_lm), "--lm-layer", "2"])
    assert result.exit_code == 0, result.output
    assert "held_out: precision" in result.output
    meta = json.loads((out / "text_filter.json").read_text())
    assert meta["features"] == "lm+embedding+vocabulary" and meta["lm"] == {"spec": str(tiny_lm), "layer": 2,
                                                                           "max_tokens": 256}
    assert meta["n_train"] == 60 and meta["n_held_out"] == 20 and meta["held_out"]["recall"] >= 0.9
    assert meta["cross_validated"]["recall"] >= 0.9  # the operating point is the CV one
    probe = TextProbe.load(out)
    scores = probe.predict_proba(["MRI of the spleen with contrast enhancement", "Map of gold sampling sites in the river basin"])
    assert scores[0] > probe.threshold > scores[1]
    medical_filter = MedicalTextFilter(MedicalTextConfig(enabled=True, model=str(out)))
    docs = [make_document(str(i), [], text, order=[0, 0, i], source="s") for i, text in
            enumerate(["Ultrasound of the thyroid showing a cyst", "Wing venation of a copper moth specimen"])]
    results = medical_filter.filter_batch(docs)
    assert results[0] is True and results[1] == (False, "not_medical_text")
    assert docs[1].metadata["reject_detail"].startswith("p(medical)=")


def test_every_choice_comes_from_the_training_captions_only(tmp_path: Path, tiny_lm: Path):
    examples = load_labelled([write_labels(tmp_path / "labels.jsonl")])
    flipped = [e if not e.held_out else type(e)(e.text, not e.medical, True, e.group) for e in examples]
    first = train_text_probe(examples, tmp_path / "a", encoder="hashing", lm=str(tiny_lm), lm_layer=2)
    second = train_text_probe(flipped, tmp_path / "b", encoder="hashing", lm=str(tiny_lm), lm_layer=2)
    for key in ("threshold", "C", "coef", "intercept", "searched", "cross_validated"):
        assert first[key] == second[key], key
    assert first["held_out"]["tp"] != second["held_out"]["tp"]  # the held-out captions were scored, not used
    assert first["cross_validated"]["recall"] >= first["target_recall"]


def test_cross_validation_folds_keep_an_article_together():
    labels = np.asarray([i % 3 != 0 for i in range(60)])
    groups = [f"PMC{i // 2}" for i in range(60)]  # two captions an article
    for repeat in range(2):
        for _, scored in cross_validation_folds(labels, groups, repeat, seed=0):
            articles = {groups[i] for i in scored}
            assert sum(groups.count(a) for a in articles) == len(scored)


def test_lm_features_are_a_padding_free_mean_of_the_cut_models_output(tiny_lm: Path):
    import torch
    from transformers import AutoModel, AutoTokenizer

    from medvl.curate.embed import make_lm_embedder

    texts = ["CT", "Axial contrast-enhanced CT of the abdomen showing a hypodense lesion in the right lobe"]
    together = make_lm_embedder(str(tiny_lm), 2)(texts)
    for text, row in zip(texts, together):  # padded beside a longer caption = alone
        assert make_lm_embedder(str(tiny_lm), 2)([text])[0] == pytest.approx(row, abs=1e-5)
    full, tokenizer = AutoModel.from_pretrained(tiny_lm), AutoTokenizer.from_pretrained(tiny_lm)
    with torch.inference_mode():  # 2 of the 3 layers are loaded: the full model's layer 2, its final norm applied
        hidden = full(**tokenizer([texts[1]], return_tensors="pt"), output_hidden_states=True).hidden_states[2]
        hidden = full.norm(hidden)
    assert together[1] == pytest.approx(hidden[0].mean(0).numpy(), abs=1e-5)
    assert np.abs(together[0] - together[1]).max() > 1e-3


def test_standardised_features_fold_into_one_linear_probe(tmp_path: Path, tiny_lm: Path):
    """The saved probe is the fitted scaler + regression, as one linear function of the raw features."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from medvl.curate.embed import make_lm_embedder
    from medvl.curate.vocab import load_vocabulary as shipped

    examples = load_labelled([write_labels(tmp_path / "labels.jsonl")])
    meta = train_text_probe(examples, tmp_path / "probe", encoder="hashing", lm=str(tiny_lm), lm_layer=2)
    assert meta["searched"].keys() == {"C=0.003", "C=0.01", "C=0.03", "C=0.1"}

    def features(texts: list[str]) -> np.ndarray:
        return np.hstack([make_lm_embedder(str(tiny_lm), 2)(texts), make_text_embedder("hashing")[1](texts),
                          vocabulary_features(texts, shipped(None))])

    train = [e for e in examples if not e.held_out]
    pipeline = make_pipeline(StandardScaler(), LogisticRegression(C=meta["C"], max_iter=5000, class_weight="balanced"))
    pipeline.fit(features([e.text for e in train]), [e.medical for e in train])
    texts = ["Coronal MRI of the knee", "Photograph of a copper roof", *[e.text for e in examples if e.held_out]]
    expected = pipeline.predict_proba(features(texts))[:, 1]
    assert TextProbe.load(tmp_path / "probe").predict_proba(texts) == pytest.approx(expected, abs=1e-4)


def test_hybrid_features_are_used_when_configured(tmp_path: Path):
    labels = write_labels(tmp_path / "labels.jsonl")
    terms = tmp_path / "terms.txt"
    terms.write_text("ct\nmri\nhistology\nultrasound\nbiopsy\ncyst\nlesion\n")
    out = tmp_path / "hybrid"
    result = CliRunner().invoke(build_app(), ["curate", "train-text-filter", str(labels), "--out", str(out), "--encoder",
                                              "hashing", "--features", "embedding+vocabulary", "--vocabulary", str(terms)])
    assert result.exit_code == 0, result.output
    probe = TextProbe.load(out)
    assert probe.meta["features"] == "embedding+vocabulary" and probe.meta["vocabulary"]["path"] == str(terms.resolve())
    assert "vocabulary_weight=" in next(iter(probe.meta["searched"]))
    texts = ["MRI of the spleen with contrast enhancement", "Map of gold sampling sites in the river basin"]
    _, embed = make_text_embedder("hashing")
    vocabulary = vocabulary_features(texts, load_vocabulary(str(terms)))
    assert vocabulary[0, 0] == pytest.approx(np.log1p(1)) and vocabulary[1, 0] == 0
    coef = np.asarray([probe.meta["vocabulary_coef"][name] for name in ("log1p_medical_terms", "log1p_words")])
    assert coef[0] != 0
    logits = embed(texts) @ probe.coef + vocabulary @ coef + probe.intercept
    assert probe.predict_proba(texts) == pytest.approx(1 / (1 + np.exp(-logits)), rel=1e-5)
    terms.write_text("ct\n")  # the probe's vocabulary changed: it refuses to load rather than drift
    with pytest.raises(TextProbeError, match="changed since the probe was trained"):
        TextProbe.load(out)
    with pytest.raises(TextProbeError, match="features 'words' is not one of"):
        train_text_probe(load_labelled([labels]), tmp_path / "x", encoder="hashing", features="words")


def test_builtin_probe_and_the_report_quality_table(corpus: Path, curate_config):
    meta = TextProbe.load("builtin").meta
    assert meta["features"] == "lm+embedding+vocabulary"  # train-text-filter's default, chosen by cross-validation
    assert meta["lm"] == {"spec": "offline:smollm2", "layer": 8, "max_tokens": 256}
    assert meta["n_held_out"] == 319 and meta["held_out"]["recall"] >= 0.9 and meta["held_out"]["precision"] >= 0.85
    assert meta["n_train"] == sum(not e.held_out for e in load_labelled())  # fitted on the set as shipped
    config = curate_config(corpus, "filter.medical_text.enabled=true")
    quality = text_filter_quality(config)
    assert quality["vocabulary"]["n"] == 319 and quality["vocabulary"]["precision"] >= 0.9
    assert quality["learned"]["precision"] == meta["held_out"]["precision"]
    with pytest.raises(TextProbeError, match="not a text-filter folder"):
        TextProbe.load(corpus)
