"""Benchmark loaders on fixtures in each release's exact format, and on the real VQA-RAD / SLAKE files."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
from PIL import Image

from medvl.benchmarks import (
    BENCHMARKS,
    BenchmarkError,
    check_benchmark,
    get_benchmark,
    load_benchmark,
    locate_benchmark,
)
from medvl.records import record_problems

FIXTURES = Path(__file__).parent / "fixtures"


def test_vqa_rad_split_types_and_missing_images():
    test = load_benchmark("vqa_rad", FIXTURES / "vqa_rad")
    assert [i.id for i in test.items] == ["3", "4", "5"]
    by_id = {i.id: i for i in test.items}
    assert by_id["3"].answer == "yes" and by_id["3"].answer_type == "closed"  # "CLOSED " and "yes " trimmed
    assert by_id["4"].answer == "2" and by_id["4"].meta["question_type"] == "COUNT"  # numeric answer kept as text
    assert test.missing_images == ["5"]
    train = load_benchmark("vqa_rad", FIXTURES / "vqa_rad", split="train")
    assert [i.id for i in train.items] == ["0", "1", "2"] and train.missing_images == []
    assert all(Path(p).is_absolute() for i in train.items for p in i.images)


def test_slake_language_and_missing_images():
    en = load_benchmark("slake", FIXTURES / "slake")
    assert [i.meta["lang"] for i in en.items] == ["en", "en"]
    assert en.missing_images == ["2"]
    zh = load_benchmark("slake", FIXTURES / "slake", lang="zh")
    assert [i.answer for i in zh.items] == ["不是"] and zh.items[0].meta["yes_no"]
    assert len(load_benchmark("slake", FIXTURES / "slake", lang="all")) == 3
    with pytest.raises(BenchmarkError, match="validate"):
        load_benchmark("slake", FIXTURES / "slake", split="validation")  # alias of validate; file absent


def test_pathvqa_both_layouts(tmp_path):
    original = load_benchmark("pathvqa", FIXTURES / "pathvqa" / "pvqa")
    assert [(i.answer, i.answer_type) for i in original.items] == [("yes", "closed"), ("neutrophils", "open")]
    assert not original.missing_images
    parquet = load_benchmark("pathvqa", FIXTURES / "pathvqa" / "hf", image_dir=str(tmp_path))
    assert [i.answer_type for i in parquet.items] == ["closed", "open"]
    assert all(Path(p).parent == tmp_path and Path(p).is_file() for i in parquet.items for p in i.images)
    again = load_benchmark("pathvqa", FIXTURES / "pathvqa" / "hf", image_dir=str(tmp_path))
    assert [i.images for i in again.items] == [i.images for i in parquet.items]  # content-addressed, written once


def test_pathvqa_pickle_with_code_is_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("owned",))

    qas = tmp_path / "qas" / "test"
    qas.mkdir(parents=True)
    (qas / "test_qa.pkl").write_bytes(pickle.dumps([Evil()]))
    with pytest.raises(BenchmarkError, match="only plain data"):
        load_benchmark("pathvqa", tmp_path)


def test_pmc_vqa_choices_and_broken_row():
    data = load_benchmark("pmc_vqa", FIXTURES / "pmc_vqa")
    first = data.items[0]
    assert first.options == ["MRI", "CT", "PET", "Ultrasound"]  # "A:" prefixes and spaces stripped
    assert first.answer == "CT" and first.answer_letter == "B" and first.answer_type == "choice"
    assert [r["id"] for r in data.rejects] == ["test_clean-2"]


def test_pmc_vqa_version_2_with_letter_answers():
    data = load_benchmark("pmc_vqa", FIXTURES / "pmc_vqa_2", csv_file="test_2.csv")
    assert [(i.answer, i.answer_letter) for i in data.items] == [("CT", "B"), ("Axial", "A")]
    assert all(Path(p).parent.name == "figures" and Path(p).is_file() for i in data.items for p in i.images)
    assert data.rejects == []


def test_omnimedvqa_two_and_four_options():
    data = load_benchmark("omnimedvqa", FIXTURES / "omnimedvqa")
    assert [len(i.options) for i in data.items] == [4, 2]
    assert data.items[1].answer_letter == "B" and data.items[0].meta["modality"] == "CT"
    assert not data.missing_images


def test_mmmu_medical_subjects(tmp_path):
    data = load_benchmark("mmmu_med", FIXTURES / "mmmu", split="validation", image_dir=str(tmp_path))
    assert len(data) == 7 and {i.meta["subject"] for i in data.items} >= {"Pharmacy", "Public_Health"}
    item = data.items[0]
    assert item.options[1] == "Mitochondrion" and item.answer == "Mitochondrion" and "<image 1>" in item.question
    assert len(item.images) == 1 and Path(item.images[0]).is_file()
    by_id = {i.id: i for i in data.items}
    images_in_options = by_id["validation_Clinical_Medicine_2"]  # images tagged in the question and the options
    assert images_in_options.options == ["<image 2>", "<image 3>"] and images_in_options.answer == "<image 3>"
    greens = [Image.open(p).convert("RGB").getpixel((0, 0))[1] for p in images_in_options.images]
    assert greens == sorted(greens) and len(set(greens)) == 3  # image_1, image_2, image_3 in tag order
    opened = by_id["validation_Public_Health_2"]
    assert (opened.answer_type, opened.answer, opened.options) == ("open", "12.5", [])
    with pytest.raises(BenchmarkError, match="no test parquet"):
        load_benchmark("mmmu_med", FIXTURES / "mmmu", split="test")


def test_huatuo_combined_file():
    data = load_benchmark("huatuo_eval", FIXTURES / "huatuo")
    assert [i.id for i in data.items] == ["1", "2", "3", "4"]  # test_id numbering from 1
    assert data.items[1].options == ["CT", "MRI", "X-ray"]  # string-encoded list parsed
    assert [i.answer_type for i in data.items] == ["choice", "choice", "open", "choice"]
    assert data.missing_images == ["4"] and data.items[3].answer_letter is None
    only_rad = load_benchmark("huatuo_eval", FIXTURES / "huatuo", datasets=["VQA-RAD"])
    assert {i.meta["dataset"] for i in only_rad.items} == {"VQA-RAD"}


def test_llava_jsonl_rejects_and_types():
    data = load_benchmark("llava_jsonl", FIXTURES / "llava" / "eval.jsonl")
    assert [(i.id, i.answer_type) for i in data.items] == [("q1", "closed"), ("q2", "open"), ("q3", "choice")]
    assert data.items[1].question == "Which lobe?" and data.items[0].meta == {"domain": "ct"}
    assert sorted(r["reason"] for r in data.rejects) == ["bad_json", "malformed_record"]


def test_items_convert_to_training_records():
    for item in load_benchmark("pmc_vqa", FIXTURES / "pmc_vqa").items:
        record = item.to_record()
        assert record_problems(record) == []
        assert record["conversations"][1]["value"] == item.answer


def test_unknown_names_and_options_are_errors():
    with pytest.raises(BenchmarkError, match="unknown benchmark"):
        load_benchmark("vqarad", FIXTURES / "vqa_rad")
    with pytest.raises(BenchmarkError, match="unknown option"):
        load_benchmark("vqa_rad", FIXTURES / "vqa_rad", lang="en")
    assert len(BENCHMARKS) == 8


@pytest.mark.parametrize("name, root, split, options", [
    ("vqa_rad", "vqa_rad", "train", {}), ("slake", "slake", "test", {"lang": "zh"}),
    ("pathvqa", "pathvqa/pvqa", "test", {}), ("pathvqa", "pathvqa/hf", "test", {}),
    ("pmc_vqa", "pmc_vqa", "test", {}), ("pmc_vqa", "pmc_vqa_2", "test", {"csv_file": "test_2.csv"}),
    ("omnimedvqa", "omnimedvqa", "all", {}),
    ("mmmu_med", "mmmu", "val", {"subjects": ["Pharmacy", "Public_Health"]}),
    ("mmmu_med", "mmmu", "validation", {}), ("huatuo_eval", "huatuo", "test", {"datasets": "VQA-RAD"}),
    ("llava_jsonl", "llava/eval.jsonl", "test", {}),
])
def test_each_loader_locates_and_checks_the_files_it_reads_without_reading_an_image(tmp_path, name, root, split,
                                                                                     options):
    if "image_dir" in get_benchmark(name).options():
        options = {**options, "image_dir": str(tmp_path / "images")}
    located = locate_benchmark(name, FIXTURES / root, split, **options)
    assert check_benchmark(name, FIXTURES / root, split, **options) == located  # a release as published passes
    assert not (tmp_path / "images").exists()  # a parquet release's images are written by the load alone
    data = load_benchmark(name, FIXTURES / root, split, **options)
    assert [str(f) for f in located.files] == data.sources and located.split == data.split


def test_every_registered_benchmark_has_a_locator_and_a_check():
    assert [name for name in BENCHMARKS if None in (get_benchmark(name).locate, get_benchmark(name).check)] == []


@pytest.fixture(params=[pytest.param("shared", marks=pytest.mark.shared_data), "vendored"])
def vqa_rad_root(request) -> Path:
    """The real release: ../shared/data/vqa-rad, and the copy vendored in the repository's data/."""
    if request.param == "shared":
        return request.getfixturevalue("shared_dir") / "data" / "vqa-rad"
    root = Path(__file__).resolve().parents[2] / "data" / "vqa-rad"
    if not root.is_dir():
        pytest.skip("no vendored VQA-RAD")
    return root


def test_real_vqa_rad_official_test_split(vqa_rad_root):
    data = load_benchmark("vqa_rad", vqa_rad_root)
    assert len(data) == 451
    assert data.counts() == {"closed": 272, "open": 179}
    assert len({p for i in data.items for p in i.images}) == 203
    assert data.missing_images == [] and data.rejects == []
    assert len(load_benchmark("vqa_rad", vqa_rad_root, split="train")) == 2248 - 451


@pytest.mark.shared_data
def test_real_slake_questions_without_images(shared_dir):
    data = load_benchmark("slake", shared_dir / "data" / "slake-questions", split="validate")
    assert len(data) > 0 and all(i.meta["lang"] == "en" for i in data.items)
    assert len(data.missing_images) == len(data)  # no images shipped: every question reported, none dropped
    assert "image folder" in data.summary()


@pytest.mark.parametrize("name,folder,file", [
    ("vqa_rad", "vqa_rad", None), ("slake", "slake", None), ("pmc_vqa", "pmc_vqa", None),
    ("omnimedvqa", "omnimedvqa", None), ("huatuo_eval", "huatuo", None), ("llava_jsonl", "llava", "eval.jsonl"),
])
def test_image_paths_keep_the_symlinked_folder_the_user_named(tmp_path, name, folder, file):
    # data on scratch storage is often reached through a link; predictions and records show that path
    linked = tmp_path / "linked"
    linked.symlink_to(FIXTURES / folder, target_is_directory=True)
    data = load_benchmark(name, linked / file if file else linked)
    images = [p for item in data.items for p in item.images]
    assert images and all(p.startswith(str(linked) + "/") for p in images), images[:2]
