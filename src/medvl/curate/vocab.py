"""Medical vocabulary matching and caption-based modality tags.

`Vocabulary.find(text)` returns the distinct medical terms of a text:

- tokens are runs of letters and digits (`h&e` stays one token); hyphens and slashes split words, so
  "tomography-computed", "CT-scan" and "MRI/CT" match their parts, and multi-word terms are
  matched as token phrases ("x-ray" is the phrase "x ray");
- each token (listed or not) is folded to its lemma: regular and Latin/Greek plurals ("lesions", "arteries",
  "metastases", "vertebrae", "bronchi", "diverticula", "abscesses") and adjective forms
  ("fluoroscopic", "histological", "necrotic", "ischemic", "arthritic") fold onto a listed term,
  but only when the folded word is listed, and never for the words in `NO_FOLD` ("pass" is not PAS,
  "pets" is not PET);
- phrases are matched longest first without overlap ("CT scan" counts once, not as "ct" + "ct scan"),
  and a line `term | variant | ...` of the term file counts every variant as its first term
  ("kidney | renal"), so synonyms and the singular/plural pair of a term are one term.

The shipped list is `assets/medical_terms.txt`; `filter.text.vocabulary` replaces it with any file
of one term (or `|`-separated group) a line, `#` comments.

`infer_modality` tags a caption with one coarse imaging modality by keyword (first match in
`MODALITY_PATTERNS` order) — used for per-modality statistics and balancing when the input has no
domain flags of its own.
"""

from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path

from medvl.benchmarks.contamination import tokenize  # one word rule for vocabulary and benchmark n-grams
from medvl.errors import UserError

__all__ = [
    "Vocabulary",
    "VocabularyError",
    "load_vocabulary",
    "load_vocabulary_section",
    "default_vocabulary_path",
    "tokenize",
    "fold",
    "NO_FOLD",
    "infer_modality",
    "modalities_of",
    "MODALITIES",
]

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

# Words that look like an inflected form of a listed term but are not one.
NO_FOLD = frozenset(
    """pass pets gas bias lens news series species diabetes herpes rabies scabies mumps measles
    pelvis iris axis virus corpus status thus this has was is us as its does yes less always perhaps
    across various previous serous mucous nervous fibrous osseous venous numerous analysis basis
    thesis synthesis hypothesis tis pes bus plus versus campus focus sinus fetus uterus humerus
    radius bronchus thalamus calculus embolus nucleus stimulus villus hippocampus esophagus oesophagus
    physic physics optic optics static dynamic electronic plastic mechanic mechanics basic""".split()
)
# (suffix of the inflected word, replacement) tried in order; the result must be a listed term.
_FOLDS = (
    ("ies", "y"),
    ("ices", "ix"),
    ("ices", "ex"),
    ("ses", "sis"),
    ("sses", "ss"),
    ("xes", "x"),
    ("ches", "ch"),
    ("shes", "sh"),
    ("es", "e"),
    ("es", ""),
    ("s", ""),
    ("ae", "a"),
    ("i", "us"),
    ("a", "um"),
    ("ical", "y"),
    ("ic", "y"),
    ("ical", "ic"),
    ("ically", "y"),
    ("otic", "osis"),
    ("itic", "itis"),
    ("ic", "ia"),
    ("ic", "e"),
    ("omatous", "oma"),
    ("al", ""),
    ("al", "e"),
    ("ar", "a"),
)


def fold(token: str, known: frozenset[str] | set[str]) -> str:
    """The first listed lemma `_FOLDS` gives for `token`, else `token` (always itself when in `NO_FOLD`)."""
    if token in NO_FOLD or len(token) <= 3:
        return token
    for suffix, replacement in _FOLDS:
        if token.endswith(suffix) and len(token) - len(suffix) >= 2:
            candidate = token[: len(token) - len(suffix)] + replacement
            if candidate in known:
                return candidate
    return token


def infer_modality(caption: str) -> str:
    for modality, pattern in _COMPILED:
        if pattern.search(caption):
            return modality
    return "other"


def modalities_of(caption: str) -> set[str]:
    """Every modality keyword group the caption mentions (not only the first)."""
    return {modality for modality, pattern in _COMPILED if pattern.search(caption)}


TERM_FILE = "one term or `term | variant | ...` group a line, # comments"


class VocabularyError(UserError, ValueError):
    """A term file that cannot be the medical vocabulary (missing, not UTF-8, no term); the message names it."""


class Vocabulary:
    """Terms (or `|` groups of variants) matched as folded token phrases; see the module docstring."""

    def __init__(self, groups: list[list[str]], source: str = "the medical vocabulary"):
        phrases = [[tuple(tokenize(variant)) for variant in group] for group in groups]
        self.words = frozenset(p[0] for group in phrases for p in group if len(p) == 1)
        self.canonical: dict[tuple[str, ...], str] = {}
        for group in phrases:
            group = [p for p in group if p]
            if not group:
                continue
            name = " ".join(self._fold_phrase(group[0]))
            for phrase in group:
                self.canonical.setdefault(self._fold_phrase(phrase), name)
        if not self.canonical:
            raise VocabularyError(f"{source} holds no term; write {TERM_FILE}")
        self.max_len = max(len(p) for p in self.canonical)

    def _fold_phrase(self, phrase: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(fold(t, self.words) for t in phrase)

    def __len__(self) -> int:
        return len(set(self.canonical.values()))

    def occurrences(self, text: str) -> list[str]:
        """Every term occurrence in `text`, in order, each named by the first variant of its group."""
        tokens = [fold(t, self.words) for t in tokenize(text)]
        found: list[str] = []
        start = 0
        while start < len(tokens):
            for length in range(min(self.max_len, len(tokens) - start), 0, -1):
                name = self.canonical.get(tuple(tokens[start : start + length]))
                if name is not None:
                    found.append(name)
                    start += length
                    break
            else:
                start += 1
        return found

    def find(self, text: str) -> set[str]:
        """The distinct terms in `text`, each named by the first variant of its group."""
        return set(self.occurrences(text))

    def count(self, text: str) -> int:
        return len(self.find(text))


def default_vocabulary_path() -> Path:
    return Path(__file__).parent / "assets" / "medical_terms.txt"


def _read_groups(file: Path, section: str | None = None) -> list[list[str]]:
    groups, current = [], None
    for line in file.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if line.startswith("## "):
            current = line[3:].strip()
        elif line and not line.startswith("#") and (section is None or current == section):
            groups.append([variant.strip() for variant in line.split("|") if variant.strip()])
    return groups


@lru_cache(maxsize=8)
def load_vocabulary(path: str | None = None) -> Vocabulary:
    """Read a term file (one term or `a | b | c` group a line, `#` comments); None → the shipped list.
    A missing file, one that is not UTF-8 or holds no term is a `VocabularyError` naming it."""
    file = Path(path) if path else default_vocabulary_path()
    if file.is_dir():
        raise VocabularyError(f"{file} is a folder; give the term file itself ({TERM_FILE})")
    if not file.is_file():
        raise VocabularyError(f"{file}: no such vocabulary file; give a term file ({TERM_FILE})")
    try:
        groups = _read_groups(file)
    except UnicodeDecodeError as exc:
        raise VocabularyError(f"{file}: not UTF-8 text (byte {exc.start}); save the vocabulary as UTF-8") from None
    return Vocabulary(groups, str(file))


@lru_cache(maxsize=4)
def load_vocabulary_section(section: str) -> Vocabulary:
    """The terms under `## <section>` of the shipped list (e.g. "anatomy")."""
    return Vocabulary(_read_groups(default_vocabulary_path(), section))
