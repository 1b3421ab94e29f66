"""Data sources, validation (data check == what training skips), mixing, the dataset and collator."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
import torch

from medvl.train.config import DataConfig, SourceConfig
from medvl.train.sources import load_source, mix_entries
from medvl.train.validate import REJECTS_NAME, check_sources


def _turns(question: str = "<image>\nWhat color?", answer: str = "red") -> list[dict]:
    return [{"from": "human", "value": question}, {"from": "gpt", "value": answer}]


@pytest.fixture
def messy_data(tmp_path, color_data) -> Path:
    """Good rows plus one of each problem the check must catch."""
    folder = color_data.parent
    (tmp_path / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    long_question = "<image>\n" + "why " * 200
    rows = [
        {"id": "good1", "image": str(folder / "img0.png"), "conversations": _turns()},
        {"id": "good2", "image": [str(folder / "img1.png"), str(folder / "img2.png")],
         "conversations": _turns("<image>\n<image>\nSame color?", "no")},
        {"id": "missing", "image": "nowhere.png", "conversations": _turns()},
        {"id": "corrupt", "image": "corrupt.png", "conversations": _turns()},
        {"id": "no-answer", "image": str(folder / "img0.png"), "conversations": _turns()[:1]},
        {"id": "tags", "image": [str(folder / "img0.png")], "conversations": _turns("<image>\n<image>\nHm?")},
        {"id": "many", "image": [str(folder / "img0.png")] * 3, "conversations": _turns("Three?")},
        {"id": "image-late", "image": str(folder / "img0.png"), "conversations": _turns("why " * 200 + "<image>")},
        {"id": "long-text", "image": str(folder / "img0.png"), "conversations": _turns(long_question, "ok")},
    ]
    path = tmp_path / "messy.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + "{not json\n", encoding="utf-8")
    return path


EXPECTED_REASONS = {
    "image_missing": 1, "image_corrupt": 1, "bad_structure": 2, "too_many_images": 1,
    "image_cut_by_truncation": 1, "no_supervised_tokens": 1, "bad_json": 1,
}


@pytest.fixture(scope="module")
def encoder(tiny_model):
    from medvl.train.encode import ChatEncoder

    return ChatEncoder(tiny_model[1], max_length=128)


def test_check_counts_every_problem_with_its_reason(messy_data, encoder, tmp_path):
    data = DataConfig(sources=[SourceConfig(path=str(messy_data), image_root=str(tmp_path))], max_length=128,
                      max_images=2)
    report = check_sources([load_source(s) for s in data.sources], encoder, data, tmp_path / "check")
    source = report.sources[0]
    assert source.rows == 10
    assert dict(source.rejects) == EXPECTED_REASONS
    assert source.valid == [0, 1]
    rejects = [json.loads(line) for line in (tmp_path / "check" / REJECTS_NAME).read_text().splitlines()]
    assert Counter(r["reason"] for r in rejects) == Counter(EXPECTED_REASONS)
    by_id = {r["id"]: r for r in rejects}
    assert by_id["missing"]["stage"] == "image" and "nowhere.png" in by_id["missing"]["detail"]
    assert by_id["no-answer"]["detail"] == "no gpt turn"
    assert by_id["messy:10"]["reason"] == "bad_json"
    saved = json.loads((tmp_path / "check" / "data_check.json").read_text())
    assert saved["totals"] == {"rows": 10, "valid": 2, "rejected": 8, "warnings": 0}


def test_training_skips_the_checked_rejects_and_reuses_the_check(messy_data, train_config, tmp_path, monkeypatch):
    from medvl.train import validate
    from medvl.train.modeling import load_processor
    from medvl.train.runner import prepare_data

    config = train_config(**{"data__sources": [{"path": str(messy_data), "image_root": str(tmp_path)}],
                             "data__max_images": 2})
    processor = load_processor(config.model)
    out = Path(config.output_dir)
    report, _, _, entries = prepare_data(config, processor, out, progress=False)
    assert dict(report.sources[0].rejects) == EXPECTED_REASONS
    assert entries == [(0, 0), (0, 1)]

    def must_not_run(*args, **kwargs):
        raise AssertionError("the matching data check should have been reused")

    monkeypatch.setattr(validate, "check_record", must_not_run)
    again, _, _, _ = prepare_data(config, processor, out, progress=False)
    assert dict(again.sources[0].rejects) == EXPECTED_REASONS
    changed = config.model_copy(update={"data": config.data.model_copy(update={"max_length": 64})})
    with pytest.raises(AssertionError, match="should have been reused"):
        prepare_data(changed, processor, out, progress=False)


def test_data_check_cli_on_a_file_and_on_a_config(messy_data, tiny_model_dir, train_config, tmp_path):
    from typer.testing import CliRunner

    from medvl.cli import build_app

    runner = CliRunner()
    result = runner.invoke(build_app(), ["data", "check", str(messy_data), "--image-root", str(tmp_path),
                                         "--model", str(tiny_model_dir), "--max-length", "128"])
    assert result.exit_code == 0, result.output
    saved = json.loads((tmp_path / "messy.check" / "data_check.json").read_text())
    assert saved["totals"]["rejected"] == 7  # no max_images in the file form: the 3-image row is usable
    config_path = tmp_path / "train.yaml"
    from medvl.config import dump_config

    dump_config(train_config(), config_path)
    result = runner.invoke(build_app(), ["data", "check", str(config_path), "data.max_length=128"])
    assert result.exit_code == 0, result.output
    assert "48" in result.output
    assert (tmp_path / "run" / "data_check" / "data_check.json").is_file()


def test_data_check_of_a_config_is_refused_while_its_run_trains(train_config, tmp_path, medvl):
    """A training run of the config writes the same data_check folder: the check is refused, not interleaved."""
    from medvl.config import dump_config
    from medvl.io.process import RunLock

    config = train_config()
    config_path = tmp_path / "train.yaml"
    dump_config(config, config_path)
    with RunLock(config.output_dir, what="training run"):
        refused = medvl("data", "check", config_path)
        assert refused.code == 2, refused
        assert "in use by another training run" in refused.err and len(refused.err.splitlines()) == 1
        assert not (Path(config.output_dir) / "data_check").exists()
    allowed = medvl("data", "check", config_path)
    assert allowed.code == 0, allowed
    assert (Path(config.output_dir) / "data_check" / "data_check.json").is_file()


def test_blank_answers_are_rejected_or_counted_as_warnings(color_data, encoder, tmp_path):
    from typer.testing import CliRunner

    from medvl.cli import build_app

    image = str(color_data.parent / "img0.png")
    rows = [
        {"id": "ok", "image": image, "conversations": _turns()},
        {"id": "blank", "image": image, "conversations": _turns(answer="")},
        {"id": "blank-second", "image": image,
         "conversations": _turns() + [{"from": "human", "value": "Sure?"}, {"from": "gpt", "value": " \n"}]},
    ]
    path = tmp_path / "blank.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    sources = [load_source(SourceConfig(path=str(path)))]
    report = check_sources(sources, encoder, DataConfig(sources=[SourceConfig(path=str(path))]), tmp_path / "strict")
    assert report.sources[0].valid == [0] and dict(report.sources[0].rejects) == {"empty_answer": 2}
    rejects = [json.loads(line) for line in (tmp_path / "strict" / REJECTS_NAME).read_text().splitlines()]
    assert [(r["id"], r["stage"], r["detail"]) for r in rejects] == [
        ("blank", "structure", "assistant turn 1 of 1 is blank"),
        ("blank-second", "structure", "assistant turn 2 of 2 is blank")]

    lenient = DataConfig(sources=[SourceConfig(path=str(path))], empty_answers="warn")
    report = check_sources(sources, encoder, lenient, tmp_path / "lenient")
    assert report.sources[0].valid == [0, 1, 2] and not report.sources[0].rejects
    assert dict(report.sources[0].warnings) == {"empty_answer": 2}
    saved = json.loads((tmp_path / "lenient" / "data_check.json").read_text())
    assert saved["sources"][0]["warnings"] == {"empty_answer": 2}

    shown = CliRunner().invoke(build_app(), ["data", "check", str(path)], env={"COLUMNS": "200"})
    assert shown.exit_code == 0 and "empty_answer: 2" in shown.output


def test_hf_dataset_source_with_embedded_images(tmp_path, encoder, tiny_model, rgb_image):
    import datasets

    rows = [{"id": f"h{i}", "image": [rgb_image], "conversations": _turns()} for i in range(3)]
    rows.append({"id": "bad", "image": [rgb_image], "conversations": _turns()[:1]})
    features = datasets.Features({
        "id": datasets.Value("string"), "image": datasets.Sequence(datasets.Image()),
        "conversations": [{"from": datasets.Value("string"), "value": datasets.Value("string")}],
    })
    datasets.Dataset.from_list(rows, features=features).save_to_disk(str(tmp_path / "hf"))
    data = DataConfig(sources=[SourceConfig(hf=str(tmp_path / "hf"))], max_length=128)
    source = load_source(data.sources[0])
    report = check_sources([source], encoder, data, tmp_path / "check", progress=False)
    assert report.sources[0].valid == [0, 1, 2]
    assert dict(report.sources[0].rejects) == {"bad_structure": 1}
    from medvl.train.dataset import TrainDataset

    dataset = TrainDataset([source], [(0, 0)], encoder, tiny_model[1].image_processor)
    assert dataset[0]["pixel_values"].shape == (1, 3, 32, 32)


_CHECKS_TOGETHER = """
import json, multiprocessing, sys
from medvl.train.config import DataConfig, SourceConfig
from medvl.train.sources import load_source
from medvl.train.validate import check_sources

def check(data, out, barrier):
    sources = [load_source(s) for s in data.sources]
    barrier.wait()
    check_sources(sources, None, data, out, progress=False)

if __name__ == "__main__":
    data = DataConfig(sources=[SourceConfig(path=sys.argv[1])], image_check="exists")
    fork = multiprocessing.get_context("fork")
    for trial in range(int(sys.argv[3])):
        barrier = fork.Barrier(2)
        checks = [fork.Process(target=check, args=(data, f"{sys.argv[2]}/{trial}", barrier)) for _ in range(2)]
        for process in checks:
            process.start()
        for process in checks:
            process.join()
            assert process.exitcode == 0
"""


def test_two_processes_checking_into_one_folder_list_each_reject_once(tmp_path):
    # the main process of each node of a multi-node run checks at once into a shared output_dir:
    # rejects.jsonl listed every reject twice in 8 of 20 such starts, while the report counted it once
    import subprocess
    import sys

    rows = [json.dumps({"id": str(i), "image": f"missing/{i}.png", "conversations": _turns()}) if i % 2 else "not json"
            for i in range(6000)]
    (tmp_path / "train.jsonl").write_text("\n".join(rows) + "\n")
    result = subprocess.run([sys.executable, "-c", _CHECKS_TOGETHER, str(tmp_path / "train.jsonl"),
                             str(tmp_path / "check"), "20"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    for trial in range(20):
        folder = tmp_path / "check" / str(trial)
        report = json.loads((folder / "data_check.json").read_text())
        rejects = (folder / REJECTS_NAME).read_text().splitlines()
        assert report["totals"]["rejected"] == 6000 and len(rejects) == 6000, f"start {trial}"


def test_mix_ratios_are_seeded_fractions_and_repeats():
    sources = [list(range(10)), list(range(100, 120))]
    entries = mix_entries(sources, [0.5, 1.5], seed=7)
    counts = Counter(source for source, _ in entries)
    assert counts == {0: 5, 1: 30}
    assert len({row for source, row in entries if source == 0}) == 5
    assert Counter(row for source, row in entries if source == 1).most_common(1)[0][1] == 2
    assert entries == mix_entries(sources, [0.5, 1.5], seed=7)
    assert entries != mix_entries(sources, [0.5, 1.5], seed=8)
    assert mix_entries(sources, [2.0, 1.0], seed=0) == [(0, r) for r in sources[0]] * 2 + [(1, r) for r in sources[1]]


def test_an_epoch_is_padded_to_whole_global_batches_with_every_sample_in_it():
    from medvl.train.dataset import epoch_sampler

    sampler = epoch_sampler(list(range(44)), global_batch=8)
    order = list(sampler)
    assert len(sampler) == len(order) == 48
    assert sorted(order[:44]) == list(range(44)) and len(set(order[44:])) == 4
    assert len(epoch_sampler(list(range(48)), global_batch=8)) == 48
    assert len(epoch_sampler(list(range(3)), global_batch=8)) == 8


def test_collator_pads_right_and_concatenates_images():
    from medvl.train.dataset import Collator

    examples = [
        {"input_ids": torch.tensor([5, 6, 7]), "labels": torch.tensor([-100, 6, 7]),
         "pixel_values": torch.zeros(2, 3, 4, 4)},
        {"input_ids": torch.tensor([8]), "labels": torch.tensor([-100])},
        {"input_ids": torch.tensor([9, 10]), "labels": torch.tensor([-100, 10]), "pixel_values": torch.ones(1, 3, 4, 4)},
    ]
    batch = Collator(pad_token_id=0)(examples)
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0], [9, 10, 0]]
    assert batch["labels"].tolist() == [[-100, 6, 7], [-100, -100, -100], [-100, 10, -100]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0], [1, 1, 0]]
    assert batch["pixel_values"][:, 0, 0, 0].tolist() == [0, 0, 1]
    assert (batch["num_tokens"], batch["num_images"], batch["num_supervised"]) == (6, 3, 3)
    assert Collator(0, pad_to_multiple_of=4)(examples)["input_ids"].shape == (3, 4)


def test_an_image_that_breaks_after_the_check_is_replaced_and_recorded(tmp_path, encoder, tiny_model):
    from PIL import Image

    from medvl.train.dataset import TrainDataset

    for name in ("a.png", "b.png"):
        Image.new("RGB", (20, 20), (0, 0, 200)).save(tmp_path / name)
    rows = [{"id": n, "image": f"{n}.png", "conversations": _turns()} for n in ("a", "b")]
    (tmp_path / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    source = load_source(SourceConfig(path=str(tmp_path / "d.jsonl")))
    dataset = TrainDataset([source], [(0, 0), (0, 1)], encoder, tiny_model[1].image_processor,
                           runtime_rejects=tmp_path / "runtime.jsonl")
    (tmp_path / "a.png").write_bytes(b"")  # emptied mid-run
    item = dataset[0]
    assert torch.equal(item["input_ids"], dataset.example(1)["input_ids"])
    logged = [json.loads(line) for line in (tmp_path / "runtime.jsonl").read_text().splitlines()]
    assert [(r["id"], r["stage"], r["reason"]) for r in logged] == [("a", "train", "image_empty")]
