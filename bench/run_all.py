"""Run every benchmark script and write one table of ratios (`bench/results.md` + `.json`).

Each `bench/*.py` exposes `run(quick) -> list[dict]`; every ratio it reports is measured against a
baseline in the same run (loop vs batched, bare SDK vs medvl, no batching vs batching, ...).

    python bench/run_all.py [--quick] [--only generate,eval_throughput] [--out bench/results.md]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import time
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
BENCHES = ("generate", "eval_throughput", "train_throughput", "llm_throughput", "curate_throughput", "serve_load")
# keys that hold a ratio against a same-run baseline, with what the ratio means
RATIO_KEYS = {
    "ratio": "vs baseline",
    "fraction_of_bound": "of C/L bound",
    "vs_bare_sdk": "vs bare SDK",
    "scaling": "time growth / size growth",
    "throughput_x": "throughput, batching on/off",
    "p50_x": "p50 latency, on/off",
    "p95_x": "p95 latency, on/off",
    "vs_hand_loop": "vs hand-written loop",
    "memory_ratio": "peak memory, checkpointing on/off",
}
CASE_KEYS = ("setting", "mode", "stage", "client", "case")


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", HERE / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    if isinstance(value, (list, tuple)):
        return "/".join(_fmt(v) for v in value)
    return str(value)


def _table(results: dict[str, list[dict]]) -> str:
    lines = ["| bench | case | ratios | details |", "|---|---|---|---|"]
    for bench, rows in results.items():
        for row in rows:
            if "error" in row:
                lines.append(f"| {bench} | **failed** | | {row['error']} |")
                continue
            case = " ".join(_fmt(row[k]) for k in CASE_KEYS if k in row)
            ratios = ", ".join(f"**{_fmt(row[k])}** {label}" for k, label in RATIO_KEYS.items() if k in row)
            details = ", ".join(f"{k}={_fmt(v)}" for k, v in row.items()
                                if k not in RATIO_KEYS and k not in CASE_KEYS and k != "bench")
            lines.append(f"| {bench} | {case} | {ratios} | {details} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller workloads (a few minutes in all)")
    parser.add_argument("--only", default="", help="comma-separated subset of: " + ", ".join(BENCHES))
    parser.add_argument("--out", type=Path, default=HERE / "results.md")
    args = parser.parse_args()
    names = [n for n in args.only.split(",") if n] or list(BENCHES)
    unknown = sorted(set(names) - set(BENCHES))
    if unknown:
        parser.error(f"unknown bench: {', '.join(unknown)}")
    results: dict[str, list[dict]] = {}
    for name in names:
        print(f"== {name}", flush=True)
        start = time.perf_counter()
        try:
            results[name] = _load(name).run(quick=args.quick)
        except Exception as exc:  # one broken bench must not hide the others' figures
            traceback.print_exc()
            results[name] = [{"error": f"{type(exc).__name__}: {exc}"}]
        print(f"   {time.perf_counter() - start:.0f}s", flush=True)
    table = _table(results)
    args.out.write_text(f"# medvl benchmarks ({'quick' if args.quick else 'full'})\n\n{table}")
    args.out.with_suffix(".json").write_text(json.dumps(results, indent=1, default=str))
    print(table)
    if any("error" in row for rows in results.values() for row in rows):
        sys.exit(1)


if __name__ == "__main__":
    main()
