"""`medvl curate decontaminate`'s file side: check LLaVA-format training files against benchmark items
with the shared matcher (`medvl.benchmarks.contamination`, which `medvl data check --against` uses
too) and write the cleaned files, `removed.jsonl`, `seen_items.json` (benchmark/split → item ids, a
plain file an evaluation can exclude) and the report (`decontaminate_report`). The cleaned files
and `removed.jsonl` are renamed into place together once every input has been read (a killed run
leaves the previous ones whole); an output that would overwrite an input or another output is
refused before anything is read.
"""

from __future__ import annotations

import json
from collections import defaultdict
from contextlib import ExitStack
from pathlib import Path
from typing import Any, TextIO

from medvl.benchmarks.contamination import Contamination, Decontaminator, summarise, training_sample
from medvl.errors import UserError
from medvl.io.files import atomic_output, atomic_write_json, ensure_folder, refuse_overwriting_inputs

__all__ = ["decontaminate_files"]

REMOVED = "removed.jsonl"


def decontaminate_files(
    paths: list[Path],
    image_root: Path | None,
    checker: Decontaminator,
    out_dir: Path,
) -> dict[str, Any]:
    """Check LLaVA-format training files; write `<stem>.jsonl` (kept), `removed.jsonl`, `seen_items.json`
    and the report under `out_dir`; return the summary.

    A removed line is the training record plus `decontamination`: its matches (benchmark, split,
    item ids, kind, similarity / keypoint matches / n-gram overlap). Unreadable lines go to
    removed.jsonl too (`{"line", "error"}`), never silently away; a record whose image file is
    missing is checked by text only and counted.
    """
    from medvl.curate.decontaminate_report import write_decontamination_report
    from medvl.io.jsonl import JsonlLineError, iter_jsonl
    from medvl.records import RecordError, record_images

    kept_paths = _kept_paths(paths, ensure_folder(out_dir))
    matches: list[tuple[str, list[Contamination]]] = []
    seen, unreadable, images_missing = 0, 0, 0
    with ExitStack() as outputs:  # every output is renamed into place only once all inputs are read
        def output(path: Path) -> TextIO:
            return outputs.enter_context(outputs.enter_context(atomic_output(path)).open("w", encoding="utf-8"))

        removed = output(out_dir / REMOVED)
        for path in paths:
            root = image_root or path.parent
            kept = output(kept_paths[path])
            for number, record in iter_jsonl(path):
                try:
                    if isinstance(record, JsonlLineError):
                        raise record
                    images = [str(root / image) for image in record_images(record)]
                except (JsonlLineError, RecordError) as exc:
                    unreadable += 1
                    removed.write(json.dumps({"file": str(path), "line": number, "error": str(exc)}) + "\n")
                    continue
                seen += 1
                present = [image for image in images if Path(image).is_file()]
                images_missing += len(images) - len(present)
                found = checker.check(training_sample(str(record.get("id", number)), record, present))
                if found:
                    matches.append((str(record.get("id", number)), found))
                    removed.write(json.dumps({**record, "decontamination": [c.to_dict() for c in found]}) + "\n")
                else:
                    kept.write(json.dumps(record) + "\n")
    summary = summarise(checker.reference, [found for _, found in matches], seen)
    summary.update(unreadable_lines=unreadable, training_images_missing=images_missing,
                   benchmark_images_unreadable=checker.missing_images[:50])
    seen_items: dict[str, set[str]] = defaultdict(set)
    for _, found in matches:
        for c in found:
            seen_items[f"{c.benchmark}/{c.split}"].update(c.item_ids)
    atomic_write_json(out_dir / "seen_items.json", {k: sorted(v) for k, v in sorted(seen_items.items())})
    write_decontamination_report(out_dir, summary, matches, checker.reference)
    return summary


def _kept_paths(paths: list[Path], out_dir: Path) -> dict[Path, Path]:
    """Where each input's kept records go (`out_dir/<stem>.jsonl`); refused before anything is read
    when that would overwrite an input, `removed.jsonl`, or another input's output."""
    kept: dict[Path, Path] = {}
    for path in paths:
        target = out_dir / f"{path.stem}.jsonl"
        refuse_overwriting_inputs([target], paths, f"it is where --out {out_dir} puts the cleaned copy of {path}; "
                                                   "choose another --out folder")
        if target.name == REMOVED:
            raise UserError(f"{path}: its cleaned copy would be {target}, the removed records' file; rename the "
                            "training file")
        if clash := next((other for other, taken in kept.items() if taken == target), None):
            raise UserError(f"{clash} and {path} would both be cleaned into {target}; rename one, or "
                            "decontaminate them with separate --out folders")
        kept[path] = target
    return kept
