"""Near-duplicate images on real radiology images (VQA-RAD's, vendored): every kind of copy the
literature makes is found, and distinct images are never matched. The full 315-image measurement
is `bench/curate_quality.py`."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

from medvl.benchmarks.near_images import NearImageConfig, NearImageMatcher, decode_descriptor, describe, encode_descriptor, flipped

ROOT = Path(__file__).resolve().parents[2]
IMAGES = sorted((ROOT / "data" / "vqa-rad" / "images").glob("*.jpg"))[::8]
sys.path.insert(0, str(ROOT / "bench"))
from curate_quality import image_copies  # noqa: E402  (the copies the benchmark measures, on a sample)


@pytest.fixture(scope="module")
def matcher() -> NearImageMatcher:
    index = NearImageConfig().matcher()
    for position, path in enumerate(IMAGES):
        index.add(describe(Image.open(path)), position, str(path))
    return index


def test_descriptor_round_trip_and_mirror_identity():
    image = Image.open(IMAGES[0]).convert("RGB")
    descriptor = describe(image)
    assert np.allclose(decode_descriptor(encode_descriptor(descriptor)), descriptor, atol=1e-3)
    assert float(describe(ImageOps.mirror(image))[0] @ flipped(descriptor[0])) > 0.999  # resampling aside, equal


def test_every_kind_of_copy_is_found(matcher: NearImageMatcher):
    rng = np.random.default_rng(0)
    missed = []
    for position, path in enumerate(IMAGES):
        for kind, copy in image_copies(Image.open(path).convert("RGB"), rng).items():
            match = matcher.find(describe(copy), copy)
            if match is None or match.payload != position:
                missed.append((path.name, kind))
    assert len(IMAGES) >= 39 and missed == []


def test_distinct_radiology_images_never_match(matcher: NearImageMatcher):
    for position, path in enumerate(IMAGES):
        image = Image.open(path)
        others = [(p, s) for p, s in matcher.index.search(describe(image), 6) if p != position]
        for payload, similarity in others:
            assert similarity < matcher.exact_similarity
            if similarity >= matcher.min_similarity:
                assert matcher.verifier.inliers(image, str(IMAGES[payload])) < matcher.min_inliers


def test_a_candidate_whose_file_is_gone_stays_unconfirmed_and_is_counted(tmp_path: Path):
    image = Image.open(IMAGES[0]).convert("RGB")
    matcher = NearImageConfig().matcher()
    matcher.add(describe(image), 0, str(tmp_path / "gone.jpg"))
    rotated = image.rotate(4, resample=Image.Resampling.BICUBIC)  # a candidate, not an exact one
    assert matcher.find(describe(rotated), rotated) is None and matcher.unreadable == 1
