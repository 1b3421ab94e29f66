"""The clinical facts of a caption that must keep two near-identical captions apart in semantic dedup.

Two captions an embedding puts close together ("Pre-operative orthopantomograph" / "Post-operative
orthopantomograph", "three months" / "nine months after SIRT", "case 2" / "case 3") describe
different images. `clinical_facts(caption)` extracts, per kind:

- `numbers`: digits and number words ("three" = 3, "second" = 2), including sizes, doses and times;
- `laterality`: left, right, bilateral — how often each is said, so that swapping one of two
  "left"s is a difference;
- `phase`: pre-, intra- and post-operative or treatment, before / after, follow-up (counted);
- `negation`: the negation cues ("no", "without", "absence of", "negative for", ...), counted;
- `index`: case, patient, figure, panel and slice indices ("case 2", "Fig. 3b", "panel C");
- `modality`: the imaging modalities named (`vocab.modalities_of`);
- `anatomy`: the anatomical terms named, counted (the anatomy section of the shipped vocabulary,
  with its adjective forms: "renal" is "kidney").

`clinical_difference(a, b)` names the first kind whose facts differ (None: nothing differs). Semantic
dedup compares `fact_signature`s: one 64-bit digest per kind, so memory holds 56 bytes per record,
not its caption.
"""

from __future__ import annotations

import hashlib
import re

import numpy as np

from medvl.curate.vocab import load_vocabulary_section, modalities_of, tokenize

__all__ = ["KINDS", "clinical_facts", "clinical_difference", "fact_signature", "signature_difference"]

KINDS = ("numbers", "laterality", "phase", "negation", "index", "modality", "anatomy")

_NUMBER_WORDS = {
    word: value
    for value, words in enumerate(
        [
            ("zero", "none"),
            ("one", "first", "single", "once"),
            ("two", "second", "twice", "both"),
            ("three", "third", "thrice"),
            ("four", "fourth"),
            ("five", "fifth"),
            ("six", "sixth"),
            ("seven", "seventh"),
            ("eight", "eighth"),
            ("nine", "ninth"),
            ("ten", "tenth"),
            ("eleven", "eleventh"),
            ("twelve", "twelfth"),
        ]
    )
    for word in words
}
_NUMBER = re.compile(r"\d+(?:[.,]\d+)?")
_LATERALITY = {"left": "left", "right": "right", "bilateral": "bilateral", "bilaterally": "bilateral",
               "sinistra": "left", "dextra": "right"}
_PHASES = (
    ("pre", re.compile(r"\bpre[\s-]?(?:operative(?:ly)?|op|treatment|procedur\w*|interventional|surgical)\b|"
                       r"\bbefore\b|\bprior to\b|\bbaseline\b")),
    ("intra", re.compile(r"\bintra[\s-]?(?:operative(?:ly)?|op|procedur\w*)\b|\bduring\b")),
    ("post", re.compile(r"\bpost[\s-]?(?:operative(?:ly)?|op|treatment|procedur\w*|interventional|surgical)\b|"
                        r"\bafter\b|\bfollowing\b|\bfollow[\s-]?up\b")),
)
_NEGATION = re.compile(
    r"\b(?:no|not|without|absence of|absent|negative for|free of|ruled out|neither|nor|never|unremarkable)\b"
)
_INDEX = re.compile(
    r"\b(case|patient|subject|participant|figure|fig|panel|slice|dog|cat|mouse|rat)"
    r"\s*\.?\s*(?:no\.?|number|#)?\s*([0-9]+[a-z]?|[a-h]\b|[ivx]{1,4}\b)",
    re.IGNORECASE,
)


def _counted(values: list[str]) -> frozenset[str]:
    """A multiset as a set: each value with how often it occurs ("left#2")."""
    return frozenset(f"{value}#{values.count(value)}" for value in values)


def _numbers(text: str, tokens: list[str]) -> frozenset[str]:
    values = [n.replace(",", ".") for n in _NUMBER.findall(text)]
    values += [str(_NUMBER_WORDS[t]) for t in tokens if t in _NUMBER_WORDS]
    return _counted(values)


def clinical_facts(caption: str) -> dict[str, frozenset[str]]:
    """Per kind of `KINDS`, the facts the caption states (see the module docstring)."""
    text = caption.lower()
    tokens = tokenize(text)
    sides = [_LATERALITY[t] for t in tokens if t in _LATERALITY]
    if "both" in tokens and {"left", "right"} <= set(sides):
        sides = ["bilateral"]
    return {
        "numbers": _numbers(text, tokens),
        "laterality": _counted(sides),
        "phase": _counted([name for name, pattern in _PHASES for _ in pattern.findall(text)]),
        "negation": _counted(_NEGATION.findall(text)),
        "index": frozenset(f"{kind.lower().rstrip('.')[:3]}:{value.lower()}" for kind, value in _INDEX.findall(caption)),
        "modality": frozenset(modalities_of(caption) - {"chart"}),
        "anatomy": _counted(load_vocabulary_section("anatomy").occurrences(caption)),
    }


def clinical_difference(a: str, b: str) -> str | None:
    """The first kind (in `KINDS` order) whose facts differ between two captions, else None."""
    facts_a, facts_b = clinical_facts(a), clinical_facts(b)
    return next((kind for kind in KINDS if facts_a[kind] != facts_b[kind]), None)


def fact_signature(caption: str) -> np.ndarray:
    """One 64-bit digest per kind of `KINDS` (uint64[7]): equal digests, equal facts."""
    facts = clinical_facts(caption)
    digests = [
        int.from_bytes(hashlib.blake2b("\x1f".join(sorted(facts[k])).encode(), digest_size=8).digest(), "big")
        for k in KINDS
    ]
    return np.asarray(digests, dtype=np.uint64)


def signature_difference(a: np.ndarray, b: np.ndarray) -> str | None:
    """The first kind whose digests differ, else None."""
    differs = np.flatnonzero(a != b)
    return KINDS[int(differs[0])] if len(differs) else None
