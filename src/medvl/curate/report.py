"""The run report: counts per stage, reject reasons, per-modality counts, LLM usage and cost.

`report.json` (everything), `report.md` (tables for people) and `report.png` (two bar charts:
records left after each stage, and records per modality at input / after dedup / selected /
generated). Stage counts come from datatrove's per-task stats files (`_work/logs/<stage>/stats/`),
which survive a resume (a finished task is skipped, its stats file stays); modality counts stream
over the prepared shards and reject files.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

from medvl.curate.config import CurateConfig
from medvl.curate.store import RunDirs, iter_jsonl_lines, pack_order
from medvl.io.files import atomic_write_json, atomic_write_text

__all__ = ["write_report", "stage_stats", "load_report"]

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


def _modality_counts(dirs: RunDirs, n_shards: int) -> dict[str, Counter[str]]:
    dropped: set[int] = set()
    dedup_file = dirs.rejects / "dedup-00000.jsonl"
    rejected_input: Counter[str] = Counter()
    for path in dirs.rejects.glob("*.jsonl"):
        for item in iter_jsonl_lines(path):
            if path == dedup_file:
                dropped.add(pack_order(item["order"]))
            else:
                rejected_input[str(item.get("modality") or "other")] += 1
    prepared, deduped, selected = Counter(), Counter(), Counter()
    for rank in range(n_shards):
        path = dirs.selected_shard(rank)
        chosen = set(json.loads(path.read_text(encoding="utf-8"))) if path.exists() else set()
        for row, record in enumerate(iter_jsonl_lines(dirs.prepared_shard(rank))):
            modality = str(record["metadata"].get("modality") or "other")
            prepared[modality] += 1
            if pack_order(record["metadata"]["order"]) not in dropped:
                deduped[modality] += 1
            if row in chosen:
                selected[modality] += 1
    return {
        "input": rejected_input + prepared,
        "after_dedup": deduped,
        "selected": selected,
    }


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
            for e in iter_jsonl_lines(p)
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
            "invocations": len(runs),
            "sent": {**spent, "cost_usd": round(sum(e["cost_usd"] for e in runs), 6)},
        }
    return section


def write_report(
    dirs: RunDirs, n_shards: int, config: CurateConfig, counts: dict[str, Any]
) -> dict[str, Any]:
    prepare = stage_stats(dirs, "prepare")
    read = prepare.get("ingest", {}).get("read", 0)
    funnel = [("read", read)]
    for step, label in (
        ("ingest check", "ingested"),
        ("text filter", "text filter"),
        ("image filter", "image filter"),
    ):
        if step in prepare:
            funnel.append((label, prepare[step].get("forwarded", 0)))
    dedup = (
        json.loads((dirs.work / "dedup.json").read_text()) if (dirs.work / "dedup.json").exists() else None
    )
    if dedup is not None:
        funnel.append(("dedup", dedup["kept"]))
    sample = (
        json.loads((dirs.work / "sample.json").read_text()) if (dirs.work / "sample.json").exists() else {}
    )
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
                "enable": "train one with `medvl curate train-classifier` and set image_filter.classifier",
            }
        )
    for kind, hint in ENABLE_HINTS.items():
        if not _enabled(config, kind):
            skipped.append({"step": f"generate {kind}", "enable": hint})
    modality = _modality_counts(dirs, n_shards)
    generated_any = Counter()
    for per_kind in counts["modality_generated"].values():
        generated_any |= Counter(per_kind)
    modality["generated"] = generated_any
    report = {
        "output_dir": str(dirs.out),
        "funnel": dict(funnel),
        "rejects": counts["rejects"],
        "dedup": dedup,
        "sample": sample,
        "generated": counts["generated"],
        "modality": {k: dict(sorted(v.items())) for k, v in modality.items()},
        "modality_generated": counts["modality_generated"],
        "skipped": skipped,
        "llm": _llm_section(dirs, config, counts["llm_tokens"]),
        "engine": {"executor": config.engine.executor, "tasks": config.engine.tasks},
    }
    atomic_write_json(dirs.out / "report.json", report)
    atomic_write_text(dirs.out / "report.md", render_markdown(report))
    plot_report(report, dirs.out / "report.png")
    return report


def _enabled(config: CurateConfig, kind: str) -> bool:
    generate = config.generate
    return {
        "concept": generate.concept.enabled,
        "alignment": generate.reformat.enabled,
        "instruction": generate.reformat.enabled,
        "reformat": generate.reformat.enabled,
        "self_instruct": generate.self_instruct.enabled,
    }[kind]


def load_report(out_dir: str | Path) -> dict[str, Any]:
    path = Path(out_dir) / "report.json"
    if not path.is_file():
        raise FileNotFoundError(f"no report in {out_dir}: the run has not finished (see `medvl curate run`)")
    return json.loads(path.read_text(encoding="utf-8"))


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
    modalities = sorted({m for counts in report["modality"].values() for m in counts})
    columns = list(report["modality"])
    lines += [
        "",
        "## Records per modality",
        "",
        "| modality | " + " | ".join(columns) + " |",
        "|---|" + "---:|" * len(columns),
    ]
    lines += [
        "| " + m + " | " + " | ".join(str(report["modality"][c].get(m, 0)) for c in columns) + " |"
        for m in modalities
    ]
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
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)
