"""Text and image filters: every rejection carries its reason; survivors carry their signatures."""

from __future__ import annotations

from pathlib import Path

import pytest

from medvl.curate.config import ImageFilterConfig, SourceConfig, TextFilterConfig
from medvl.curate.filters import ImageFilter, TextFilter
from medvl.curate.ingest import SourceReader, make_document
from medvl.curate.vocab import Vocabulary, infer_modality, load_vocabulary


def test_vocabulary_counts_distinct_terms_with_phrases_and_plurals(tmp_path: Path):
    vocab = Vocabulary(["lesion", "lymph node", "ct", "pleural effusion"])
    assert vocab.find("CT showed lesions and a pleural effusion; lymph nodes and one lymph node.") == {
        "ct",
        "lesion",
        "pleural effusion",
        "lymph node",
    }
    assert vocab.count("Lesion, lesion, LESION.") == 1
    shipped = load_vocabulary()
    assert len(shipped) > 500
    assert shipped.count("Bar chart of the annual revenue of the company by quarter.") == 0
    assert shipped.count("Axial CT of the liver showing a hypodense lesion with rim enhancement.") >= 4
    custom = tmp_path / "terms.txt"
    custom.write_text("# comment\nwidget\n")
    assert load_vocabulary(str(custom)).count("a widget") == 1
    with pytest.raises(FileNotFoundError):
        load_vocabulary(str(tmp_path / "nope.txt"))


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
    image_filter = ImageFilter(ImageFilterConfig(), phash=True)
    assert image_filter.filter(docs["p0_fig0.png"]) is True
    info = docs["p0_fig0.png"].metadata["images_info"][0]
    assert (
        (info["width"], info["height"]) == (400, 360)
        and len(info["sha256"]) == 64
        and len(info["phash"]) == 16
    )
    assert image_filter.filter(docs["small_fig.png"]) == (False, "image_too_small")
    assert image_filter.filter(docs["corrupt_fig.png"]) == (False, "image_corrupt")
    assert image_filter.filter(docs["missing_fig.png"]) == (False, "image_missing")
    assert "no such file" in docs["missing_fig.png"].metadata["reject_detail"]
    wide = ImageFilter(ImageFilterConfig(min_side=10, max_aspect_ratio=1.05), phash=False)
    assert wide.filter(docs["p1_fig1.png"]) == (False, "image_aspect_ratio")
    assert "phash" not in docs["p1_fig1.png"].metadata.get("images_info", [{}])[0]
