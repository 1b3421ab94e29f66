"""Medical vocabulary matching and caption-based modality tags.

`Vocabulary` counts the distinct medical terms of a text (phrases up to the longest term, a
trailing plural folded: "lesions" → "lesion"). The shipped list is `assets/medical_terms.txt`;
`text_filter.vocabulary` replaces it with any file of one term a line (`#` comments).

`infer_modality` tags a caption with one coarse imaging modality by keyword (first match in
`MODALITY_PATTERNS` order) — used for per-modality statistics and balancing when the input has no
domain flags of its own.
"""

from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path

__all__ = [
    "Vocabulary",
    "load_vocabulary",
    "default_vocabulary_path",
    "tokenize",
    "infer_modality",
    "MODALITIES",
]

_TOKEN = re.compile(r"[a-z0-9]+(?:[-&'][a-z0-9]+)*")

# (modality, pattern) in priority order: the first that matches the caption wins.
MODALITY_PATTERNS: tuple[tuple[str, str], ...] = (
    (
        "histology",
        (
            r"\b(h&e|hematoxylin|haematoxylin|eosin|histolog\w*|histopatholog\w*|immunohisto\w*|ihc|"
            r"micrograph\w*|photomicrograph\w*|magnification|stain(ed|ing)?|biopsy)\b"
        ),
    ),
    ("ct", r"\b(ct|cect|hrct|cta|computed tomograph\w*|tomogram)\b"),
    (
        "mri",
        r"\b(mri|mra|mr|magnetic resonance|t1w?|t2w?|t1-weighted|t2-weighted|flair|diffusion-weighted)\b",
    ),
    ("pet", r"\b(pet|pet-ct|spect|scintigra\w*|positron emission)\b"),
    ("ultrasound", r"\b(ultrasound|ultrasonograph\w*|sonograph\w*|doppler|echocardiogra\w*)\b"),
    (
        "x-ray",
        r"\b(x-?rays?|radiograph\w*|chest film|plain film|mammogra\w*|fluoroscop\w*|angiogra\w*|barium)\b",
    ),
    ("endoscopy", r"\b(endoscop\w*|colonoscop\w*|gastroscop\w*|bronchoscop\w*|cystoscop\w*|laparoscop\w*)\b"),
    ("fundus", r"\b(fundus|fundoscop\w*|retina\w*|optical coherence tomography|oct)\b"),
    ("dermoscopy", r"\b(dermoscop\w*|dermatoscop\w*|skin lesion)\b"),
    ("gross", r"\b(gross|macroscopic|cut surface|resected specimen|intraoperative (view|photograph))\b"),
    ("microscopy", r"\b(microscop\w*|immunofluorescen\w*|confocal|cells? culture)\b"),
    ("chart", r"\b(kaplan-meier|bar graph|flow ?chart|flowchart|diagram|schematic|plot|histogram|curve)\b"),
)
MODALITIES = tuple(m for m, _ in MODALITY_PATTERNS) + ("other",)
_COMPILED = tuple((m, re.compile(p, re.IGNORECASE)) for m, p in MODALITY_PATTERNS)


def tokenize(text: str) -> list[str]:
    return _TOKEN.findall(text.lower())


def infer_modality(caption: str) -> str:
    for modality, pattern in _COMPILED:
        if pattern.search(caption):
            return modality
    return "other"


class Vocabulary:
    """A set of (possibly multi-word) terms; `count(text)` = number of distinct terms present."""

    def __init__(self, terms: list[str]):
        self.terms = {tuple(tokenize(t)) for t in terms if tokenize(t)}
        if not self.terms:
            raise ValueError("the medical vocabulary is empty")
        self.max_len = max(len(t) for t in self.terms)

    def __len__(self) -> int:
        return len(self.terms)

    def find(self, text: str) -> set[str]:
        """The distinct terms in `text` (plural forms folded onto the listed singular)."""
        tokens = [_singular(t, self.terms) for t in tokenize(text)]
        found = set()
        for start in range(len(tokens)):
            for length in range(1, min(self.max_len, len(tokens) - start) + 1):
                gram = tuple(tokens[start : start + length])
                if gram in self.terms:
                    found.add(" ".join(gram))
        return found

    def count(self, text: str) -> int:
        return len(self.find(text))


def _singular(token: str, terms: set[tuple[str, ...]]) -> str:
    if (token,) in terms or len(token) <= 3:
        return token
    for suffix in ("es", "s"):
        if token.endswith(suffix) and (token[: -len(suffix)],) in terms:
            return token[: -len(suffix)]
    return token


def default_vocabulary_path() -> Path:
    return Path(__file__).parent / "assets" / "medical_terms.txt"


@lru_cache(maxsize=8)
def load_vocabulary(path: str | None = None) -> Vocabulary:
    """Read a term file (one term a line, `#` comments); None → the shipped list."""
    file = Path(path) if path else default_vocabulary_path()
    if not file.is_file():
        raise FileNotFoundError(f"medical vocabulary file not found: {file}")
    lines = file.read_text(encoding="utf-8").splitlines()
    return Vocabulary([line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")])
