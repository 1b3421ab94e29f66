"""The models a curate config names (`filter.image.classifier`, `filter.medical_text.model`) are read
before any stage runs: a folder that is not one, a truncated or foreign `probe.joblib`, a
`classifier.json` or `text_filter.json` without its keys is one `error:` line naming the file and the
command that makes it again, exit 2, and no output folder. Before, the prepare tasks met them: datatrove's
own ERROR line (or a traceback) came first, and the output folder was started."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import joblib
import pytest
import yaml
from PIL import Image

from medvl.curate.classifier import META_FILE, PROBE_FILE, train_classifier


@pytest.fixture
def classifier(tmp_path: Path, texture) -> Path:
    """A classifier trained in a second (builtin encoder): textures are medical, flat colours are not."""
    examples = [(texture(i), True) for i in range(4)]
    examples += [(Image.new("RGB", (64, 64), colour), False) for colour in ("white", "red", "navy", "black")]
    train_classifier(examples, tmp_path / "clf", val_fraction=0)
    return tmp_path / "clf"


def _meta(folder: Path, change: Callable[[dict], None]) -> None:
    meta = json.loads((folder / META_FILE).read_text())
    change(meta)
    (folder / META_FILE).write_text(json.dumps(meta))


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:200])


BROKEN_CLASSIFIERS = {  # how the folder is spoilt, the file the message names, what it says
    "empty folder": (lambda f: [p.unlink() for p in f.iterdir()], "", f"is not a classifier folder (no {META_FILE})"),
    "truncated probe": (lambda f: _truncate(f / PROBE_FILE), PROBE_FILE, "not a readable probe"),
    "probe of another object": (lambda f: joblib.dump({"weights": [1, 2]}, f / PROBE_FILE), PROBE_FILE,
                                "holds a dict, not a two-class probe"),
    "probe missing": (lambda f: (f / PROBE_FILE).unlink(), PROBE_FILE, "missing beside classifier.json"),
    "metadata without threshold": (lambda f: _meta(f, lambda m: m.pop("threshold")), META_FILE, "no 'threshold'"),
    "metadata of wrong types": (lambda f: _meta(f, lambda m: m.update(dim="300", encoder=None)), META_FILE,
                                "'encoder' is null, not a string; 'dim' is \"300\", not an integer"),
    "dim the probe was not fitted on": (lambda f: _meta(f, lambda m: m.update(dim=12)), PROBE_FILE,
                                        "not a two-class probe fitted on 12-number embeddings"),
    "metadata not JSON": (lambda f: (f / META_FILE).write_text("{encoder: builtin"), META_FILE, "not valid JSON"),
    "unknown encoder": (lambda f: _meta(f, lambda m: m.update(encoder="clip")), META_FILE, "unknown encoder 'clip'"),
}


def _config(tmp_path: Path, corpus: Path) -> Path:
    config = tmp_path / "curate.yaml"
    config.write_text(yaml.safe_dump({"sources": [{"format": "pmc_jsonl", "path": str(corpus / "figures.jsonl")}],
                                      "dedup": {"semantic": {"model": "hashing"}}}))
    return config


def _refused_before_the_run(outcome, out: Path, *fragments: str) -> str:
    """Exit 2, one `error:` line holding `fragments`, no traceback or datatrove log line, no output folder."""
    lines = [line for line in outcome.err.splitlines() if line.strip()]
    assert outcome.code == 2 and "Traceback" not in outcome.err, (outcome.code, outcome.err)
    assert len(lines) == 1 and lines[0].startswith("error: "), outcome.err  # no datatrove `| ERROR |` line before
    assert all(fragment in lines[0] for fragment in fragments), lines[0]
    assert not out.exists(), sorted(out.rglob("*"))
    return lines[0]


@pytest.mark.parametrize("case", list(BROKEN_CLASSIFIERS))
def test_a_classifier_that_cannot_be_read_stops_the_run_before_it_starts(case, classifier, corpus, tmp_path, medvl):
    spoil, file, message = BROKEN_CLASSIFIERS[case]
    folder = classifier
    spoil(folder)
    out = tmp_path / "runs" / "out"
    outcome = medvl("curate", "run", _config(tmp_path, corpus), "--out", out, f"filter.image.classifier={folder}")
    line = _refused_before_the_run(outcome, tmp_path / "runs", "filter.image.classifier: ", str(folder / file), message)
    assert "train-classifier" in line  # the command that makes it (again)


def test_estimate_reads_the_classifier_before_it_starts_too(classifier, corpus, tmp_path, medvl):
    folder = classifier
    _truncate(folder / PROBE_FILE)
    outcome = medvl("curate", "estimate", _config(tmp_path, corpus), "--out", tmp_path / "out",
                    f"filter.image.classifier={folder}")
    _refused_before_the_run(outcome, tmp_path / "out", f"{folder / PROBE_FILE}: not a readable probe")


def test_a_sound_classifier_reads_back_as_trained(classifier):
    from medvl.curate.classifier import read_classifier

    probe, meta = read_classifier(classifier)
    assert meta["encoder"] == "builtin" and probe.n_features_in_ == meta["dim"] and list(probe.classes_) == [0, 1]


BROKEN_TEXT_FILTERS = {  # what text_filter.json holds, what the message says
    "no text_filter.json": (None, "is not a text-filter folder (no text_filter.json)"),
    "not JSON": ("{coef: [", "not valid JSON"),
    "a list": ("[1, 2]", "text_filter.json: a list, not an object"),
    "keys missing or of the wrong type": (
        {"encoder": None, "coef": "0.1 0.2", "threshold": True, "features": "embedding"},
        "'coef' is \"0.1 0.2\", not a list; no 'intercept'; 'threshold' is true, not a number"),
    "unknown features": ({"encoder": None, "coef": [0.1], "intercept": 0, "threshold": 0.5, "features": "words"},
                         "'features' is 'words', not one of"),
    "vocabulary features without the vocabulary": (
        {"encoder": None, "coef": [0.1], "intercept": 0, "threshold": 0.5, "features": "embedding+vocabulary",
         "vocabulary_coef": {"log1p_medical_terms": 1.0}},
        "no 'vocabulary'"),
    "lm features with a broken lm part": (
        {"encoder": None, "coef": [0.1], "intercept": 0, "threshold": 0.5, "features": "lm+embedding+vocabulary",
         "lm": {"spec": "offline:smollm2", "layer": "8"}, "lm_coef": [0.1], "vocabulary": {"path": None, "sha256": "0"},
         "vocabulary_coef": {"log1p_medical_terms": 1.0, "log1p_words": 0.5}},
        "text_filter.json 'lm': 'layer' is \"8\", not an integer; no 'max_tokens'"),
}


@pytest.mark.parametrize("case", list(BROKEN_TEXT_FILTERS))
def test_a_text_filter_that_cannot_be_read_stops_the_run_before_it_starts(case, corpus, tmp_path, medvl):
    content, message = BROKEN_TEXT_FILTERS[case]
    folder = tmp_path / "text-filter"
    folder.mkdir()
    if content is not None:
        (folder / "text_filter.json").write_text(content if isinstance(content, str) else json.dumps(content))
    out = tmp_path / "out"
    outcome = medvl("curate", "run", _config(tmp_path, corpus), "--out", out, "filter.medical_text.enabled=true",
                    f"filter.medical_text.model={folder}")
    line = _refused_before_the_run(outcome, out, "filter.medical_text.model: ", str(folder), message)
    assert "train-text-filter" in line


def test_a_disabled_filter_is_not_read(corpus, tmp_path, medvl, monkeypatch):
    """Only the filters a run uses are checked: a broken model behind `enabled: false` does not stop it."""
    (tmp_path / "broken").mkdir()
    seen = []
    monkeypatch.setattr("medvl.curate.pipeline._run_stages", lambda *args: seen.append(args))
    outcome = medvl("curate", "run", _config(tmp_path, corpus), "--out", tmp_path / "out",
                    f"filter.medical_text.model={tmp_path / 'broken'}", "--until", "prepare")
    assert outcome.code == 0 and len(seen) == 1, outcome.err


def test_an_encoder_folder_that_is_not_there_is_named(tmp_path):
    """hf:/medvl: encoders name a local folder: one that is gone is a ClassifierError, not the loader's OSError."""
    from medvl.curate.classifier import ClassifierError, make_embedder

    for spec in (f"hf:{tmp_path / 'gone'}", f"medvl:{tmp_path / 'gone'}"):
        with pytest.raises(ClassifierError, match="gone is not a folder; give a local model folder"):
            make_embedder(spec)
