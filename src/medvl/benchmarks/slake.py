"""SLAKE 1.0 (Liu et al., ISBI 2021).

`train.json`, `validate.json`, `test.json`: lists of rows with `qid`, `img_name`
(`xmlabN/source.jpg`, under `imgs/`), `question`, `answer`, `answer_type` (CLOSED/OPEN), `q_lang`
(en/zh), `modality`, `location`, `content_type`, `base_type` (vqa/kvqa). English and Chinese
questions share the file; `lang="en"` (the default, as LLaVA-Med and HuatuoGPT-Vision report) keeps
the English ones, `"zh"` the Chinese ones, `"all"` both.
"""

from __future__ import annotations

from itertools import chain
from pathlib import Path
from typing import Any

from medvl.benchmarks.base import (
    NOT_THE_RELEASE,
    BenchmarkData,
    Located,
    find_path,
    finish,
    one_of,
    open_closed_item,
    open_closed_problem,
    read_json_rows,
    split_name,
)
from medvl.benchmarks.checks import check_some_question, rejected_reasons
from medvl.benchmarks.registry import register_benchmark

SPLITS = {"train": (), "validate": ("val", "validation", "dev"), "test": ()}
LANGUAGES = ("en", "zh", "all")


def locate(root: Path, split: str, lang: str) -> Located:
    one_of("slake", "lang", lang, LANGUAGES)
    split = split_name(split, SPLITS)
    return Located(split, [find_path(root, [f"{split}.json"], f"SLAKE {split} file")])


def check(files: list[Path], lang: str) -> None:
    (path,) = files
    rows, rejects = read_json_rows(path)
    check_some_question(f"{path} (lang={lang})",
                        chain(rejected_reasons(rejects),
                              (open_closed_problem(row, "img_name") for _, row in rows if _asked(row, lang))),
                        f"is the lang option right? {NOT_THE_RELEASE}")


@register_benchmark("slake", locate=locate, check=check)
def load(root: Path, split: str = "test", lang: str = "en") -> BenchmarkData:
    split, (path,) = locate(root, split, lang)
    image_dir = root / "imgs"
    rows, rejects = read_json_rows(path)
    items = []
    for index, row in rows:
        if not _asked(row, lang):
            continue
        row_lang = row.get("q_lang", "en")
        item = open_closed_item(row, index, rejects, benchmark="slake", split=split, image_dir=image_dir,
                                image_key="img_name", meta={
                                    "question_type": row.get("content_type", ""),
                                    "organ": row.get("location", ""),
                                    "modality": row.get("modality", ""),
                                    "lang": row_lang,
                                    "base_type": row.get("base_type", ""),
                                })
        if item is not None:
            items.append(item)
    notes = [] if image_dir.is_dir() else [f"image folder {image_dir} is absent"]
    return finish("slake", split, root, items, notes=notes, rejects=rejects, sources=[path])


def _asked(row: dict[str, Any], lang: str) -> bool:
    """Whether a row is in the language `lang` asks for (rows without `q_lang` are English)."""
    return lang == "all" or row.get("q_lang", "en") == lang
