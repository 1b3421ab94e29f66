"""Image-grounded concept questions derived from a benchmark split's own labels.

Most natural questions of a small medical VQA set can be answered from the question alone
("Is there a pneumothorax?" is mostly "no"), so a model fine-tuned on them learns the language
prior and barely reads the image. This module turns what a split says about each *image* — its
organ, imaging modality and plane — into balanced questions whose answer only the image gives:
"Is this an MRI?" asked of MRI and non-MRI images alike, "What imaging modality is this?".

Where the facts come from (the split's items only, so a train split never sees test answers):
- item metadata: `meta["organ"]` (VQA-RAD `image_organ`, SLAKE `location`) and `meta["modality"]`
  (SLAKE, OmniMedVQA);
- answers to the split's questions about the attribute (`meta["question_type"]` MODALITY / PLANE,
  as VQA-RAD and SLAKE label them): an open answer names the label ("MRI - T2 weighted" → MRI), a
  yes/no answer to a question naming one label votes for (yes) or against (no) it. Questions with
  a negation ("What type of imaging does this not represent?") are skipped.
An image's label is the value with the most votes; a tie between two values is a conflict and
the attribute is left out for that image (counted in the stats).

Each (image, attribute, label) gives a "yes" question about its label, a "no" question about
another label of the same attribute (seeded choice among the labels the split uses), and an open
question; `description` gives a one-line caption ("Axial CT of the abdomen.") for alignment.
The questions are `VQAItem`s, so they are written like any benchmark item.
"""

from __future__ import annotations

import random
import re
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any, Iterable

__all__ = ["ATTRIBUTES", "ConceptStats", "image_facts", "concept_items", "description"]

# label → pattern (lower-case text), for the attributes read from answers
VOCABULARY: dict[str, dict[str, str]] = {
    "modality": {
        "CT": r"\bct\b|computed tomograph|\bcat scan",
        "MRI": r"\bmri?\b|\bmr[- ]|\bt1\b|\bt2\b|flair|\bdwi\b|\badc\b|diffusion[- ]weighted|magnetic resonance",
        "X-ray": r"x-?\s?ray|radiograph|plain film|\bcxr\b|\bxr\b",
        "ultrasound": r"ultrasound|sonogra|\bus\b",
    },
    "plane": {
        "axial": r"\baxial\b|\btransverse\b",
        "coronal": r"\bcoronal\b",
        "sagittal": r"\bsagg?itt?al\b",
        "PA": r"\bpa\b|posterior[- ]?anterior|posteroanterior",
        "AP": r"\bap\b|anterior[- ]?posterior|anteroposterior",
    },
}
ATTRIBUTES = ("organ", "modality", "plane")
ORGAN_NAMES = {"HEAD": "head", "ABD": "abdomen", "CHEST": "chest"}  # VQA-RAD's image_organ codes
NEGATION = re.compile(r"\bnot\b|n't\b")

# how each label is named inside a question, and the question forms per attribute
PHRASES = {
    "modality": {"CT": "a CT scan", "MRI": "an MRI", "X-ray": "an X-ray", "ultrasound": "an ultrasound image"},
    "plane": {"axial": "an axial image", "coronal": "a coronal image", "sagittal": "a sagittal image",
              "PA": "a PA film", "AP": "an AP film"},
}
YES_NO = {
    "organ": ["Is this an image of the {x}?", "Does this image show the {x}?", "Is this a study of the {x}?"],
    "modality": ["Is this {x}?", "Is this image {x}?", "Was this taken as {x}?"],
    "plane": ["Is this {x}?", "Was this image taken as {x}?"],
}
OPEN = {
    "organ": ["What part of the body is shown?", "Which body region is imaged?", "What organ system is shown?"],
    "modality": ["What imaging modality is this?", "What type of image is this?", "How was this image taken?"],
    "plane": ["In what plane is this image?", "Which plane is this image taken in?"],
}


@dataclass
class ConceptStats:
    """What the derivation found: images with each attribute, conflicts left out, questions written."""

    images: int = 0
    labelled: dict[str, int] = field(default_factory=dict)
    conflicts: dict[str, int] = field(default_factory=dict)
    labels: dict[str, dict[str, int]] = field(default_factory=dict)
    questions: int = 0

    def to_json(self) -> dict[str, Any]:
        return {"images": self.images, "labelled": self.labelled, "conflicts": self.conflicts,
                "labels": self.labels, "questions": self.questions}


def _labels(attribute: str, text: str) -> set[str]:
    lowered = text.lower()
    return {label for label, pattern in VOCABULARY[attribute].items() if re.search(pattern, lowered)}


def _organ(value: Any) -> str | None:
    text = str(value or "").strip()
    return ORGAN_NAMES.get(text.upper(), text.lower()) or None


def _votes(items: Iterable[Any]) -> dict[str, dict[str, Counter]]:
    """{image: {attribute: Counter(label → votes)}} from metadata and answers (see the module docstring)."""
    from medvl.benchmarks import yes_no_answer

    votes: dict[str, dict[str, Counter]] = defaultdict(lambda: defaultdict(Counter))
    for item in items:
        if len(item.images) != 1:
            continue
        image = votes[item.images[0]]
        if organ := _organ(item.meta.get("organ")):
            image["organ"][organ] += 1
        if (modality := _labels("modality", str(item.meta.get("modality") or ""))) and len(modality) == 1:
            image["modality"][modality.pop()] += 1
        attribute = str(item.meta.get("question_type", "")).strip().lower()
        if attribute not in VOCABULARY or NEGATION.search(item.question.lower()):
            continue
        yes_no = yes_no_answer(item.answer)
        if yes_no is None:
            for label in _labels(attribute, item.answer):
                image[attribute][label] += 2
        elif len(named := _labels(attribute, item.question)) == 1:
            image[attribute][named.pop()] += 1 if yes_no == "yes" else -1
    return votes


def image_facts(items: Iterable[Any]) -> tuple[dict[str, dict[str, str]], ConceptStats]:
    """{image path: {attribute: label}} for the items' single-image questions, and the stats."""
    facts: dict[str, dict[str, str]] = {}
    stats = ConceptStats(labelled=dict.fromkeys(ATTRIBUTES, 0), conflicts=dict.fromkeys(ATTRIBUTES, 0))
    for image, by_attribute in sorted(_votes(items).items()):
        facts[image] = {}
        for attribute in ATTRIBUTES:
            ranked = [(label, n) for label, n in by_attribute.get(attribute, Counter()).most_common() if n > 0]
            if not ranked:
                continue
            if len(ranked) > 1 and ranked[0][1] == ranked[1][1]:
                stats.conflicts[attribute] += 1
                continue
            facts[image][attribute] = ranked[0][0]
            stats.labelled[attribute] += 1
    stats.images = len(facts)
    stats.labels = {a: dict(Counter(f[a] for f in facts.values() if a in f)) for a in ATTRIBUTES}
    return facts, stats


def _phrase(attribute: str, label: str) -> str:
    return PHRASES.get(attribute, {}).get(label, label)


def concept_items(items: Iterable[Any], benchmark: str, seed: int = 0) -> tuple[list[Any], ConceptStats]:
    """Balanced yes/no and open questions about each image's organ, modality and plane."""
    facts, stats = image_facts(items)
    values = {a: sorted(stats.labels[a]) for a in ATTRIBUTES}
    out: list[Any] = []
    for image, known in facts.items():
        rng = random.Random(f"{seed}:{image}")
        for attribute, label in known.items():
            others = [v for v in values[attribute] if v != label]
            if not others:  # one label in the whole split: nothing to tell apart
                continue
            asked = [(label, "yes"), (rng.choice(others), "no")]
            for value, answer in asked:
                question = rng.choice(YES_NO[attribute]).format(x=_phrase(attribute, value))
                out.append(_item(benchmark, image, attribute, f"{answer}-{len(out)}", question, answer, "closed"))
            out.append(_item(benchmark, image, attribute, f"open-{len(out)}", rng.choice(OPEN[attribute]), label,
                             "open"))
    stats.questions = len(out)
    return out, stats


def _item(benchmark: str, image: str, attribute: str, tag: str, question: str, answer: str, kind: str) -> Any:
    from pathlib import Path

    from medvl.benchmarks import VQAItem

    return VQAItem(id=f"{benchmark}-concept-{Path(image).stem}-{attribute}-{tag}", benchmark=f"{benchmark}-concepts",
                   split="train", question=question, answer=answer, answer_type=kind, images=[image],
                   meta={"concept": attribute, "question_type": attribute.upper()})


def description(known: dict[str, str]) -> str | None:
    """A one-line caption from an image's facts: "Axial CT of the abdomen." (None without any fact)."""
    if not known:
        return None
    what = known.get("modality", "image")
    plane = known.get("plane")
    text = f"{plane} {what}" if plane else what
    text = text[0].upper() + text[1:]
    return f"{text} of the {known['organ']}." if "organ" in known else f"{text}."
