"""Multiple choice: medvl's extraction of the letter a model chose.

Items are asked with HuatuoGPT-Vision's prompt (`medvl.benchmarks.prompts.choice_prompt`).

`extract_choice` reads the letter the model chose, in three stages, and says which one decided:

1. **letter** — a letter that is unmistakably an answer: the whole output ("B", "(B)", "**C**",
   "B."), a letter after an answer phrase ("The answer is B", "Answer: (C)", "答案是B", "选B"), a
   letter opening the output with punctuation ("B. CT", "C) ..."), or one distinct "(X)" /
   "**X**" in the text. Letters inside words never count, nor letters beyond the options, nor a
   lower-case "a" used as an article.
2. **text** — an option's text occurring as a whole phrase in the output. When several match,
   options contained in a longer matching option drop out ("pneumonia" inside "no pneumonia");
   two unrelated matches ("normal or pneumonia") are ambiguous: unparseable, no further stage.
3. **similarity** — only when no option text occurs: the option most similar to the whole output
   (difflib ratio on normalised text), if its ratio is at least `min_similarity` and strictly
   above the runner-up.

Anything else is unparseable (`letter=None`), is scored wrong, and counts in the parse-failure rate.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from medvl.benchmarks.base import LETTERS
from medvl.eval.metrics import normalize_answer

__all__ = ["ChoiceParse", "extract_choice"]

Method = Literal["letter", "text", "similarity", "none"]

_WRAP = r"[\s\*\(\[\{'\"`“”「【]*"
_UNWRAP = r"[\s\*\)\]\}'\"`“”」】\.:：,，。!！]*"
_WHOLE = re.compile(rf"^{_WRAP}([A-Ka-k]){_UNWRAP}$")
_KEYWORD = r"(?i:answer|option|choice|答案|选项|选择|选)\s*(?i:is|:|：|是|为|would be|should be)?\s*"
_PHRASE = re.compile(rf"{_KEYWORD}{_WRAP}([A-K])(?![A-Za-z])|{_KEYWORD}{_WRAP}([a-k])(?=\s*(?:$|[\.\)\]:,\*]))")
_OPENING = re.compile(rf"^{_WRAP}([A-K])(?:[\.\)\]:：]|\*\*)")
_MARKED = re.compile(r"\(([A-K])\)|\*\*([A-K])\*\*")


@dataclass(frozen=True)
class ChoiceParse:
    letter: str | None
    method: Method

    @property
    def parsed(self) -> bool:
        return self.letter is not None


def extract_choice(text: str, options: Sequence[str], min_similarity: float = 0.6) -> ChoiceParse:
    valid = LETTERS[: len(options)]
    text = (text or "").strip()
    if not text or not options:
        return ChoiceParse(None, "none")
    letter = _letter(text, valid)
    if letter:
        return ChoiceParse(letter, "letter")
    output = normalize_answer(text)
    matched = _by_text(output, options)
    if matched:
        return ChoiceParse(matched[0], "text") if len(matched) == 1 else ChoiceParse(None, "none")
    letter = _by_similarity(output, options, min_similarity)
    return ChoiceParse(letter, "similarity") if letter else ChoiceParse(None, "none")


def _letter(text: str, valid: str) -> str | None:
    whole = _WHOLE.match(text)
    if whole and whole.group(1).upper() in valid:
        return whole.group(1).upper()
    for match in _PHRASE.finditer(text):
        found = (match.group(1) or match.group(2)).upper()
        if found in valid:
            return found
    opening = _OPENING.match(text)
    if opening and opening.group(1) in valid:
        return opening.group(1)
    marked = {m.group(1) or m.group(2) for m in _MARKED.finditer(text)} & set(valid)
    return marked.pop() if len(marked) == 1 else None


def _by_text(output: str, options: Sequence[str]) -> list[str]:
    """Letters of the maximal options whose text occurs in the output (one per distinct text)."""
    padded = f" {output} "
    normalized = [normalize_answer(o) for o in options]
    hits = [i for i, o in enumerate(normalized) if o and f" {o} " in padded]
    maximal = [i for i in hits if not any(j != i and f" {normalized[i]} " in f" {normalized[j]} " for j in hits)]
    first_by_text = {normalized[i]: LETTERS[i] for i in reversed(maximal)}
    return list(first_by_text.values())


def _by_similarity(output: str, options: Sequence[str], threshold: float) -> str | None:
    ratios = sorted(
        ((difflib.SequenceMatcher(None, output, normalize_answer(o)).ratio(), i) for i, o in enumerate(options)),
        reverse=True,
    )
    best, index = ratios[0]
    runner_up = ratios[1][0] if len(ratios) > 1 else -1.0
    return LETTERS[index] if best >= threshold and best > runner_up else None
