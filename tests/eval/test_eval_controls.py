"""Image controls and honest run accounting: the shuffled-image run, image reliance from `eval compare`,
skipped / text-only counts everywhere, and runs that score nothing ending non-zero with the reason."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from PIL import Image

from medvl.benchmarks import load_benchmark
from medvl.benchmarks.base import VQAItem
from medvl.engine import Reply
from medvl.eval import runner
from medvl.eval.baselines import image_derangement
from medvl.eval.config import EvalConfig
from medvl.eval.report import NothingScored
from medvl.eval.runner import run_eval
from medvl.io.jsonl import read_records

FIXTURES = Path(__file__).parent / "fixtures"
VENDORED_RAD = Path(__file__).resolve().parents[2] / "data" / "vqa-rad"


class ByColour:
    """Answers "B" when the first image is reddish, else "A": a model that reads the image."""

    def __init__(self, seen: list | None = None):
        self.seen = seen if seen is not None else []

    def generate(self, requests):
        self.seen.extend((r.item.id, len(r.images)) for r in requests)
        return [Reply("B" if r.images and r.images[0].convert("RGB").getpixel((0, 0))[0] > 50 else "A", 1, 1)
                for r in requests]


def config(tmp_path: Path, name: str, root: Path, **extra) -> EvalConfig:
    return EvalConfig.model_validate({"benchmark": {"name": name, "root": str(root)},
                                      "output_dir": str(tmp_path / extra.pop("folder", "run")),
                                      "generation": {"batch_size": 2, "max_new_tokens": 4}, **extra})


def test_derangement_gives_every_item_another_image_file():
    if not VENDORED_RAD.is_dir():
        pytest.skip("no vendored VQA-RAD")
    items = load_benchmark("vqa_rad", VENDORED_RAD).items  # 451 questions over 203 images
    donors, stuck = image_derangement(items, seed=0)
    assert stuck == [] and set(donors) == {i.id for i in items}
    for item in items:
        donor = donors[item.id]
        assert len(donor.images) == len(item.images) and not set(donor.images) & set(item.images)
    assert len({tuple(d.images) for d in donors.values()}) == 203  # a permutation of the image files
    assert image_derangement(items, seed=0)[0] == donors  # deterministic
    assert image_derangement(items, seed=1)[0] != donors
    reordered = image_derangement(list(reversed(items)), seed=0)[0]
    assert {k: v.images for k, v in reordered.items()} == {k: v.images for k, v in donors.items()}  # order-free


def test_derangement_keeps_image_counts_and_reports_what_cannot_move():
    def item(item_id: str, *images: str) -> VQAItem:
        return VQAItem(item_id, "b", "test", "q?", "yes", "closed", list(images))

    items = [item("a", "1.png"), item("b", "1.png"), item("c", "2.png"), item("d", "3.png", "4.png"),
             item("e", "5.png", "6.png"), item("f", "7.png", "8.png", "9.png")]
    donors, stuck = image_derangement(items, seed=3)
    assert {k: v.id for k, v in donors.items() if k in "ab"} == {"a": "c", "b": "c"}
    assert donors["c"].id == "a" and (donors["d"].id, donors["e"].id) == ("e", "d")
    assert stuck == ["f"]  # the only three-image item has nobody to swap with


def test_shuffled_run_shows_donor_images_and_pairs_with_the_real_run(tmp_path, monkeypatch, medvl):
    seen: list = []
    monkeypatch.setattr(runner, "make_backend", lambda *a, **k: ByColour(seen))
    real = run_eval(config(tmp_path, "huatuo_eval", FIXTURES / "huatuo", folder="real"))
    shuffled = run_eval(config(tmp_path, "huatuo_eval", FIXTURES / "huatuo", folder="shuffled", use_images="shuffled"))
    real_records = {r["id"]: r for r in read_records(real / "predictions.jsonl")}
    records = {r["id"]: r for r in read_records(shuffled / "predictions.jsonl")}
    assert set(records) == set(real_records) == {"1", "2", "3"}  # item 4's image is missing in both runs
    assert records["1"]["shown_images_from"] == "2" and records["2"]["shown_images_from"] == "1"
    assert records["1"]["shown_images"] == real_records["2"]["shown_images"] == real_records["2"]["images"]
    assert real_records["1"]["shown_images_from"] is None and real_records["1"]["use_images"]
    assert (records["1"]["output"], real_records["1"]["output"]) == ("A", "B")  # the image changed the answer
    scores = json.loads((shuffled / "scores.json").read_text())
    assert scores["use_images"] == "shuffled" and "seeded derangement" in (shuffled / "report.md").read_text()

    result = medvl("eval", "compare", shuffled, real, "--out", tmp_path / "compare.md")
    assert result.code == 0, result
    assert "### image reliance = real − shuffled (real − shuffled)" in result.out
    # two paired choice items, one right only with the real image, one only with the shuffled: McNemar p = 1
    assert "| choice accuracy | 2 | 50.0 | 50.0 | +0.0 | [-100.0, 100.0] | 1 | 1 / 1 | not significant |" in result.out
    assert (tmp_path / "compare.md").read_text() == result.out.rstrip("\n") + "\n"


def test_shuffled_run_is_deterministic(tmp_path, monkeypatch):
    monkeypatch.setattr(runner, "make_backend", lambda *a, **k: ByColour())
    shown = []
    for folder in ("one", "two"):
        out = run_eval(config(tmp_path, "huatuo_eval", FIXTURES / "huatuo", folder=folder, use_images="shuffled",
                              missing_images="text_only"))
        shown.append([(r["id"], r["shown_images"], r["use_images"]) for r in read_records(out / "predictions.jsonl")])
    assert shown[0] == shown[1] and shown[0][3] == ("4", [], False)  # text-only items are shown nothing


def test_use_images_parses_booleans_and_shuffled(tmp_path):
    from medvl.config import ConfigError, load_config

    path = tmp_path / "eval.yaml"
    for text, value in (("true", True), ("false", False), ("shuffled", "shuffled"), ("yes", True)):
        path.write_text(f"benchmark: {{name: vqa_rad, root: x}}\nuse_images: {text}\n")
        assert load_config(EvalConfig, path).use_images == value
    assert load_config(EvalConfig, path, ["use_images=shuffled"]).use_images == "shuffled"
    with pytest.raises(ConfigError, match="use_images"):
        load_config(EvalConfig, path, ["use_images=scrambled"])


def test_text_only_and_skipped_items_are_counted_everywhere(tmp_path, medvl):
    path = tmp_path / "eval.yaml"
    path.write_text(yaml.safe_dump({"benchmark": {"name": "vqa_rad", "root": str(FIXTURES / "vqa_rad")},
                                    "backend": {"kind": "majority"}, "output_dir": str(tmp_path / "run")}))
    result = medvl("eval", "run", path, "missing_images=text_only")
    assert result.code == 0 and "answered 3 of 3, skipped 0 (none), text-only 1" in result.out
    scores = json.loads((tmp_path / "run" / "scores.json").read_text())
    assert (scores["text_only"], scores["skipped"], scores["answered"]) == (1, 0, 3)
    assert "text-only 1" in (tmp_path / "run" / "report.md").read_text()

    result = medvl("eval", "run", path, f"output_dir={tmp_path / 'skip'}")
    assert result.code == 0 and "answered 2 of 3, skipped 1 (missing_image 1), text-only 0" in result.out
    assert "closed acc 0.0 [0.0, 79.3] n=1" in result.out  # Wilson 0/1
    assert "skipped 1 (missing_image 1)" in (tmp_path / "skip" / "report.md").read_text()


def test_a_run_that_answers_nothing_exits_2_and_keeps_its_folder(tmp_path, medvl):
    path = tmp_path / "eval.yaml"
    path.write_text(yaml.safe_dump({"benchmark": {"name": "vqa_rad", "root": str(FIXTURES / "vqa_rad")},
                                    "backend": {"kind": "majority"}, "use_images": "shuffled",
                                    "output_dir": str(tmp_path / "run")}))
    result = medvl("eval", "run", path)  # both runnable items show the same image: nothing to shuffle in
    assert result.code == 2 and result.err.count("\n") == 1
    assert "no item was answered: 3 of 3 skipped (missing_image 1, no_other_image 2)" in result.err
    scores = json.loads((tmp_path / "run" / "scores.json").read_text())
    assert scores["answered"] == 0 and scores["scores"]["overall_accuracy"] is None  # null, not 0.0
    assert len(read_records(tmp_path / "run" / "rejects.jsonl")) == 3


@pytest.mark.shared_data
def test_real_slake_questions_without_images_exit_2(shared_dir, tmp_path, medvl):
    path = tmp_path / "eval.yaml"
    path.write_text(yaml.safe_dump({"benchmark": {"name": "slake", "root": str(shared_dir / "data" / "slake-questions"),
                                                  "split": "validate", "limit": 20},
                                    "backend": {"kind": "majority"}, "output_dir": str(tmp_path / "run")}))
    result = medvl("eval", "run", path)
    assert result.code == 2 and "no item was answered: 20 of 20 skipped (missing_image 20)" in result.err
    assert "missing_images=text_only" in result.err


def test_a_scorer_that_scores_none_of_the_items_is_an_error(tmp_path, monkeypatch, medvl):
    monkeypatch.setattr(runner, "make_backend", lambda *a, **k: ByColour())
    with pytest.raises(NothingScored, match="llava_med_run_eval scores none of the 2 answered items \(choice questions\)"):
        run_eval(config(tmp_path, "huatuo_eval", FIXTURES / "huatuo", scorer="llava_med_run_eval",
                        benchmark={"name": "huatuo_eval", "root": str(FIXTURES / "huatuo"), "limit": 2}))
    result = medvl("eval", "score", tmp_path / "run", "--scorer", "llava_med_run_eval_batch")
    assert result.code == 2 and "scores none of its 2 items (choice questions)" in result.err


def test_every_request_failing_is_an_error(tmp_path):
    from medvl.llm.mock_server import MockServer

    with MockServer(script=[{"status": 400}] * 3) as server:
        llm = {"base_url": server.base_url, "model": "mock", "max_retries": 0, "api_key_env": "MEDVL_NO_KEY"}
        with pytest.raises(NothingScored, match="every one of the 3 requests failed"):
            run_eval(config(tmp_path, "llava_jsonl", FIXTURES / "llava" / "eval.jsonl",
                            backend={"kind": "openai", "llm": llm}))


def test_majority_on_a_file_without_splits_says_it_counted_the_evaluated_file(tmp_path):
    out = run_eval(config(tmp_path, "llava_jsonl", FIXTURES / "llava" / "eval.jsonl", backend={"kind": "majority"}),
                  )
    notes = json.loads((out / "scores.json").read_text())["notes"]
    assert any("evaluated test split itself" in note and "optimistic" in note for note in notes)
    assert not any(note.startswith("majority answers counted on the train split") for note in notes)


def test_colour_backend_sees_real_pixels():
    # guard for the tests above: the fixture images really differ in their red channel
    reds = {name: Image.open(FIXTURES / "huatuo" / "images" / name).convert("RGB").getpixel((0, 0))[0]
            for name in ("vqa_rad_1.jpg", "omni_1.png")}
    assert reds["vqa_rad_1.jpg"] > 50 > reds["omni_1.png"]
