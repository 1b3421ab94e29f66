"""A new benchmark is one registered loader (docs/architecture.md): a throwaway one is found by name,
asked with its own prompt, scored with its own scorer, and converted to fine-tuning data."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from medvl.benchmarks import (
    BENCHMARKS,
    BenchmarkData,
    BenchmarkError,
    VQAItem,
    check_benchmark,
    get_benchmark,
    load_benchmark,
    locate_benchmark,
    register_benchmark,
)
from medvl.benchmarks.base import Located, finish, read_json_rows
from medvl.eval.config import EvalConfig
from medvl.eval.runner import run_eval
from medvl.io.jsonl import read_records
from medvl.train.convert import convert_benchmark

IMAGES = Path(__file__).parent / "fixtures" / "vqa_rad" / "images"


@pytest.fixture
def toy(tmp_path):
    """A `toy` benchmark: `toy.json` rows {id, q, a, img}, asked "TOY: <question>", scored by LLaVA-Med's batch rule."""
    rows = [{"id": "t1", "q": "Is this a chest film?", "a": "yes", "img": "synpic1.jpg"},
            {"id": "t2", "q": "Which side?", "a": "left", "img": "synpic2.jpg"}]
    (tmp_path / "toy.json").write_text(json.dumps(rows))

    def load(root: Path, split: str = "test") -> BenchmarkData:
        good, rejects = read_json_rows(root / "toy.json")
        items = [VQAItem(id=row["id"], benchmark="toy", split=split, question=row["q"], answer=row["a"],
                         answer_type="closed" if row["a"] in ("yes", "no") else "open",
                         images=[str(IMAGES / row["img"])]) for _, row in good]
        return finish("toy", split, root, items, rejects=rejects)

    register_benchmark("toy", prompt=lambda item, style: f"TOY: {item.question}",
                       scorer="llava_med_run_eval_batch")(load)
    try:
        yield tmp_path
    finally:
        BENCHMARKS.unregister("toy")
    assert "toy" not in BENCHMARKS


def test_a_registered_benchmark_loads_by_name(toy):
    assert "toy" in BENCHMARKS and get_benchmark("toy").options() == []
    assert [item.id for item in load_benchmark("toy", toy).items] == ["t1", "t2"]
    with pytest.raises(BenchmarkError, match="unknown benchmark 'toyy'; known: .*toy"):
        load_benchmark("toyy", toy)


def test_one_registered_without_a_locator_has_its_root_checked(toy):
    assert locate_benchmark("toy", toy) is None  # nothing more is known of its files before it loads
    assert check_benchmark("toy", toy) is None
    for find in (locate_benchmark, check_benchmark):
        with pytest.raises(BenchmarkError, match="toy: .*nowhere does not exist"):
            find("toy", toy / "nowhere")


def test_a_check_gets_the_located_files_and_the_options_it_names(toy):
    """`check(files, ...)`: the files `locate` found, `split` as the release names it, the loader's options
    (its defaults filled in); a benchmark with `locate` and no `check` gets the `locate` checks alone."""
    toy_load = get_benchmark("toy").load
    seen = []

    def load(root: Path, split: str = "test", lang: str = "en", image_dir: str | None = None) -> BenchmarkData:
        return toy_load(root, split)

    def locate(root: Path, split: str) -> Located:
        return Located({"val": "validate"}.get(split, split), [root / "toy.json"])

    def check(files: list[Path], split: str, lang: str) -> None:
        seen.append((files, split, lang))

    register_benchmark("toy_located", locate=locate)(load)
    register_benchmark("toy_checked", locate=locate, check=check)(load)
    try:
        (toy / "toy.json").write_text("[{")  # the load fails on it; only a check could tell
        assert check_benchmark("toy_located", toy, "val") == Located("validate", [toy / "toy.json"])
        assert check_benchmark("toy_checked", toy, "val") == Located("validate", [toy / "toy.json"])
        check_benchmark("toy_checked", toy, lang="zh", image_dir="images")
    finally:
        BENCHMARKS.unregister("toy_located")
        BENCHMARKS.unregister("toy_checked")
    assert seen == [([toy / "toy.json"], "validate", "en"), ([toy / "toy.json"], "test", "zh")]


def test_eval_run_asks_with_its_prompt_and_scores_with_its_scorer(toy):
    config = EvalConfig.model_validate({"benchmark": {"name": "toy", "root": str(toy)},
                                        "backend": {"kind": "majority"}, "output_dir": str(toy / "run")})
    assert config.scorer == "llava_med_run_eval_batch"
    assert EvalConfig.model_validate({**config.model_dump(), "scorer": "medvl"}).scorer == "medvl"
    out = run_eval(config)
    records = read_records(out / "predictions.jsonl")
    assert [r["prompt"] for r in records] == ["TOY: Is this a chest film?", "TOY: Which side?"]
    assert json.loads((out / "scores.json").read_text())["scorer"] == "llava_med_run_eval_batch"


def test_it_converts_to_fine_tuning_records(toy):
    result = convert_benchmark("toy", toy, toy / "train.jsonl", split="test")
    records = read_records(toy / "train.jsonl")
    assert result.written == 2 and records[0]["conversations"][0]["value"].startswith("<image>\nIs this a chest film?")
