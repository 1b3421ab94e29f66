"""Run the benchmarks, every repeat in a fresh process, and write one table of ratios with their spread.

Each `bench/NAME.py` exposes `run(quick) -> list[dict]`: rows naming a case (`setting`, `mode`,
`stage`, `client`, `case`) and ratios of a subject against a baseline measured in that same call
(loop vs batched, bare SDK vs medvl, ...), interleaved in mirrored order (`bench/interleave.py`:
A B, B A) so drift during the call hits both alike. Here every bench runs `--repeats` times, each
time in a fresh worker process (same interpreter and environment, `--threads` pinned for torch,
OpenMP, MKL and OpenBLAS), the benches taken in turn (repeat 1 of each, then repeat 2, ...) so a
burst of load hits one repeat of several benches rather than every repeat of one. Each ratio is
reported as its median over the repeats with the min-max, in `bench/results.md` and
`bench/results.json`. Each repeat's log and report stay in `runs/bench/{quick,full}/`; `--resume`
reuses the finished ones of a killed run (same settings, same code).

`--check` holds the measured medians to the bounds in `bench/floors.py`, shows the committed
`bench/results.json` beside them, and exits 1 when one is missed (`--measured FILE` checks a
results file instead of measuring).

A new bench plugs in as `bench/NAME.py` with `run(quick)`: its name goes in `BENCHES`, a new
ratio key in `RATIO_KEYS`, and the claim it backs in `bench/floors.py`.

    python bench/run_all.py [--quick] [--repeats 3] [--threads 2] [--only generate,train_throughput] [--resume]
    python bench/run_all.py --check [--quick] [--measured FILE]
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import importlib.util
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
BENCHES = ("generate", "eval_throughput", "train_throughput", "llm_throughput", "curate_throughput", "serve_load",
           "serve_chaos", "prior_throughput")
SCHEMA = 1
# keys that hold a ratio against a same-run baseline, with what the ratio means
RATIO_KEYS = {
    "ratio": "vs baseline",
    "fraction_of_bound": "of C/L bound",
    "vs_bare_sdk": "vs bare SDK",
    "vs_complete_many": "vs bare complete_many",
    "scaling": "time growth / size growth",
    "throughput_x": "throughput, batching on/off",
    "p50_x": "p50 latency, on/off",
    "p95_x": "p95 latency, on/off",
    "vs_hand_loop": "vs hand-written loop",
    "memory_ratio": "peak memory, checkpointing on/off",
}
CASE_KEYS = ("setting", "mode", "stage", "client", "case")
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
CODE_PATHS = ("src", "bench", "pyproject.toml")  # what a measurement depends on


class BenchFailed(Exception):
    """A bench repeat that produced no report: it crashed or ran out of time."""


# ---------------------------------------------------------------------------- one repeat, one process


def _load(bench_file: Path):
    spec = importlib.util.spec_from_file_location(f"bench_{bench_file.stem}", bench_file)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _die_with_parent() -> None:
    """Kill this worker's process group (it and any server it started) as soon as run_all is gone."""
    parent = os.getppid()
    if os.getpgid(0) != os.getpid():  # not started by run_repeat: the group is not ours to kill
        return

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1)
        os.killpg(0, signal.SIGKILL)

    threading.Thread(target=watch, name="bench-parent-watch", daemon=True).start()


def worker(bench_file: Path, result: Path, quick: bool) -> None:
    """The body of a worker process: run one repeat of one bench, write its rows to `result`."""
    _die_with_parent()
    module = _load(bench_file)
    start = time.perf_counter()
    rows = module.run(quick=quick)
    seconds = time.perf_counter() - start
    torch = sys.modules.get("torch")  # imported by the bench or not: the worker does not pay for it
    report = {"rows": rows, "seconds": seconds, "torch_threads": torch.get_num_threads() if torch else None}
    partial = result.with_suffix(".partial")
    partial.write_text(json.dumps(report, default=str))
    partial.replace(result)


def run_repeat(bench_file: Path, quick: bool, threads: int, timeout_s: float, log: Path) -> dict[str, Any]:
    """One repeat of one bench in a fresh process group; its report, or BenchFailed naming the log."""
    result = log.with_suffix(".json")
    result.unlink(missing_ok=True)
    env = {**os.environ, **dict.fromkeys(THREAD_VARIABLES, str(threads)),
           "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "1")}
    command = [sys.executable, str(Path(__file__).resolve()), "--worker", str(bench_file), "--result", str(result)]
    with log.open("w") as output:
        process = subprocess.Popen(command + ["--quick"] * quick, env=env, cwd=ROOT, stdout=output,
                                   stderr=subprocess.STDOUT, start_new_session=True)
        try:
            code = process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            raise BenchFailed(f"timed out after {timeout_s:.0f} s (log: {log})") from None
        finally:
            try:  # whatever the bench left running (servers, pools) goes with it
                os.killpg(process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            process.wait()
    if code:
        lines = log.read_text(errors="replace").strip().splitlines() or ["no output"]
        raise BenchFailed(f"exit {code}: {lines[-1][:300]} (log: {log})")
    return json.loads(result.read_text())


# ---------------------------------------------------------------------------- repeats -> one entry


def _identity(row: dict) -> dict[str, str]:
    return {k: str(row[k]) for k in CASE_KEYS if k in row}


def _median(values: list) -> Any:
    """Median of numbers, element-wise of equal-length sequences; text: the distinct values."""
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        return statistics.median(values)
    if all(isinstance(v, (list, tuple)) for v in values) and len({len(v) for v in values}) == 1:
        return [_median(list(column)) for column in zip(*values)]
    distinct = list(dict.fromkeys(str(v) for v in values))
    return distinct[0] if len(distinct) == 1 else " | ".join(distinct)


def aggregate(reports: list[dict[str, Any]]) -> dict[str, Any]:
    """One bench's entry from its repeats' reports: rows with each ratio's median, min, max and values."""
    by_case: dict[str, list[dict]] = {}
    good, errors = [], []
    for repeat, report in enumerate(reports, 1):
        names = [json.dumps(_identity(row)) for row in report.get("rows", [])]
        if "error" in report or len(set(names)) < len(names):
            errors.append(report.get("error") or f"repeat {repeat}: two rows share a case name: {sorted(names)}")
            continue
        good.append(report)
        for name, row in zip(names, report["rows"]):
            by_case.setdefault(name, []).append(row)
    rows = []
    for name, repeats in by_case.items():
        ratios = {key: [r[key] for r in repeats if key in r] for key in RATIO_KEYS}
        details = {key: _median([r[key] for r in repeats if key in r])
                   for key in dict.fromkeys(k for r in repeats for k in r)
                   if key not in RATIO_KEYS and key not in CASE_KEYS and key != "bench"}
        rows.append({"case": json.loads(name), "repeats": len(repeats), "details": details, "ratios": {
            key: {"median": statistics.median(v), "min": min(v), "max": max(v), "values": v}
            for key, v in ratios.items() if v}})
    return {"rows": rows, "repeats": len(good), "errors": errors,
            "seconds": [round(r["seconds"], 1) for r in good], "torch_threads": sorted(
                {r["torch_threads"] for r in good if r["torch_threads"] is not None})}


# ---------------------------------------------------------------------------- the table


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    if isinstance(value, (list, tuple)):
        return "/".join(_fmt(v) for v in value)
    return str(value)


def command_line(args: argparse.Namespace) -> str:
    parts = ["python bench/run_all.py"] + ["--quick"] * args.quick
    parts += [f"--repeats {args.repeats}", f"--threads {args.threads}"]
    return " ".join(parts + [f"--only {args.only}"] * bool(args.only))


def _git(*argv: str) -> str:
    done = subprocess.run(["git", *argv], cwd=ROOT, capture_output=True, text=True)
    return done.stdout.strip() if done.returncode == 0 else ""


def _environment(load_at_start: float) -> dict[str, Any]:
    commit = _git("rev-parse", "--short", "HEAD") or "unknown"
    dirty = bool(_git("status", "--porcelain", "--untracked-files=no"))
    return {"commit": commit + "-dirty" * dirty, "date": datetime.date.today().isoformat(),
            "platform": f"{platform.system()} {platform.machine()}", "cpus": os.cpu_count(),
            "python": platform.python_version(), "torch": _installed_version("torch"),
            "load_average": [round(load_at_start, 2), round(os.getloadavg()[0], 2)]}


def _installed_version(package: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return "not installed"


def table(results: dict[str, Any]) -> str:
    env = results["environment"]
    threads = sorted({t for entry in results["benches"].values() for t in entry["torch_threads"]})
    reused = sum(entry["reused_repeats"] for entry in results["benches"].values())
    head = [
        f"# medvl benchmarks ({results['mode']})", "",
        f"`{results['command']}` at commit {env['commit']}, {env['date']}: {env['platform']}, {env['cpus']} CPUs, "
        f"Python {env['python']}, torch {env['torch']}; 1-min load average {env['load_average'][0]} at the start, "
        f"{env['load_average'][1]} at the end.", "",
        f"Every repeat of every bench ran in its own process with {results['threads']} threads "
        f"({'/'.join(THREAD_VARIABLES)}={results['threads']}; torch.get_num_threads() in the workers: "
        f"{'/'.join(map(str, threads)) or 'torch not used'}). A ratio compares a subject with a baseline measured "
        "in the same repeat, interleaved in mirrored order; the table gives its **median** over the repeats and "
        "the (min-max). "
        "Details are medians." + (f" {reused} repeats were reused from an interrupted run (`--resume`)." if reused
                                  else ""), "",
        "| bench | case | ratios: median (min-max) | repeats | details |", "|---|---|---|---|---|",
    ]
    lines = []
    for bench, entry in results["benches"].items():
        lines += [f"| {bench} | **failed** | | | {error} |" for error in entry["errors"]]
        for row in entry["rows"]:
            ratios = ", ".join(f"**{_fmt(s['median'])}** ({_fmt(s['min'])}-{_fmt(s['max'])}) {RATIO_KEYS[k]}"
                               for k, s in row["ratios"].items())
            details = ", ".join(f"{k}={_fmt(v)}" for k, v in row["details"].items())
            lines.append(f"| {bench} | {' '.join(row['case'].values())} | {ratios} | {row['repeats']} | {details} |")
    return "\n".join(head + lines) + "\n"


# ---------------------------------------------------------------------------- main


def _settings(args: argparse.Namespace, bench_file: Path) -> dict[str, Any]:
    """What a finished repeat must share to be reused by `--resume`: workload, threads and the code
    it ran (src/, bench/ and pyproject.toml as committed and as changed since, the bench file)."""
    trees = _git("rev-parse", *(f"HEAD:{path}" for path in CODE_PATHS))
    changes = _git("diff", "HEAD", "--", *CODE_PATHS, ":(exclude)bench/results*")
    code = hashlib.sha256("\0".join((trees, changes, bench_file.read_text())).encode()).hexdigest()[:16]
    return {"quick": args.quick, "threads": args.threads, "code": code}


def _finished(result: Path, settings: dict[str, Any]) -> dict[str, Any] | None:
    try:
        report = json.loads(result.read_text())
    except (OSError, ValueError):
        return None
    return report if report.get("settings") == settings else None


def measure(args: argparse.Namespace, bench_files: list[Path], logs: Path) -> dict[str, Any]:
    """Run the benches `args.repeats` times in turn, each repeat in a fresh process; the results document.

    Each finished repeat's report stays in `logs` (beside its log); `args.resume` reuses those made
    with the same settings, so a killed run only re-measures what it had not finished."""
    load_at_start = os.getloadavg()[0]
    reports: dict[str, list[dict]] = {file.stem: [] for file in bench_files}
    reused = dict.fromkeys(reports, 0)
    settings = {file.stem: _settings(args, file) for file in bench_files}
    for repeat in range(1, args.repeats + 1):
        for file in bench_files:
            name, log = file.stem, logs / f"{file.stem}-{repeat}.log"
            print(f"== {name} (repeat {repeat}/{args.repeats})", flush=True)
            start = time.perf_counter()
            report = _finished(log.with_suffix(".json"), settings[name]) if args.resume else None
            if report:
                reused[name] += 1
                print(f"   reused {log.with_suffix('.json')}", flush=True)
            else:
                try:
                    report = run_repeat(file, args.quick, args.threads, args.timeout, log)
                    report["settings"] = settings[name]
                    log.with_suffix(".json").write_text(json.dumps(report))
                except BenchFailed as exc:  # one broken bench must not hide the others' figures
                    report = {"error": f"repeat {repeat}: {exc}"}
                    print(f"   failed: {exc}", flush=True)
            reports[name].append(report)
            print(f"   {time.perf_counter() - start:.0f}s", flush=True)
    benches = {name: {**aggregate(bench_reports), "reused_repeats": reused[name]}
               for name, bench_reports in reports.items()}
    return {"schema": SCHEMA, "command": command_line(args), "mode": "quick" if args.quick else "full",
            "repeats": args.repeats, "threads": args.threads, "environment": _environment(load_at_start),
            "benches": benches}


def read_results(path: Path) -> dict[str, Any]:
    from medvl.errors import UserError

    try:
        results = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise UserError(f"{path}: not a readable results file ({exc}); write one with python bench/run_all.py")
    if not isinstance(results, dict) or results.get("schema") != SCHEMA:
        raise UserError(f"{path}: not a schema-{SCHEMA} results file; regenerate it with python bench/run_all.py")
    return results


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller workloads (a few minutes per repeat in all)")
    parser.add_argument("--only", default="", help="comma-separated subset of: " + ", ".join(BENCHES))
    parser.add_argument("--repeats", type=int, default=3, help="fresh-process repeats per bench (default 3)")
    parser.add_argument("--threads", type=int, default=2, help="torch/OpenMP/MKL threads in every worker (default 2)")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds one repeat may take (default 1800)")
    parser.add_argument("--resume", action="store_true",
                        help="reuse the repeats an interrupted run with the same settings and code finished")
    parser.add_argument("--out", type=Path, help="table to write, with a .json beside it "
                        "(default bench/results.md; with --check, nothing unless given)")
    parser.add_argument("--check", action="store_true", help="exit 1 when a ratio misses its bound in bench/floors.py")
    parser.add_argument("--measured", type=Path, help="with --check: check this results.json instead of measuring")
    parser.add_argument("--reference", type=Path, default=HERE / "results.json",
                        help="with --check: results to show beside the measured ones (default bench/results.json)")
    parser.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    names = [n for n in args.only.split(",") if n]
    unknown = sorted(set(names) - set(BENCHES))
    if unknown:
        parser.error(f"unknown bench: {', '.join(unknown)} (choose from {', '.join(BENCHES)})")
    if args.repeats < 1 or args.threads < 1:
        parser.error("--repeats and --threads must be at least 1")
    if args.measured and not args.check:
        parser.error("--measured goes with --check")
    return args


def main(argv: list[str] | None = None) -> int:
    from medvl.errors import UserError

    args = parse_args(argv)
    if args.worker:
        worker(args.worker, args.result, args.quick)
        return 0
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # unwind, so the running worker is killed
    try:
        return run(args)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def run(args: argparse.Namespace) -> int:
    from floors import check

    names = [n for n in args.only.split(",") if n] or list(BENCHES)
    if args.measured:
        results = read_results(args.measured)
    else:
        logs = ROOT / "runs" / "bench" / ("quick" if args.quick else "full")
        logs.mkdir(parents=True, exist_ok=True)
        out = args.out or (None if args.check else HERE / "results.md")
        if out:
            out.parent.mkdir(parents=True, exist_ok=True)
        results = measure(args, [HERE / f"{name}.py" for name in names], logs)
        if out:
            out.write_text(table(results))
            out.with_suffix(".json").write_text(json.dumps(results, indent=1) + "\n")
        print(table(results))
    failed = any(entry["errors"] for entry in results["benches"].values())
    if args.check:
        reference = read_results(args.reference) if args.reference.is_file() else None
        print(f"check: {args.measured or 'this run'} against bench/floors.py; reference: "
              f"{args.reference if reference else 'none (no ' + str(args.reference) + ')'}")
        lines, ok = check(results, reference)
        print("\n".join(lines))
        failed |= not ok
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
