"""It must learn: a tiny model trained on easy-vqa answers from the image, far above the question alone.

easy-vqa (MIT, installs offline) draws one coloured shape on a white 64x64 image. The open
questions ("what color is the shape?", "what shape is in the image?", "what is the blue shape?")
cannot be answered from the text. A from-scratch ViT (1 layer) + linear projector + 2-layer LLM with
SmolLM2's tokenizer trains through `medvl train`'s own code path; answers come from greedy
generation (`medvl.model.generate.Generator`). Baselines measured the same way: the same model
with a blank image, and the best any question-only model can do (the most frequent training
answer of each question text).
"""

from __future__ import annotations

import json
import random
from collections import Counter, defaultdict
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

TRAIN_SAMPLES, TEST_SAMPLES = 3000, 400


def open_questions(questions: list[str], answers: list[str], image_ids: list[int]) -> list[tuple[str, str, int]]:
    return [(q, a, i) for q, a, i in zip(questions, answers, image_ids) if q.startswith("what")]


def learning_config(tokenizer: Path, data: Path, out: Path):
    from medvl.train.config import TrainConfig

    return TrainConfig.model_validate({
        "stage": "instruct",
        "trainable": {"vision": True},  # the tower starts from random weights
        "model": {"spec": {
            "vision": {"image_size": 64, "patch_size": 16, "hidden_size": 64, "num_layers": 1, "num_heads": 2,
                       "intermediate_size": 128},
            "text": {"tokenizer": str(tokenizer), "hidden_size": 64, "num_layers": 2, "num_heads": 4,
                     "num_kv_heads": 2, "intermediate_size": 128, "tie_word_embeddings": True},
            "projector": "linear", "vision_feature_layer": -1, "chat_template": "chatml", "seed": 0,
        }},
        "data": {"sources": [{"path": str(data)}], "max_length": 64},
        "optim": {"lr": 1e-3, "batch_size": 32, "max_steps": 600, "warmup_ratio": 0.05, "weight_decay": 0.0},
        "output_dir": str(out),
        "save": {"every_steps": 10_000, "resume": "never"},
        "logging": {"every_steps": 50, "report_to": [], "progress_bar": False},
        "seed": 0,
    })


def test_tiny_model_learns_easy_vqa_from_the_image(smol_tokenizer, tmp_path):
    easy_vqa = pytest.importorskip("easy_vqa")
    from PIL import Image

    from medvl.io.images import load_image
    from medvl.model.generate import GenerationSettings, Generator
    from medvl.train.runner import run_training

    train = open_questions(*easy_vqa.get_train_questions())
    train_paths = easy_vqa.get_train_image_paths()
    train = random.Random(0).sample(train, TRAIN_SAMPLES)
    data = tmp_path / "easy_vqa_train.jsonl"
    data.write_text("".join(json.dumps({
        "id": f"e{index}", "image": train_paths[image],
        "conversations": [{"from": "human", "value": f"<image>\n{question}"}, {"from": "gpt", "value": answer}],
    }) + "\n" for index, (question, answer, image) in enumerate(train)), encoding="utf-8")

    result = run_training(learning_config(smol_tokenizer, data, tmp_path / "run"))
    assert result.data.valid == TRAIN_SAMPLES

    test = open_questions(*easy_vqa.get_test_questions())[:TEST_SAMPLES]
    test_paths = easy_vqa.get_test_image_paths()
    conversations = [[{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": q}]}] for q, _, _ in test]
    generator = Generator.from_pretrained(result.output_dir, settings=GenerationSettings(max_new_tokens=4, batch_size=64))

    def accuracy(images: list[list], kind: str = "") -> float:
        rows = [(r.text, a) for r, (q, a, _) in zip(generator.generate(conversations, images), test) if kind in q]
        return sum(text == answer for text, answer in rows) / len(rows)

    real = [[load_image(test_paths[image])] for _, _, image in test]
    blank = [[Image.new("RGB", (64, 64), (255, 255, 255))] for _ in test]
    with_image, blank_image = accuracy(real), accuracy(blank)
    color = accuracy(real, "color")
    by_question: dict[str, Counter] = defaultdict(Counter)
    for question, answer, _ in train:
        by_question[question][answer] += 1
    question_only = sum(by_question[q].most_common(1)[0][0] == a for q, a, _ in test if q in by_question) / len(test)
    print(f"easy-vqa open questions: accuracy {with_image:.3f} (colour {color:.3f}); blank image {blank_image:.3f}; "
          f"best question-only {question_only:.3f}; final loss {result.final_loss:.3f}")
    assert with_image >= max(blank_image, question_only) + 0.25
    assert color >= 0.7
