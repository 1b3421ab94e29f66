"""How much can the image add on VQA-RAD's test split? A rule that only recognises the image.

VQA-RAD's test images are (all but one) train images, and no test question repeats a train
question about the same image. What a train image's questions say about it still carries over:
most of a case's findings are present, or most are absent. This rule answers each yes/no closed
test question with the majority answer of the train split's yes/no questions on the same image
(a tie or an unseen image: the train split's majority answer); it never reads the question.
Its control is the same rule shown another test item's image: the evaluation's shuffled control
(`eval.baselines.image_derangement`, seed 0, the same mapping `medvl demo` uses). Differences
are paired by question (exact McNemar p), with Wilson 95% intervals.

    python bench/vqa_rad_image_prior.py [--vqa-rad data/vqa-rad] [--run runs/demo]

With `--run` (a finished demo folder) it also prints how often the demo's model says "yes" on
images whose train answers lean yes against those that lean no, with its own image, a shuffled
one and none: how much of the images' answer prior the model picked up; and the rule laid over the
run's question-only answers on all closed questions: what a perfect memory of each image's train
answers would add to the question alone.
"""

from __future__ import annotations

import argparse
import json
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
YES_NO = ("yes", "no")


def normalised(answer: str) -> str:
    return answer.strip().strip(".").lower()


def image_leans(train: list[Any]) -> tuple[dict[str, str], str]:
    """{image: "yes" | "no"} where its train yes/no answers have a majority, and the split's majority answer."""
    counts: dict[str, Counter[str]] = defaultdict(Counter)
    for item in train:
        if normalised(item.answer) in YES_NO:
            counts[item.images[0]][normalised(item.answer)] += 1
    overall = sum(counts.values(), Counter()).most_common(1)[0][0]
    leans = {image: max(YES_NO, key=c.__getitem__) for image, c in counts.items() if c["yes"] != c["no"]}
    return leans, overall


def rule_scores(vqa_rad: Path) -> tuple[dict[str, Any], dict[str, str], list[Any], list[Any], dict[str, Any]]:
    """(whether the rule answers each yes/no test question right with its own image and with the shuffled
    one, the train images' leans, those questions, the whole test split, each test item's shuffled donor)."""
    from medvl.benchmarks import load_benchmark
    from medvl.eval.baselines import image_derangement

    train = load_benchmark("vqa_rad", vqa_rad, split="train").items
    test = load_benchmark("vqa_rad", vqa_rad, split="test").items
    leans, overall = image_leans(train)
    donors, _ = image_derangement([item for item in test if item.images], seed=0)
    yes_no = [item for item in test if item.answer_type == "closed" and normalised(item.answer) in YES_NO]

    def right(image: str, item: Any) -> bool:
        return leans.get(image, overall) == normalised(item.answer)

    hits = {"own": [right(item.images[0], item) for item in yes_no],
            "shuffled": [right(donors[item.id].images[0], item) for item in yes_no]}
    return hits, leans, yes_no, test, donors


def main() -> None:
    from medvl.eval.stats import mcnemar_exact, wilson_interval

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vqa-rad", type=Path, default=ROOT / "data" / "vqa-rad")
    parser.add_argument("--run", type=Path, help="a finished `medvl demo` folder: the model's yes-rate by image lean")
    args = parser.parse_args()

    hits, leans, yes_no, test, donors = rule_scores(args.vqa_rad)
    own, shuffled = hits["own"], hits["shuffled"]
    print(f"VQA-RAD test, {len(yes_no)} yes/no closed questions ({sum(normalised(i.answer) == 'yes' for i in yes_no)} "
          f"yes); {len(leans)} train images lean one way")
    for name, right in (("the image's own train answers", own), ("another test image's (shuffled)", shuffled)):
        low, high = wilson_interval(sum(right), len(right))
        print(f"  {name:34s} {100 * sum(right) / len(right):5.1f} [{100 * low:.1f}, {100 * high:.1f}]")
    only_own = sum(a and not b for a, b in zip(own, shuffled))
    only_shuffled = sum(b and not a for a, b in zip(own, shuffled))
    print(f"  difference {100 * (sum(own) - sum(shuffled)) / len(yes_no):+.1f} points, "
          f"{only_own} / {only_shuffled} discordant, exact McNemar p = {mcnemar_exact(only_own, only_shuffled):.2g}")
    if args.run:
        model_yes_rates(args.run, leans, yes_no)
        on_question_only(args.run, leans, test, donors)


def model_yes_rates(run: Path, leans: dict[str, str], yes_no: list[Any]) -> None:
    """The demo model's share of "yes" answers on the yes/no questions, by how the image's train answers lean."""
    asked = {item.id for item in yes_no}
    gold: dict[str, list[bool]] = defaultdict(list)
    for item in yes_no:
        gold[leans.get(item.images[0], "neither")].append(normalised(item.answer) == "yes")
    print("yes-rate by image lean (gold: " + ", ".join(
        f"{lean} {100 * sum(v) / len(v):.0f}% of {len(v)}" for lean, v in sorted(gold.items())) + ")")
    for system in ("model", "shuffled", "question_only"):
        said: dict[str, list[bool]] = defaultdict(list)
        for line in (run / "eval" / f"open_closed-{system}" / "predictions.jsonl").open():
            prediction = json.loads(line)
            if prediction["id"] in asked:
                lean = leans.get(prediction["images"][0], "neither")
                said[lean].append(normalised(prediction["output"] or "") == "yes")
        rates = ", ".join(f"{lean} {100 * sum(v) / len(v):.0f}%" for lean, v in sorted(said.items()))
        print(f"  {system:14s} {rates}")


def on_question_only(run: Path, leans: dict[str, str], test: list[Any], donors: dict[str, Any]) -> None:
    """The rule on top of the run's question-only answers, on all closed test questions: where the
    question-only model says yes or no and the image leans, the lean; else its answer. With each
    question's own image, with the shuffled control's, and the question-only answers alone."""
    from medvl.eval.metrics import closed_correct
    from medvl.eval.stats import mcnemar_exact

    blind = {}
    for line in (run / "eval" / "open_closed-question_only" / "predictions.jsonl").open():
        prediction = json.loads(line)
        blind[prediction["id"]] = prediction["output"] or ""
    closed = [item for item in test if item.answer_type == "closed" and item.id in blind]

    def answer(item: Any, image: str) -> str:
        said = blind[item.id]
        return leans.get(image, said) if normalised(said) in YES_NO else said

    right = {"own image": [closed_correct(answer(item, item.images[0]), item.answer) for item in closed],
             "shuffled": [closed_correct(answer(item, donors[item.id].images[0]), item.answer) for item in closed],
             "question-only": [closed_correct(blind[item.id], item.answer) for item in closed]}
    print(f"the rule on the question-only answers, {len(closed)} closed questions: " + ", ".join(
        f"{name} {100 * sum(hits) / len(hits):.1f}" for name, hits in right.items()))
    for control in ("shuffled", "question-only"):
        only_own = sum(a and not b for a, b in zip(right["own image"], right[control]))
        only_control = sum(b and not a for a, b in zip(right["own image"], right[control]))
        print(f"  own image - {control}: {only_own} / {only_control} discordant, "
              f"p = {mcnemar_exact(only_own, only_control):.2g}")


if __name__ == "__main__":
    main()
