"""Text, licence and image filters and the filter registry: every rejection carries its reason;
survivors carry their signatures; a new filter is a class plus its config section."""

from __future__ import annotations

from pathlib import Path

import pytest

from medvl.curate.config import CurateConfig, SourceConfig
from medvl.curate.filters import (
    FILTERS,
    CurateFilter,
    FilterConfig,
    build_filters,
    filter_class,
    filter_names,
    reject,
)
from medvl.curate.filters.image import ImageFilter, ImageFilterConfig
from medvl.curate.filters.licence import LicenceFilter, LicenceFilterConfig
from medvl.curate.filters.text import TextFilter, TextFilterConfig
from medvl.curate.ingest import SourceReader
from medvl.curate.ingest_document import make_document
from medvl.curate.vocab import Vocabulary, VocabularyError, infer_modality, load_vocabulary
from medvl.registry import Registry


def test_vocabulary_counts_distinct_terms_with_phrases_and_plurals(tmp_path: Path):
    vocab = Vocabulary([["lesion"], ["lymph node"], ["ct", "ct scan"], ["pleural effusion"], ["kidney", "renal"]])
    assert vocab.find("CT scan showed lesions and a pleural effusion; lymph nodes and one lymph node.") == {
        "ct",
        "lesion",
        "pleural effusion",
        "lymph node",
    }
    assert vocab.count("Lesion, lesion, LESION.") == 1
    assert vocab.find("Renal cyst; kidney stones") == {"kidney"}  # a group counts once
    shipped = load_vocabulary()
    assert len(shipped) > 400
    assert shipped.count("Bar chart of the annual revenue of the company by quarter.") == 0
    assert shipped.count("Axial CT of the liver showing a hypodense lesion with rim enhancement.") >= 3
    custom = tmp_path / "terms.txt"
    custom.write_text("# comment\nwidget | gadget\n")
    assert load_vocabulary(str(custom)).find("a gadget and two widgets") == {"widget"}
    with pytest.raises(VocabularyError, match="nope.txt: no such vocabulary file"):
        load_vocabulary(str(tmp_path / "nope.txt"))


@pytest.mark.parametrize(
    "caption, expected",
    [
        # hyphens and slashes split words (ROCO captions the old tokeniser scored 0 or 1)
        ("Positron emission tomography-computed tomography scan", {"positron emission tomography", "computed tomography"}),
        ("MRI/CT fusion of the pelvis", {"magnetic resonance imaging", "computed tomography", "pelvis"}),
        # adjective forms fold onto the listed noun
        ("Fluoroscopic image of the arthroscope", {"fluoroscopy", "arthroscope"}),
        ("Histological section with necrotic and fibrotic areas", {"histology", "necrosis", "fibrosis"}),
        # Latin and Greek plurals
        ("Arteries, metastases, vertebrae and bronchi", {"artery", "metastasis", "vertebra", "bronchus"}),
        # folding never invents a term: "pass" is not PAS, "pets" is not PET; cells are not medical alone
        ("We pass the pets a cell of cells", set()),
        ("Solar wind source map: coronal plasma outflow", set()),
    ],
)
def test_shipped_vocabulary_on_the_issues_captions(caption: str, expected: set[str]):
    assert load_vocabulary().find(caption) == expected


@pytest.mark.parametrize(
    "caption, modality",
    [
        ("H&E stained section at 200x magnification", "histology"),
        ("Axial CT of the chest", "ct"),
        ("T2-weighted MRI of the brain", "mri"),
        ("Chest X-ray on admission", "x-ray"),
        ("Kaplan-Meier survival curve", "chart"),
        ("Photograph of the patient", "other"),
    ],
)
def test_infer_modality(caption: str, modality: str):
    assert infer_modality(caption) == modality


def _filter_text(doc, config: TextFilterConfig):
    return TextFilter(config).filter(doc)


def test_licence_filter_keeps_allowed_families_and_names_the_licence():
    docs = [
        make_document(str(i), [], "x", order=[0, 0, i], source="s", licence=licence)
        for i, licence in enumerate(["CC BY", "cc-by-nc-nd", "CC0", None, "https://creativecommons.org/licenses/by/4.0/"])
    ]
    assert [d.metadata["licence"] for d in docs] == [
        "LicenseRef-CC-BY", "LicenseRef-CC-BY-NC-ND", "CC0-1.0", "unknown", "CC-BY-4.0"
    ]
    licence_filter = LicenceFilter(LicenceFilterConfig(allow=["CC-BY", "CC0"]))
    results = [licence_filter.filter(d) for d in docs]
    assert results == [True, (False, "licence_not_allowed"), True, (False, "licence_not_allowed"), True]
    assert docs[1].metadata["reject_detail"].startswith("LicenseRef-CC-BY-NC-ND (given as 'cc-by-nc-nd')")
    assert not LicenceFilter.active(LicenceFilterConfig(), None)  # no allow list: not in the pipeline


class ShortCaptionConfig(FilterConfig):
    max_characters: int = 10


class ShortCaptionFilter(CurateFilter):
    """A throwaway filter registered by the test below: one class, one config section, one registry line
    (runs after the built-in filters: the default `cost`)."""

    name = "short caption filter"
    config_class = ShortCaptionConfig

    def filter(self, doc):
        return True if len(doc.text) <= self.config.max_characters else reject(doc, "caption_too_long_for_test")


@pytest.fixture
def short_filter():
    FILTERS.register("short", ShortCaptionFilter)
    yield
    FILTERS.unregister("short")


def test_filters_are_registered_by_their_modules_and_run_cheapest_first():
    assert isinstance(FILTERS, Registry) and filter_names() == ["licence", "text", "medical_text", "image"]
    with pytest.raises(ValueError, match="unknown filter 'nope'; registered: licence, text, medical_text, image"):
        filter_class("nope")


def test_a_registered_filter_gets_its_section_and_runs_in_the_pipeline(short_filter, corpus: Path, tmp_path: Path):
    config = CurateConfig.model_validate(
        {"sources": [{"format": "pmc_jsonl", "path": str(corpus / "figures.jsonl")}], "filter": {"short": {"max_characters": 90}}}
    )
    assert isinstance(config.filter["short"], ShortCaptionConfig) and config.filter["short"].max_characters == 90
    steps = build_filters(config, str(tmp_path))
    assert [type(s).__name__ for s in steps] == ["TextFilter", "ImageFilter", "ShortCaptionFilter"]
    with pytest.raises(ValueError, match="unknown filter section"):
        CurateConfig.model_validate({"sources": config.model_dump()["sources"], "filter": {"nope": {}}})


def test_old_section_names_are_a_clear_error():
    from medvl.config import ConfigError, load_config

    with pytest.raises(ConfigError, match="`text_filter` is now `filter.text`"):
        load_config(CurateConfig, None, ["sources=[{format: folder, path: x}]", "text_filter.min_medical_terms=1"])


@pytest.mark.parametrize("override, expected", [
    ("filter.text.min_words=3", "filter.text.min_words: unknown key, set on the command line"),
    ("filter.image.min_side=big", "filter.image.min_side: Input should be a valid integer"),
    ("filter.licence.allow=CC-BY", "filter.licence.allow: Input should be a valid list"),
])
def test_a_bad_filter_key_is_named_with_its_section(override, expected):
    from medvl.config import ConfigError, load_config

    with pytest.raises(ConfigError) as raised:
        load_config(CurateConfig, None, ["sources=[{format: folder, path: x}]", override])
    assert expected in str(raised.value)


def test_a_vocabulary_file_that_cannot_be_read_stops_the_run_before_it_starts(tmp_path: Path, medvl):
    """Missing, a folder, not UTF-8 or without a term: each was a traceback (FileNotFoundError, ValueError,
    UnicodeDecodeError) from the first prepare task, after the output folder was made."""
    source = tmp_path / "figures.jsonl"
    source.write_text('{"pdf_hash": "a", "fig_uri": "f.png", "s2_caption": "Axial CT of the chest."}\n')
    config = tmp_path / "curate.yaml"
    config.write_text(f"sources: [{{format: pmc_jsonl, path: '{source}'}}]\n")
    (tmp_path / "empty.txt").write_text("# only a comment\n")
    (tmp_path / "latin1.txt").write_bytes(b"caf\xe9\n")
    expected = {"missing.txt": "missing.txt: no such vocabulary file; give a term file",
                "empty.txt": "empty.txt holds no term; write one term or `term | variant | ...` group a line",
                "latin1.txt": "latin1.txt: not UTF-8 text (byte 3); save the vocabulary as UTF-8",
                "": f"{tmp_path} is a folder; give the term file itself"}
    for name, message in expected.items():
        outcome = medvl("curate", "run", config, "--out", tmp_path / "out", f"filter.text.vocabulary={tmp_path / name}")
        assert outcome.code == 2 and outcome.err.strip().startswith("error: filter.text.vocabulary: "), outcome.err
        assert message in outcome.err and len(outcome.err.strip().splitlines()) == 1, outcome.err
    assert not (tmp_path / "out").exists()
    # train-text-filter reads it before the encoder loads (and before its --out folder is made)
    outcome = medvl("curate", "train-text-filter", "--out", tmp_path / "tf", "--features", "embedding+vocabulary",
                    "--vocabulary", tmp_path / "empty.txt", "--encoder", tmp_path / "no-encoder")
    assert outcome.code == 2 and "empty.txt holds no term" in outcome.err and not (tmp_path / "tf").exists()


def test_text_filter_reasons():
    config = TextFilterConfig(min_caption_words=4, max_caption_words=20, min_medical_terms=2)
    ok = make_document("a", [], "Axial CT of the liver showing a lesion.", order=[0, 0, 0], source="s")
    assert _filter_text(ok, config) is True and ok.metadata["medical_terms"] >= 2
    short = make_document("b", [], "CT scan.", order=[0, 0, 1], source="s")
    assert _filter_text(short, config) == (False, "caption_too_short")
    long = make_document("c", [], "CT lesion " * 15, order=[0, 0, 2], source="s")
    assert _filter_text(long, config) == (False, "caption_too_long")
    chart = make_document("d", [], "Bar chart of revenue by quarter and region.", order=[0, 0, 3], source="s")
    assert _filter_text(chart, config) == (False, "too_few_medical_terms")
    assert chart.metadata["reject_detail"].startswith("0 < 2")
    helped = make_document(
        "e",
        [],
        "Panel A shows the result of the procedure.",
        order=[0, 0, 4],
        source="s",
        mentions=["The CT revealed a hepatic lesion (Figure 1)."],
    )
    assert _filter_text(helped, config) is True
    caption_only = config.model_copy(update={"count_terms_in": "caption"})
    assert _filter_text(helped, caption_only)[0] is False


def test_image_filter_reasons_and_signatures(corpus: Path):
    docs = {
        d.id: d
        for d in SourceReader([SourceConfig(format="pmc_jsonl", path=str(corpus / "figures.jsonl"))]).run()
    }
    run = CurateConfig.model_validate({"sources": [{"format": "pmc_jsonl", "path": str(corpus / "figures.jsonl")}]})
    image_filter = ImageFilter(ImageFilterConfig(), run)
    assert image_filter.filter(docs["p0_fig0.png"]) is True
    info = docs["p0_fig0.png"].metadata["images_info"][0]
    assert (info["width"], info["height"]) == (400, 360) and len(info["sha256"]) == 64
    from medvl.benchmarks.near_images import ROWS, decode_descriptor

    assert decode_descriptor(info["signature"]).shape == (ROWS, 63)
    assert image_filter.filter(docs["small_fig.png"]) == (False, "image_too_small")
    assert image_filter.filter(docs["corrupt_fig.png"]) == (False, "image_corrupt")
    assert image_filter.filter(docs["missing_fig.png"]) == (False, "image_missing")
    assert "no such file" in docs["missing_fig.png"].metadata["reject_detail"]
    wide = ImageFilter(ImageFilterConfig(min_side=10, max_aspect_ratio=1.05))
    assert wide.filter(docs["p1_fig1.png"]) == (False, "image_aspect_ratio")
    unsigned = ImageFilter(ImageFilterConfig(), run.model_copy(update={"dedup": run.dedup.model_copy(update={"enabled": False})}))
    assert unsigned.filter(docs["p2_fig2.png"]) is True
    assert "signature" not in docs["p2_fig2.png"].metadata["images_info"][0]
