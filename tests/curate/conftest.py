"""Fixtures for the curation tests: a synthetic PMC-style corpus with real image files, and configs.

`corpus(tmp)` writes `figures.jsonl` (the MedICaT layout of ../shared/data/pmc-figures-sample)
and `figures/` with textured PNGs: distinct records, an exact image duplicate, a near-duplicate
(re-encoded and slightly brightened), a duplicated caption, a paraphrased caption, a too-small
image, a non-medical caption, a corrupt image, a missing image and a malformed line.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
from PIL import Image

CAPTIONS = [
    "Axial contrast-enhanced CT of the abdomen showing a hypodense lesion in the right hepatic lobe.",
    "Chest radiograph demonstrating cardiomegaly and a right pleural effusion.",
    "Sagittal T2-weighted MRI of the lumbar spine showing disc herniation at L4-L5.",
    "Hematoxylin and eosin stained biopsy section showing atypical lymphocytes in the dermis.",
    "Ultrasound image of the thyroid gland with a hypoechoic nodule and calcification.",
    "Endoscopic view of the gastric mucosa with an ulcer near the antrum.",
    "Coronal CT angiography of the brain demonstrating an aneurysm of the middle cerebral artery.",
    "Fundus photograph of the retina showing hemorrhage and macular edema.",
]


def textured(seed: int, size: tuple[int, int] = (400, 360), colour: bool = False) -> Image.Image:
    """A deterministic smooth random texture (distinct pHash per seed), greyscale-looking by default."""
    rng = np.random.default_rng(seed)
    coarse = rng.random((12, 12, 3 if colour else 1))
    small = Image.fromarray((coarse * 255).astype(np.uint8).squeeze())
    return small.resize(size, Image.Resampling.BICUBIC).convert("RGB")


def write_corpus(root: Path) -> dict[str, Any]:
    """The synthetic corpus under `root`; returns what each record is meant to trigger."""
    figures = root / "figures"
    figures.mkdir(parents=True, exist_ok=True)
    lines: list[str] = []

    def add(
        name: str, caption: str, image: Image.Image | bytes | None, mentions: list[str] | None = None
    ) -> None:
        pdf_hash, fig_uri = name.split("_", 1)
        if isinstance(image, Image.Image):
            image.save(figures / f"{name}")
        elif isinstance(image, bytes):
            (figures / name).write_bytes(image)
        row = {
            "pdf_hash": pdf_hash,
            "fig_uri": fig_uri,
            "s2_caption": caption,
            "s2orc_references": mentions,
            "radiology": True,
            "oa_info": {"oa": {"license": "cc-by"}},
        }
        lines.append(json.dumps(row))

    for i, caption in enumerate(CAPTIONS):
        add(f"p{i}_fig{i}.png", caption, textured(i), [f"The lesion is shown in Figure {i} ."])
    exact = textured(0)
    add("dupimg_fig.png", "Axial CT slice of the liver in the same patient after contrast injection.", exact)
    near = Image.eval(textured(1), lambda v: min(255, v + 3))
    add("nearimg_fig.png", "Posteroanterior chest radiograph of the patient taken the following week.", near)
    add("dupcap_fig.png", CAPTIONS[2].upper(), textured(20))
    add("para_fig.png", CAPTIONS[3].replace("biopsy section", "biopsy sections"), textured(21))
    add(
        "small_fig.png",
        "Axial CT of the chest showing a small pulmonary nodule in the left lower lobe.",
        textured(22, (300, 200)),
    )
    add(
        "chart_fig.png", "Bar chart of the annual revenue of the company by quarter and region.", textured(23)
    )
    add(
        "corrupt_fig.png",
        "Axial MRI of the brain showing a glioma with surrounding edema and mass effect.",
        b"\x89PNG\r\n\x1a\n" + b"\x00" * 40,
    )
    add(
        "missing_fig.png",
        "Chest CT demonstrating bilateral pulmonary embolism in the lower lobe arteries.",
        None,
    )
    lines.insert(3, "{not json")
    (root / "figures.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return {"n_lines": len(lines), "distinct": len(CAPTIONS)}


ORGANS = ["liver", "kidney", "lung", "brain", "spleen", "pancreas", "heart", "thyroid", "prostate", "colon"]
FINDINGS = ["a cyst", "a tumor", "an abscess", "calcification", "a hematoma", "edema", "a nodule", "fibrosis"]
MODALITIES = ["Axial CT", "Coronal MRI", "Ultrasound", "Sagittal CT", "T2-weighted MRI"]


def write_large_corpus(root: Path, n: int) -> Path:
    """`n` distinct records (distinct images and captions, no duplicates) in the PMC layout."""
    figures = root / "figures"
    figures.mkdir(parents=True, exist_ok=True)
    lines = []
    for i in range(n):
        textured(1000 + i, (352, 352)).save(figures / f"h{i}_f{i}.png")
        caption = (
            f"{MODALITIES[i % 5]} of the {ORGANS[i % 10]} showing {FINDINGS[i % 8]} "
            f"in case {i} with {FINDINGS[(i // 8) % 8]} nearby."
        )
        lines.append(
            json.dumps(
                {
                    "pdf_hash": f"h{i}",
                    "fig_uri": f"f{i}.png",
                    "s2_caption": caption,
                    "s2orc_references": [f"Case {i} is shown in Figure 1."],
                }
            )
        )
    (root / "figures.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return root


@pytest.fixture
def texture() -> Callable[..., Image.Image]:
    return textured


@pytest.fixture
def large_corpus() -> Callable[[Path, int], Path]:
    return write_large_corpus


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    write_corpus(tmp_path / "corpus")
    return tmp_path / "corpus"


@pytest.fixture
def curate_config() -> Callable[..., Any]:
    """Build a CurateConfig for a corpus folder (hashing caption embedder: no model load)."""
    from medvl.config import apply_overrides
    from medvl.curate.config import CurateConfig

    def make(corpus_dir: Path, *overrides: str, **sections: Any) -> CurateConfig:
        data: dict[str, Any] = {
            "sources": [{"format": "pmc_jsonl", "path": str(corpus_dir / "figures.jsonl"), "name": "synth"}],
            "dedup": {"semantic": {"model": "hashing", "eps": 0.25}},
            "engine": {"tasks": 2},
        }
        data.update(sections)
        return CurateConfig.model_validate(apply_overrides(data, list(overrides)))

    return make


@pytest.fixture(scope="session")
def tiny_lm(smol_tokenizer, tmp_path_factory) -> Path:
    """A tiny random Llama (3 decoder layers, width 32) with SmolLM2's tokenizer, saved: the LM of the
    learned text filter's `lm+` features in tests."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(smol_tokenizer)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                         num_attention_heads=4, num_key_value_heads=2, pad_token_id=tokenizer.pad_token_id)
    out = tmp_path_factory.mktemp("tiny-lm")
    LlamaForCausalLM(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out
