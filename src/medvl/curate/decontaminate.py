"""`medvl curate decontaminate`'s file side: check LLaVA-format training files against benchmark items
with the shared matcher (`medvl.benchmarks.contamination`, which `medvl data check --against` uses
too) and write the cleaned files, `removed.jsonl`, `seen_items.json` (benchmark/split → item ids, a
plain file an evaluation can exclude) and the report (`decontaminate_report`).
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any

from medvl.benchmarks.contamination import Contamination, Decontaminator, summarise, training_sample
from medvl.io.files import atomic_write_json, ensure_folder

__all__ = ["decontaminate_files"]


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

    ensure_folder(out_dir)
    matches: list[tuple[str, list[Contamination]]] = []
    seen, unreadable, images_missing = 0, 0, 0
    with (out_dir / "removed.jsonl").open("w", encoding="utf-8") as removed:
        for path in paths:
            root = image_root or path.parent
            with (out_dir / f"{path.stem}.jsonl").open("w", encoding="utf-8") as kept:
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
