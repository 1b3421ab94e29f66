"""Can the demo's model read an image at all? A held-out concept probe with paired controls.

VQA-RAD's own test questions mostly ask what 1.8k training pairs cannot teach (is there a
pneumothorax?), so the demo's closed accuracy barely moves with the image. This probe isolates
the image pathway (tower → projector → LLM) from that data problem:

- questions: the balanced organ / modality / plane questions `medvl.train.concepts` derives from
  the VQA-RAD train split's own labels ("Is this an MRI?" asked of MRI and non-MRI images alike);
- split by image: a fifth of the images (by a hash of the file name) is held out; the model trains
  on the other images' questions only, with the demo's model, finetune recipe and prior settings
  (the demo config plus any overrides given, e.g. `prior.enabled=false` for a random tower); the
  prior itself is distilled label-free on all train-split images, the held-out ones included;
- score: the held-out images' yes/no questions, answered with the real image, with another
  held-out image (shuffled: the seeded derangement of the evaluation's control,
  `eval.baselines.image_derangement`, so no question sees its own image) and with no image; yes is the answer of exactly half of them.
  Differences are paired by question (exact McNemar p) with Wilson 95% intervals.

    python bench/image_grounding.py OUT [demo overrides ...]    # e.g. precision=bf16 prior.enabled=false

Writes OUT/grounding.json (the table, and whether each question was answered right under each
condition, to pair two runs) and prints the table. Reruns reuse the trained model in OUT.
"""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
HELD_OUT_EVERY = 5  # one image in five


def held_out(image: str) -> bool:
    return int(hashlib.sha1(Path(image).name.encode()).hexdigest(), 16) % HELD_OUT_EVERY == 0


def split(vqa_rad: Path) -> tuple[list[Any], list[Any]]:
    """(training questions, held-out yes/no questions) from the train split's concept questions."""
    from medvl.benchmarks import load_benchmark
    from medvl.train.concepts import concept_items

    items, _ = concept_items(load_benchmark("vqa_rad", vqa_rad, split="train").items, "vqa_rad", seed=0)
    train = [item for item in items if not held_out(item.images[0])]
    probe = [item for item in items if held_out(item.images[0]) and item.answer_type == "closed"]
    return train, probe


def train(out: Path, overrides: list[str], questions: list[Any]) -> dict[str, Any]:
    """The demo's model (with its visual prior unless disabled) fine-tuned on `questions` as the demo's finetune."""
    from medvl.benchmarks import default_prompt
    from medvl.config import load_config
    from medvl.demo.config import DemoConfig
    from medvl.demo.run import build, data_source, train_stage, visual_prior
    from medvl.io.jsonl import write_jsonl

    config = load_config(DemoConfig, None, [f"output_dir={out}", *overrides])
    vqa_rad = Path(config.vqa_rad) if config.vqa_rad else ROOT / "data" / "vqa-rad"
    if (out / "model" / "model.safetensors").is_file():
        return json.loads((out / "train.json").read_text())
    write_jsonl(out / "train.jsonl", [q.to_record(default_prompt(q, "short"), q.answer) for q in questions])
    prior = visual_prior(config, vqa_rad)
    build(config, out / "init", prior.get("folder"))
    summary = train_stage(config, "finetune", out / "init", [data_source(out / "train.jsonl")], config.finetune,
                          out / "model")
    summary["prior"] = prior
    (out / "train.json").write_text(json.dumps(summary, indent=1))
    return summary


def answers(generator: Any, probe: list[Any], images: list[str | None]) -> list[bool]:
    """Whether the model's greedy answer to each probe question, shown `images[i]`, is right under
    medvl's strict closed scorer (`eval.metrics.closed_correct`, as the demo scores VQA-RAD)."""
    from medvl.benchmarks import default_prompt
    from medvl.eval.metrics import closed_correct
    from medvl.io.images import load_image
    from medvl.model.generate import GenerationSettings

    conversations, shown = [], []
    for item, image in zip(probe, images):
        text = {"type": "text", "text": default_prompt(item, "short")}
        conversations.append([{"role": "user", "content": [{"type": "image"}, text] if image else [text]}])
        shown.append([load_image(image)] if image else [])
    results = generator.generate(conversations, shown, GenerationSettings(max_new_tokens=4, batch_size=32))
    return [closed_correct(r.text, item.answer) for r, item in zip(results, probe)]


def score(right: dict[str, list[bool]]) -> dict[str, Any]:
    from medvl.eval.stats import mcnemar_exact, wilson_interval

    n = len(right["image"])
    table: dict[str, Any] = {"n": n}
    for name, hits in right.items():
        interval = wilson_interval(sum(hits), n)
        table[name] = {"accuracy": sum(hits) / n, "ci95": list(interval)}
        if name != "image":
            only_image = sum(a and not b for a, b in zip(right["image"], hits))
            only_control = sum(b and not a for a, b in zip(right["image"], hits))
            table[name]["image_minus_this"] = (only_image - only_control) / n
            table[name]["mcnemar_p"] = mcnemar_exact(only_image, only_control)
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("overrides", nargs="*", help="demo config overrides, e.g. precision=bf16")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    questions, probe = split(ROOT / "data" / "vqa-rad")
    trained = train(args.out, args.overrides, questions)
    from medvl.eval.baselines import image_derangement
    from medvl.model.generate import Generator

    images = [item.images[0] for item in probe]
    donors, _ = image_derangement(probe, seed=0)  # 68 distinct images: every question gets a donor
    shuffled = [donors[item.id].images[0] for item in probe]

    generator = Generator.from_pretrained(args.out / "model")  # once for the three conditions
    right = {name: answers(generator, probe, shown)
             for name, shown in (("image", images), ("shuffled", shuffled), ("no_image", [None] * len(probe)))}
    result = {"overrides": args.overrides, "train_questions": len(questions), "steps": trained["steps"],
              "final_loss": trained["final_loss"], "yes_share": sum(q.answer == "yes" for q in probe) / len(probe),
              **score(right), "right": right, "questions": [q.id for q in probe]}
    (args.out / "grounding.json").write_text(json.dumps(result, indent=1))
    print(f"held-out concept probe ({' '.join(args.overrides) or 'demo defaults'}): n={result['n']}, "
          f"{result['train_questions']} training questions, {result['steps']} steps")
    for name in right:
        row = result[name]
        extra = (f"  image − this {row['image_minus_this'] * 100:+.1f} pts, McNemar p={row['mcnemar_p']:.2g}"
                 if name != "image" else "")
        print(f"  {name:9s} {row['accuracy'] * 100:5.1f}%  [{row['ci95'][0] * 100:.1f}, {row['ci95'][1] * 100:.1f}]"
              + extra)


if __name__ == "__main__":
    main()
