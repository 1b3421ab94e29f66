"""medvl's answer metrics, each named for what it measures.

- `normalize_answer`: lower case, Unicode NFKC, punctuation to spaces (a decimal point between
  digits is kept), number words zero–ten to digits, articles a/an/the dropped, spaces collapsed.
- `leading_yes_no`: the yes/no an answer *starts with* ("Yes, there is..." → yes). Only the whole
  words "yes"/"no" count, so "normal", "not", "node" are neither; Chinese answers (SLAKE zh) use
  their leading 是/有/包含/可以/存在 or 不/没/否/无.
- `closed_correct`: closed accuracy. A yes/no reference needs the prediction's leading yes/no to
  match; any other closed reference ("CT", "left") needs the normalised prediction to equal it or
  to start with it (after an "answer:"/"the answer is" prefix).
- `exact_match`: normalised equality.
- `token_recall` / `token_precision` / `token_f1`: bag-of-tokens overlap with clipped counts
  (a prediction word counts at most as often as it occurs in the reference), so repeating a word
  cannot raise a score. Chinese text is split into characters.
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter

from medvl.benchmarks.base import yes_no_answer

__all__ = [
    "closed_correct",
    "exact_match",
    "leading_yes_no",
    "normalize_answer",
    "strip_answer_prefix",
    "token_f1",
    "token_precision",
    "token_recall",
    "tokens",
]

NUMBER_WORDS = {"zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5", "six": "6",
                "seven": "7", "eight": "8", "nine": "9", "ten": "10"}
ARTICLES = {"a", "an", "the"}
_KEEP_DECIMAL = re.compile(r"(?<=\d)\.(?=\d)")
_CJK = r"\u3400-\u9fff\uf900-\ufaff"
_TOKEN = re.compile(rf"[{_CJK}]|[^\s{_CJK}]+")
_ANSWER_PREFIX = re.compile(r"^(?:final answer|answer)(?: is)? ")
ZH_NO = ("不", "没", "否", "无")
ZH_YES = ("是", "有", "包含", "可以", "存在", "对")


def normalize_answer(text: str) -> str:
    text = unicodedata.normalize("NFKC", str(text)).lower()
    text = _KEEP_DECIMAL.sub("\0", text)
    text = "".join(" " if unicodedata.category(c)[0] in "PS" else c for c in text).replace("\0", ".")
    words = [NUMBER_WORDS.get(w, w) for w in text.split()]
    return " ".join(w for w in words if w not in ARTICLES)


def tokens(text: str) -> list[str]:
    """Tokens of the normalised text (CJK characters one by one)."""
    return _TOKEN.findall(normalize_answer(text))


def strip_answer_prefix(normalized: str) -> str:
    """Drop a leading "answer" / "answer is" / "final answer is" from normalised text."""
    return _ANSWER_PREFIX.sub("", normalized + " ", count=1).strip()


def leading_yes_no(text: str) -> str | None:
    """'yes' or 'no' when the answer starts with that word (or a Chinese yes/no form), else None."""
    raw = unicodedata.normalize("NFKC", str(text)).strip().lstrip("*#\"'“(（[ ")
    if raw.startswith(ZH_NO):
        return "no"
    if raw.startswith(ZH_YES):
        return "yes"
    words = strip_answer_prefix(normalize_answer(text)).split()
    return words[0] if words and words[0] in ("yes", "no") else None


def closed_correct(prediction: str, reference: str) -> bool:
    """Closed accuracy for one item (see the module docstring)."""
    expected = yes_no_answer(reference)
    if expected is not None:
        return leading_yes_no(prediction) == expected
    predicted = strip_answer_prefix(normalize_answer(prediction)).split()
    wanted = normalize_answer(reference).split()
    return bool(wanted) and predicted[: len(wanted)] == wanted


def exact_match(prediction: str, reference: str) -> bool:
    return normalize_answer(prediction) == normalize_answer(reference)


def _overlap(prediction: str, reference: str) -> tuple[int, int, int]:
    predicted, wanted = Counter(tokens(prediction)), Counter(tokens(reference))
    return sum((predicted & wanted).values()), sum(predicted.values()), sum(wanted.values())


def token_recall(prediction: str, reference: str) -> float:
    """Share of the reference's tokens found in the prediction (clipped counts)."""
    shared, _, wanted = _overlap(prediction, reference)
    return shared / wanted if wanted else 0.0


def token_precision(prediction: str, reference: str) -> float:
    shared, predicted, _ = _overlap(prediction, reference)
    return shared / predicted if predicted else 0.0


def token_f1(prediction: str, reference: str) -> float:
    shared, predicted, wanted = _overlap(prediction, reference)
    if not shared:
        return 0.0
    precision, recall = shared / predicted, shared / wanted
    return 2 * precision * recall / (precision + recall)
