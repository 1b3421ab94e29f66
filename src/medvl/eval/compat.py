"""Re-implementations of the reference scorers' rules, quirks included, for compatibility scoring.

Behaviour follows LLaVA-Med v1.0.0 (`llava/eval/eval_metrics/{glossary,utils,evaluate_metrics}.py`,
`run_eval.py`, `run_eval_batch.py`) and HuatuoGPT-Vision (`scorer.py`); the code is medvl's own.
The metric functions take raw texts and apply what the reference pipeline applies: run_eval
lower-cases and normalises both texts, and each metric normalises them once more
(`llava_med_prepare`) — except BLEU, which sees the once-normalised texts. Quirks reproduced on
purpose (docs/evaluation.md explains each):

- `llava_med_normalize_word`: VQA-v2 style. A punctuation mark is deleted when it touches a space
  anywhere in the *original* string (or the string has a digit,digit comma), else it becomes a
  space; the period regex `(?!<=\\d)(\\.)(?!\\d)` is a look-ahead typo, so it strips every period not
  followed by a digit, and `re.UNICODE` lands in the `count` slot, so at most 32 periods go.
- `llava_med_exact_match_score` ("exact match score"): distinct reference words found in the
  prediction divided by the prediction's word count — a precision-like number, not exact match.
- `llava_med_f1`: true positives add the *prediction's* count of each shared word, so repeating a
  correct word inflates recall ("left left left" vs "left lung" → recall 3/4). `llava_med_recall`
  is that recall, the paper's open-set metric.
- `llava_med_candidate_hit`: run_eval.py's "open accuracy", the arg-max over a candidate answer
  list (train-set open answers; LLaVA-Med's `candidate.json` is unreleased).
- `llava_med_bleu`: nltk's `sentence_bleu` with no smoothing on the lower-cased, once-normalised
  texts split on spaces, under LLaVA-Med's four weightings: `bleu_score` (0.25 each, cumulative
  BLEU-4) and `bleu_score_1/2/3` (weights (1,0,0,0), (0,1,0,0), (0,0,1,0): the unigram, bigram and
  trigram precisions alone, each times the brevity penalty — not cumulative BLEU-2/3).
- `match_choice3`: HuatuoGPT-Vision's first-letter regex, then last-occurring option text, then
  the most similar option (ties go to the later option); always returns some letter.
"""

from __future__ import annotations

import difflib
import re
from collections import Counter
from collections.abc import Mapping, Sequence

__all__ = [
    "BLEU_WEIGHTS",
    "llava_med_bleu",
    "llava_med_candidate_hit",
    "llava_med_exact_match_score",
    "llava_med_f1",
    "llava_med_normalize_word",
    "llava_med_prepare",
    "llava_med_recall",
    "llava_med_split_sentence",
    "match_choice3",
]

_CONTRACTIONS = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've", "couldnt": "couldn't",
    "couldn'tve": "couldn't've", "couldnt've": "couldn't've", "didnt": "didn't", "doesnt": "doesn't",
    "dont": "don't", "hadnt": "hadn't", "hadnt've": "hadn't've", "hadn'tve": "hadn't've", "hasnt": "hasn't",
    "havent": "haven't", "hed": "he'd", "hed've": "he'd've", "he'dve": "he'd've", "hes": "he's", "howd": "how'd",
    "howll": "how'll", "hows": "how's", "Id've": "I'd've", "I'dve": "I'd've", "Im": "I'm", "Ive": "I've",
    "isnt": "isn't", "itd": "it'd", "itd've": "it'd've", "it'dve": "it'd've", "itll": "it'll", "let's": "let's",
    "maam": "ma'am", "mightnt": "mightn't", "mightnt've": "mightn't've", "mightn'tve": "mightn't've",
    "mightve": "might've", "mustnt": "mustn't", "mustve": "must've", "neednt": "needn't", "notve": "not've",
    "oclock": "o'clock", "oughtnt": "oughtn't", "ow's'at": "'ow's'at", "'ows'at": "'ow's'at", "'ow'sat": "'ow's'at",
    "shant": "shan't", "shed've": "she'd've", "she'dve": "she'd've", "she's": "she's", "shouldve": "should've",
    "shouldnt": "shouldn't", "shouldnt've": "shouldn't've", "shouldn'tve": "shouldn't've",
    "somebody'd": "somebodyd", "somebodyd've": "somebody'd've", "somebody'dve": "somebody'd've",
    "somebodyll": "somebody'll", "somebodys": "somebody's", "someoned": "someone'd", "someoned've": "someone'd've",
    "someone'dve": "someone'd've", "someonell": "someone'll", "someones": "someone's", "somethingd": "something'd",
    "somethingd've": "something'd've", "something'dve": "something'd've", "somethingll": "something'll",
    "thats": "that's", "thered": "there'd", "thered've": "there'd've", "there'dve": "there'd've",
    "therere": "there're", "theres": "there's", "theyd": "they'd", "theyd've": "they'd've", "they'dve": "they'd've",
    "theyll": "they'll", "theyre": "they're", "theyve": "they've", "twas": "'twas", "wasnt": "wasn't",
    "wed've": "we'd've", "we'dve": "we'd've", "weve": "we've", "werent": "weren't", "whatll": "what'll",
    "whatre": "what're", "whats": "what's", "whatve": "what've", "whens": "when's", "whered": "where'd",
    "wheres": "where's", "whereve": "where've", "whod": "who'd", "whod've": "who'd've", "who'dve": "who'd've",
    "wholl": "who'll", "whos": "who's", "whove": "who've", "whyll": "why'll", "whyre": "why're", "whys": "why's",
    "wont": "won't", "wouldve": "would've", "wouldnt": "wouldn't", "wouldnt've": "wouldn't've",
    "wouldn'tve": "wouldn't've", "yall": "y'all", "yall'll": "y'all'll", "y'allll": "y'all'll",
    "yall'd've": "y'all'd've", "y'alld've": "y'all'd've", "y'all'dve": "y'all'd've", "youd": "you'd",
    "youd've": "you'd've", "you'dve": "you'd've", "youll": "you'll", "youre": "you're", "youve": "you've",
}
_NUMBERS = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5", "six": "6",
            "seven": "7", "eight": "8", "nine": "9", "ten": "10"}
_ARTICLES = {"a", "an", "the"}
_PUNCT = [";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?", "!"]
_PERIOD = re.compile(r"(?!<=\d)(\.)(?!\d)")  # sic: a look-ahead, not the intended look-behind
_DIGIT_COMMA = re.compile(r"(\d)(\,)(\d)")
_REFERENCE_PERIOD_COUNT = int(re.UNICODE)  # the reference passes re.UNICODE (32) as `count`


def llava_med_normalize_word(text: str) -> str:
    result = text
    for mark in _PUNCT:
        touches_space = mark + " " in text or " " + mark in text
        result = result.replace(mark, "" if touches_space or _DIGIT_COMMA.search(text) else " ")
    result = _PERIOD.sub("", result, count=_REFERENCE_PERIOD_COUNT)
    words = [_NUMBERS.get(w, w) for w in result.lower().split()]
    words = [_CONTRACTIONS.get(w, w) for w in words if w not in _ARTICLES]
    return " ".join(words).replace(",", "")


def llava_med_split_sentence(sentence: str, n: int = 1) -> Counter[str]:
    words = sentence.lower().strip().split()
    return Counter(" ".join(words[i:i + n]) for i in range(len(words) - n + 1))


def llava_med_prepare(text: str) -> str:
    """What run_eval's metric functions see: lower-cased, normalised by run_eval, normalised again inside."""
    return llava_med_normalize_word(llava_med_normalize_word(str(text).lower()))


BLEU_WEIGHTS = {
    "bleu_score": (0.25, 0.25, 0.25, 0.25),
    "bleu_score_1": (1.0, 0.0, 0.0, 0.0),
    "bleu_score_2": (0.0, 1.0, 0.0, 0.0),
    "bleu_score_3": (0.0, 0.0, 1.0, 0.0),
}


def llava_med_bleu(prediction: str, reference: str) -> dict[str, float]:
    """run_eval's four BLEU scores of one open answer (see the module docstring)."""
    import warnings

    from nltk.translate.bleu_score import sentence_bleu

    hypothesis = llava_med_normalize_word(str(prediction).lower()).lower().split()
    references = [llava_med_normalize_word(str(reference).lower()).lower().split()]
    with warnings.catch_warnings():  # nltk warns on every missing n-gram order; the reference silences it too
        warnings.simplefilter("ignore")
        scores = sentence_bleu(references, hypothesis, weights=list(BLEU_WEIGHTS.values()))
    return {name: float(score) for name, score in zip(BLEU_WEIGHTS, scores)}


def llava_med_exact_match_score(prediction: str, reference: str) -> float:
    """run_eval's "exact match score": distinct reference words in the prediction / prediction length."""
    predicted = llava_med_split_sentence(llava_med_prepare(prediction))
    wanted = llava_med_split_sentence(llava_med_prepare(reference))
    total = sum(predicted.values())
    return sum(1 for word in wanted if word in predicted) / total if total else 0.0


def llava_med_f1(prediction: str, reference: str) -> tuple[float, float, float]:
    """(f1, precision, recall) as `calculate_f1score` computes them, count inflation included."""
    predicted = llava_med_split_sentence(llava_med_prepare(prediction))
    wanted = llava_med_split_sentence(llava_med_prepare(reference))
    if not predicted or not wanted:
        return 0.0, 0.0, 0.0
    tp = sum(count for word, count in predicted.items() if word in wanted)
    fp = sum(count for word, count in predicted.items() if word not in wanted)
    fn = sum(count for word, count in wanted.items() if word not in predicted)
    if tp == 0:
        return 0.0, 0.0, 0.0
    precision, recall = tp / (tp + fp), tp / (tp + fn)
    return 2 * precision * recall / (precision + recall), precision, recall


def llava_med_recall(prediction: str, reference: str) -> float:
    """LLaVA-Med's open-set "recall" (tp counts the prediction's repeats)."""
    return llava_med_f1(prediction, reference)[2]


def llava_med_candidate_hit(prediction: str, reference: str, candidates: Sequence[object]) -> float:
    """run_eval.py's open "accuracy": 1.0 when the best-overlapping candidate equals the reference."""
    predicted_words = llava_med_split_sentence(llava_med_prepare(prediction))
    reference = llava_med_prepare(reference)
    best_score, best = -1.0, None
    for candidate in candidates:
        normalized = llava_med_normalize_word(str(candidate))
        words = llava_med_split_sentence(normalized)
        score = sum(1 for word in predicted_words if word in words) / len(words) if words else 0.0
        if score > best_score:  # the reference keeps the first maximum
            best_score, best = score, normalized
    return 1.0 if best == reference else 0.0


_CHOICE3 = re.compile(r"(is |是|\*|\W|\ |\(|为|^|'|\"|#)(?![aA] )([abcdefghijklmnABCDEFGHIJKLMN])(\W|$)", re.DOTALL)


def match_choice3(text: str, options: Mapping[str, str]) -> tuple[str, int]:
    """HuatuoGPT-Vision's extraction: (letter as written, stage 1/2/3)."""
    found = _CHOICE3.search(text)
    if found:
        return found.group(2), 1
    lowered = text.lower()
    positions = [(letter, lowered.rindex(o.lower())) for letter, o in options.items() if o.lower() in lowered]
    if positions:
        return max(positions, key=lambda pair: pair[1])[0], 2
    best_letter, best_ratio = "", 0.0
    for letter, option in options.items():
        ratio = difflib.SequenceMatcher(None, option.lower(), lowered).ratio()
        if ratio >= best_ratio:  # ">=": a tie goes to the later option
            best_letter, best_ratio = letter, ratio
    return best_letter, 3
