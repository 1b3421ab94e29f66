"""The run report: counts per stage, reject reasons, per-modality and per-licence counts, the text
filters' precision and recall, dedup and decontamination summaries, LLM usage and cost.

`report.json` (everything), `report.md` (tables for people) and `report.png` (two bar charts:
records left after each stage, and records per modality at input / after dedup / selected /
generated). Stage counts come from datatrove's per-task stats files (`_work/logs/<stage>/stats/`),
which survive a resume (a finished task is skipped, its stats file stays); modality and licence
counts stream over the prepared shards and reject files. The text filters' quality is measured on
the labelled captions shipped with medvl (`medvl.curate.text_probe`): the vocabulary test as
configured, on the held-out split; the learned filter as saved by `train-text-filter`.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

from medvl.curate.config import CurateConfig
from medvl.curate.filters import filter_class, filter_names
from medvl.curate.store import RunDirs, pack_order
from medvl.io.jsonl import JsonlFileError, iter_appended, read_json_file
from medvl.io.files import atomic_write_json, atomic_write_text, atomic_write_with

__all__ = ["write_report", "stage_stats", "load_report", "text_filter_quality", "render_markdown"]

ENABLE_HINTS = {
    "reformat": "PubMedVision Alignment + Instruction VQA: set generate.reformat.enabled=true and "
    "generate.reformat.llm (base_url, model; an MLLM) — see configs/curate/pubmedvision.yaml",
    "self_instruct": "LLaVA-Med self-instruct conversations: set generate.self_instruct.enabled=true and "
    "generate.self_instruct.llm (a text model) — see configs/curate/llava_med.yaml",
    "concept": "LLaVA-Med concept alignment: set generate.concept.enabled=true",
}


def _value(metric: Any) -> int:
    return int(metric if isinstance(metric, (int, float)) else metric.get("total", 0))


def stage_stats(dirs: RunDirs, stage: str) -> dict[str, dict[str, int]]:
    """{step name: {metric: total}} summed over the stage's per-task stats files."""
    totals: dict[str, Counter[str]] = {}
    for path in sorted(dirs.logs(stage).glob("stats/*.json")):
        for step in json.loads(path.read_text(encoding="utf-8")):
            name = step["name"].split(": ", 1)[-1]
            counter = totals.setdefault(name, Counter())
            for metric, value in step["stats"].items():
                counter[metric] += _value(value)
    return {name: dict(counter) for name, counter in totals.items()}


def _field_counts(dirs: RunDirs, n_shards: int, fields: dict[str, str]) -> dict[str, dict[str, Counter[str]]]:
    """Records per value of each metadata field (field -> the label of a missing value), read in one pass:
    at input, after the filters, after dedup, selected."""
    gathered = {dirs.rejects / "dedup-00000.jsonl", dirs.rejects / "decontaminate-00000.jsonl"}
    dropped: set[int] = set()
    rejected_input = {field: Counter() for field in fields}
    for path in dirs.rejects.glob("*.jsonl"):
        for item in iter_appended(path):
            if path in gathered:
                dropped.add(pack_order(item["order"]))
                continue
            for field, missing in fields.items():
                rejected_input[field][str(item.get(field) or missing)] += 1
    stages = {field: {"after_filters": Counter(), "after_dedup": Counter(), "selected": Counter()} for field in fields}
    for rank in range(n_shards):
        path = dirs.selected_shard(rank)
        chosen = set(json.loads(path.read_text(encoding="utf-8"))) if path.exists() else set()
        for row, record in enumerate(iter_appended(dirs.prepared_shard(rank))):
            kept = pack_order(record["metadata"]["order"]) not in dropped
            for field, missing in fields.items():
                value = str(record["metadata"].get(field) or missing)
                stages[field]["after_filters"][value] += 1
                if kept:
                    stages[field]["after_dedup"][value] += 1
                if row in chosen:
                    stages[field]["selected"][value] += 1
    return {field: {"input": rejected_input[field] + stages[field]["after_filters"], **stages[field]}
            for field in fields}


def text_filter_quality(config: CurateConfig) -> dict[str, Any]:
    """Precision/recall of the configured text filters on the shipped labelled captions (held-out split)."""
    from medvl.curate.text_probe import TextProbe, load_labelled, precision_recall, shipped_labels_path
    from medvl.curate.vocab import load_vocabulary

    held_out = [e for e in load_labelled() if e.held_out]
    labels = [e.medical for e in held_out]
    quality: dict[str, Any] = {"labelled_set": f"{shipped_labels_path().name}: {len(held_out)} held-out captions"}
    text = config.filter["text"]
    if text.enabled and text.min_medical_terms > 0:
        vocabulary = load_vocabulary(text.vocabulary)
        predicted = [vocabulary.count(e.text) >= text.min_medical_terms for e in held_out]
        quality["vocabulary"] = {"min_medical_terms": text.min_medical_terms, **precision_recall(predicted, labels)}
    learned = config.filter["medical_text"]
    if learned.enabled:
        meta = TextProbe.load(learned.model).meta
        quality["learned"] = {
            "model": learned.model,
            "features": meta.get("features", "embedding"),
            "threshold": meta["threshold"],
            "threshold_used": learned.threshold if learned.threshold is not None else meta["threshold"],
            **(meta.get("held_out") or {"note": "trained without held-out captions: no figures"}),
        }
    return quality


def _llm_section(dirs: RunDirs, config: CurateConfig, tokens: dict[str, dict[str, int]]) -> dict[str, Any]:
    section: dict[str, Any] = {}
    for kind, part in (
        ("reformat", config.generate.reformat),
        ("self_instruct", config.generate.self_instruct),
    ):
        if not part.enabled or part.llm is None:
            continue
        used = tokens.get(kind, {})
        price_in, price_out = part.llm.price_input_per_mtok, part.llm.price_output_per_mtok
        runs = [
            e
            for p in sorted(dirs.llm_usage.glob("*.jsonl"))
            for e in iter_appended(p)
            if e["kind"] == kind
        ]
        spent = Counter()
        for entry in runs:
            for key in (
                "requests_sent",
                "replies",
                "cache_hits",
                "retries",
                "failures",
                "prompt_tokens",
                "completion_tokens",
            ):
                spent[key] += entry[key]
        section[kind] = {
            "model": part.llm.model,
            "dataset": {
                **used,
                "cost_usd": round(
                    (used.get("prompt_tokens", 0) * price_in + used.get("completion_tokens", 0) * price_out)
                    / 1e6,
                    6,
                ),
            },
            "invocations": len({e.get("invocation", index) for index, e in enumerate(runs)}),  # entries: changes
            "sent": {**spent, "cost_usd": round(sum(e["cost_usd"] for e in runs), 6)},
        }
    return section


def write_report(
    dirs: RunDirs, n_shards: int, config: CurateConfig, counts: dict[str, Any]
) -> dict[str, Any]:
    prepare = stage_stats(dirs, "prepare")
    read = prepare.get("ingest", {}).get("read", 0)
    funnel = [("read", read)]
    if "ingest check" in prepare:
        funnel.append(("ingested", prepare["ingest check"].get("forwarded", 0)))
    for name in filter_names():
        step = filter_class(name).name
        if step in prepare:
            funnel.append((step, prepare[step].get("forwarded", 0)))
    dedup = _read_json(dirs.summary("dedup"))
    if dedup is not None:
        funnel.append(("dedup", dedup["kept"]))
    decontamination = _read_json(dirs.summary("decontaminate"))
    if decontamination is not None:
        funnel.append(("decontaminate", decontamination["kept"]))
    sample = _read_json(dirs.summary("sample")) or {}
    funnel.append(("selected", sum(sample.get("selected", {}).values())))
    for kind, n in counts["generated"].items():
        if n or _enabled(config, kind):
            funnel.append((f"generated {kind}", n))
    skipped = []
    if prepare.get("image filter", {}).get("classifier_skipped"):
        skipped.append(
            {
                "step": "medical-image classifier",
                "records": prepare["image filter"]["classifier_skipped"],
                "enable": "train one with `medvl curate train-classifier` and set filter.image.classifier",
            }
        )
    for kind, hint in ENABLE_HINTS.items():
        if not _enabled(config, kind):
            skipped.append({"step": f"generate {kind}", "enable": hint})
    by_field = _field_counts(dirs, n_shards, {"modality": "other", "licence": "unknown"})
    modality, licences = by_field["modality"], by_field["licence"]
    del modality["after_filters"]
    generated_any = Counter()
    for per_kind in counts["modality_generated"].values():
        generated_any |= Counter(per_kind)
    modality["generated"] = generated_any
    licences["generated"] = Counter(counts["licence_generated"])
    report = {
        "output_dir": str(dirs.out),
        "funnel": dict(funnel),
        "rejects": counts["rejects"],
        "dedup": dedup,
        "sample": sample,
        "generated": counts["generated"],
        "modality": {k: dict(sorted(v.items())) for k, v in modality.items()},
        "modality_generated": counts["modality_generated"],
        "licence": {k: dict(sorted(v.items())) for k, v in licences.items()},
        "text_filter_quality": text_filter_quality(config),
        "decontamination": decontamination,
        "skipped": skipped,
        "llm": _llm_section(dirs, config, counts["llm_tokens"]),
        "engine": {"executor": config.engine.executor, "tasks": config.engine.tasks},
    }
    atomic_write_json(dirs.out / "report.json", report)
    atomic_write_text(dirs.out / "report.md", render_markdown(report))
    plot_report(report, dirs.out / "report.png")
    return report


def _read_json(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else None


def _enabled(config: CurateConfig, kind: str) -> bool:
    generate = config.generate
    return {
        "concept": generate.concept.enabled,
        "alignment": generate.reformat.enabled,
        "instruction": generate.reformat.enabled,
        "reformat": generate.reformat.enabled,
        "self_instruct": generate.self_instruct.enabled,
    }[kind]


_REPORT_KEYS = ("output_dir", "funnel", "rejects", "modality")  # what render_markdown cannot do without


def load_report(out_dir: str | Path) -> dict[str, Any]:
    """The report a finished run wrote; a folder that is not a run is a FileNotFoundError, a report.json
    that is not one (broken, or written by something else) a UserError naming it."""
    if not Path(out_dir).is_dir():
        raise FileNotFoundError(f"{out_dir} is not a folder; give the output folder of a `medvl curate run`")
    path = Path(out_dir) / "report.json"
    if not path.is_file():
        raise FileNotFoundError(f"no report in {out_dir}: the run has not finished (see `medvl curate run`)")
    fix = "run the same `medvl curate run` again to rewrite it"
    report = read_json_file(path, "the report of a curation run", fix)
    missing = [key for key in _REPORT_KEYS if key not in report] if isinstance(report, dict) else list(_REPORT_KEYS)
    if missing:
        raise JsonlFileError(f"{path}: not a curation report (no {', '.join(missing)}); {fix}")
    return report


def render_markdown(report: dict[str, Any]) -> str:
    lines = [
        "# Curation report",
        "",
        f"Output: `{report['output_dir']}`",
        "",
        "## Records after each stage",
        "",
        "| stage | records |",
        "|---|---:|",
    ]
    lines += [f"| {stage} | {n} |" for stage, n in report["funnel"].items()]
    lines += ["", "## Rejects", "", "| stage/reason | records |", "|---|---:|"]
    lines += [f"| {reason} | {n} |" for reason, n in report["rejects"].items()] or ["| (none) | 0 |"]
    sample = report.get("sample") or {}
    if sample.get("not_selected"):
        lines += [
            "",
            f"Sampling (by {sample['by']}) left {sample['not_selected']} de-duplicated records unselected.",
        ]
    lines += _count_table("Records per modality", "modality", report["modality"])
    lines += _count_table("Records per licence (SPDX)", "licence", report.get("licence") or {})
    lines += _quality_lines(report.get("text_filter_quality") or {})
    refused = (report.get("dedup") or {}).get("semantic_refused")
    if refused:
        shown = ", ".join(f"{kind}: {n}" for kind, n in refused.items())
        lines += ["", f"Semantic dedup refused {sum(refused.values())} merges across clinical differences ({shown})."]
    lines += _decontamination_lines(report.get("decontamination"))
    if report["skipped"]:
        lines += ["", "## Skipped steps", ""]
        lines += [
            f"- **{s['step']}**"
            + (f" ({s['records']} records)" if "records" in s else "")
            + f": {s['enable']}"
            for s in report["skipped"]
        ]
    if report["llm"]:
        lines += [
            "",
            "## LLM usage",
            "",
            (
                "| kind | model | replies used | prompt tokens | completion tokens | "
                "dataset cost $ | requests sent (all runs) | cache hits | retries | failures | spent $ |"
            ),
            "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for kind, item in report["llm"].items():
            d, s = item["dataset"], item["sent"]
            lines.append(
                f"| {kind} | {item['model']} | {d.get('replies', 0)} | {d.get('prompt_tokens', 0)} | "
                f"{d.get('completion_tokens', 0)} | {d['cost_usd']:.4f} | {s.get('requests_sent', 0)} | "
                f"{s.get('cache_hits', 0)} | {s.get('retries', 0)} | {s.get('failures', 0)} | "
                f"{s['cost_usd']:.4f} |"
            )
    lines += ["", "![counts per stage and modality](report.png)", ""]
    return "\n".join(lines)


def _count_table(title: str, key: str, table: dict[str, dict[str, int]]) -> list[str]:
    if not table:
        return []
    values = sorted({v for counts in table.values() for v in counts})
    columns = list(table)
    lines = ["", f"## {title}", "", f"| {key} | " + " | ".join(columns) + " |", "|---|" + "---:|" * len(columns)]
    return lines + ["| " + v + " | " + " | ".join(str(table[c].get(v, 0)) for c in columns) + " |" for v in values]


def _quality_lines(quality: dict[str, Any]) -> list[str]:
    rows = [(name, quality[name]) for name in ("vocabulary", "learned") if name in quality]
    if not rows:
        return []

    def cell(value: Any, interval: Any) -> str:
        return "n/a" if value is None else f"{value:.3f} [{interval[0]:.3f}, {interval[1]:.3f}]"

    lines = [
        "",
        "## Medical text filter on labelled captions",
        "",
        f"Measured on {quality['labelled_set']} (precision/recall of the medical class, Wilson 95% intervals).",
        "",
        "| filter | precision | recall | tp | fp | fn |",
        "|---|---|---|---:|---:|---:|",
    ]
    for name, q in rows:
        label = f"vocabulary (>= {q['min_medical_terms']} terms)" if name == "vocabulary" else f"learned ({q['model']}, {q['features']})"
        if "precision" not in q:
            lines.append(f"| {label} | {q.get('note', 'n/a')} | | | | |")
            continue
        lines.append(
            f"| {label} | {cell(q['precision'], q['precision_ci95'])} | {cell(q['recall'], q['recall_ci95'])} "
            f"| {q['tp']} | {q['fp']} | {q['fn']} |"
        )
    return lines


def _decontamination_lines(summary: dict[str, Any] | None) -> list[str]:
    if not summary:
        return []
    lines = [
        "",
        "## Decontamination",
        "",
        f"{summary['removed']} of {summary['seen']} records removed (decontamination/report.html shows the pairs).",
        "",
        "| benchmark/split | items | seen in training | % | by image | by text | records removed |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    return lines + [
        f"| {name} | {row['items']} | {row['items_seen']} | {row['items_seen_pct']} | {row['items_seen_by_image']} "
        f"| {row['items_seen_by_text']} | {row['training_records_removed']} |"
        for name, row in summary["benchmarks"].items()
    ]


def plot_report(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 4.8))
    stages = list(report["funnel"])
    left.barh(stages[::-1], [report["funnel"][s] for s in stages][::-1], color="#4c72b0")
    left.set_title("records after each stage")
    left.set_xlabel("records")
    columns = list(report["modality"])
    modalities = sorted({m for counts in report["modality"].values() for m in counts}) or ["other"]
    width = 0.8 / max(1, len(columns))
    for i, column in enumerate(columns):
        xs = [j + i * width for j in range(len(modalities))]
        right.bar(xs, [report["modality"][column].get(m, 0) for m in modalities], width, label=column)
    right.set_xticks(
        [j + 0.4 - width / 2 for j in range(len(modalities))], modalities, rotation=30, ha="right"
    )
    right.set_title("records per modality")
    right.legend(fontsize=8)
    fig.tight_layout()
    atomic_write_with(path, lambda tmp: fig.savefig(tmp, dpi=110))
    plt.close(fig)
