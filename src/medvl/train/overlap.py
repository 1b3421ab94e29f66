"""`medvl data check --against`: how much of a benchmark the training data already shows.

The usable rows of a data check (those training would see) are matched against benchmark items with
curation's decontamination matcher (`medvl.benchmarks.contamination`, same image and n-gram rules and
thresholds as `medvl curate decontaminate`'s defaults), so both count the same records. The result is
a warning, never a reject: removing the records is `medvl curate decontaminate`'s job
(`removal_commands` names it).
"""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

from medvl.benchmarks.contamination import Decontaminator, ReferenceItem, summarise, training_sample
from medvl.train.sources import LoadedSource
from medvl.train.validate import CheckReport

__all__ = ["benchmark_overlap", "overlap_warnings", "removal_commands"]


def benchmark_overlap(sources: list[LoadedSource], report: CheckReport, reference: list[ReferenceItem]) -> dict[str, Any]:
    """Per benchmark split (`contamination.summarise`): items and images seen in the usable rows, and
    the rows that show them; plus `training_images_not_checked` (embedded images, no file to match)."""
    checker = Decontaminator(reference)
    found, not_checked = [], 0
    for source, checked in zip(sources, report.sources):
        for index in checked.valid:
            row = source.row(index)
            refs = source.image_refs(row)
            paths = [str(ref) for ref in refs if isinstance(ref, Path)]
            not_checked += len(refs) - len(paths)
            found.append(checker.check(training_sample(source.row_id(index, row), row, paths)))
    summary = summarise(reference, found, len(found))
    summary.update(training_images_not_checked=not_checked, benchmark_images_unreadable=checker.missing_images[:50])
    return summary


def overlap_warnings(summary: dict[str, Any]) -> list[str]:
    """One line per benchmark split the training rows overlap (none when they are clean)."""
    lines = []
    records = summary["training_records"]
    for name, row in summary["benchmarks"].items():
        if not row["training_records_removed"]:
            continue
        share = 100 * row["training_records_removed"] / records
        images = 100 * row["benchmark_images_matched"] / row["benchmark_images"] if row["benchmark_images"] else 0.0
        lines.append(
            f"{name}: {row['training_records_removed']} of {records} usable records ({share:.1f}%) show its images "
            f"or repeat its questions; {row['benchmark_images_matched']} of {row['benchmark_images']} benchmark images "
            f"({images:.1f}%) and {row['items_seen']} of {row['items']} items ({row['items_seen_pct']}%; "
            f"{row['items_seen_by_image']} by image, {row['items_seen_by_text']} by text) are seen in training"
        )
    return lines


def removal_commands(sources: list[LoadedSource], against: list[str]) -> list[str]:
    """The `medvl curate decontaminate` command per file source that writes it without the overlapping
    records (a Hugging Face dataset has none: save it as JSONL first)."""
    benchmarks = " ".join(f"--against {shlex.quote(spec)}" for spec in against)
    commands = []
    for source in sources:
        if source.config.path is None:
            continue
        path = Path(source.config.path)
        root = f" --image-root {shlex.quote(source.config.image_root)}" if source.config.image_root else ""
        out = path.with_name(path.stem + ".decontaminated")
        commands.append(f"medvl curate decontaminate {shlex.quote(str(path))}{root} {benchmarks} "
                        f"--out {shlex.quote(str(out))}")
    return commands
