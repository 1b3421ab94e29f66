"""The decontamination report: `report.json` (counts), `report.html` (matched pairs side by side) and
`report.png` (share of each benchmark seen in training).

The HTML embeds small JPEG thumbnails (data URIs), so it is one self-contained file; it shows the
first `max_pairs` matches, the JSON counts all of them.
"""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path
from typing import TYPE_CHECKING, Any

from medvl.io.files import atomic_write_json, atomic_write_text, atomic_write_with

if TYPE_CHECKING:
    from medvl.benchmarks.contamination import Contamination, ReferenceItem

__all__ = ["write_decontamination_report"]


def _thumbnail(path: str | None, side: int = 192) -> str:
    if not path:
        return "<div class='none'>(no image)</div>"
    from medvl.io.images import ImageLoadError, load_image

    try:
        image = load_image(path).convert("RGB")
    except (OSError, ImageLoadError) as exc:
        return f"<div class='none'>{html.escape(Path(path).name)}: {html.escape(str(exc))}</div>"
    image.thumbnail((side, side))
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=80)
    data = base64.b64encode(buffer.getvalue()).decode("ascii")
    return f"<img src='data:image/jpeg;base64,{data}' title='{html.escape(path)}'>"


def _pair_row(record_id: str, found: Contamination, items: dict[tuple[str, str], ReferenceItem]) -> str:
    first = items.get((found.benchmark, found.item_ids[0]))
    question = f"<p><b>Q</b> {html.escape(first.question)}<br><b>A</b> {html.escape(first.answer)}</p>" if first else ""
    more = f" (+{len(found.item_ids) - 1} more questions on this image)" if len(found.item_ids) > 1 else ""
    return (
        f"<tr><td>{_thumbnail(found.training_image)}<br><code>{html.escape(record_id)}</code></td>"
        f"<td>{_thumbnail(found.benchmark_image)}<br><code>{html.escape(found.benchmark)}/"
        f"{html.escape(found.split)} {html.escape(found.item_ids[0])}</code>{more}</td>"
        f"<td>{html.escape(found.kind)}: {html.escape(found.distance())}{question}</td></tr>"
    )


def write_decontamination_report(
    out_dir: str | Path,
    summary: dict[str, Any],
    matches: list[tuple[str, list[Contamination]]],
    reference: list[ReferenceItem],
    max_pairs: int = 300,
) -> dict[str, Any]:
    """Write report.json / report.html / report.png under `out_dir`; return the JSON."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "report.json", summary)
    items = {(item.benchmark, item.id): item for item in reference}
    rows, shown = [], 0
    for record_id, found in matches:
        for contamination in found:
            if shown >= max_pairs:
                break
            rows.append(_pair_row(record_id, contamination, items))
            shown += 1
    total_pairs = sum(len(found) for _, found in matches)
    table = "".join(
        f"<tr><td>{html.escape(name)}</td><td>{row['items']}</td><td>{row['items_seen']}</td>"
        f"<td>{row['items_seen_pct']}%</td><td>{row['items_seen_by_image']}</td><td>{row['items_seen_by_text']}</td>"
        f"<td>{row['benchmark_images_matched']}</td><td>{row['training_records_removed']}</td></tr>"
        for name, row in summary["benchmarks"].items()
    )
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>Decontamination report</title>
<style>body{{font-family:sans-serif;margin:2em}} table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:6px;vertical-align:top}} img{{max-width:192px}} .none{{color:#999}}</style>
</head><body><h1>Decontamination report</h1>
<p>{summary['training_records']} training records checked, {summary['removed']} removed.</p>
<table><tr><th>benchmark/split</th><th>items</th><th>seen in training</th><th>%</th><th>by image</th>
<th>by text</th><th>benchmark images matched</th><th>training records removed</th></tr>{table}</table>
<h2>Matched pairs ({shown} of {total_pairs} shown)</h2>
<table><tr><th>training record</th><th>benchmark item</th><th>match</th></tr>{''.join(rows)}</table>
<p><img src="report.png" style="max-width:640px"></p></body></html>"""
    atomic_write_text(out / "report.html", page)
    _plot(summary, out / "report.png")
    return summary


def _plot(summary: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(summary["benchmarks"]) or ["(none)"]
    values = [summary["benchmarks"][n]["items_seen_pct"] for n in summary["benchmarks"]] or [0]
    fig, ax = plt.subplots(figsize=(7, 0.6 * len(names) + 1.6))
    ax.barh(names[::-1], values[::-1], color="#c44e52")
    ax.set_xlabel("% of benchmark items seen in training (image or text)")
    ax.set_xlim(0, max(100, max(values)))
    fig.tight_layout()
    atomic_write_with(path, lambda tmp: fig.savefig(tmp, dpi=110))
    plt.close(fig)
