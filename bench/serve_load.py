"""Load test of `medvl serve`: dynamic batching on vs off, from a second process on loopback.

For each mode the API server runs as its own process (`python -m medvl.cli serve ...` on
127.0.0.1 with the tiny random test model, or `--model DIR`); this process then runs N concurrent clients, each sending
R chat requests (one image as a data URL, a question, max_tokens fixed) one after another, in
four passes in mirrored order (batching, no batching, no batching, batching; one server up at a
time). It reports every status code (5xx must be zero), p50/p95 latency, throughput, and how many
generate calls the server made, then the on/off ratios.

    python bench/serve_load.py [--quick] [--model DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Iterator

import httpx
import numpy as np
from interleave import mirrored  # bench/interleave.py
from PIL import Image

from medvl.io.images import encode_data_url

MODES = {"batching": ["--max-batch-size", "8", "--batch-wait-ms", "10"],
         "no batching": ["--max-batch-size", "1", "--batch-wait-ms", "0"]}


def bench_model(folder: Path) -> Path:
    """The tests' tiny random LLaVA (CLIP 32px → 2-layer 64-wide Llama), saved natively."""
    from medvl.model.build import build_model
    from medvl.model.checkpoint import save_model
    from medvl.io.offline import smollm2_tokenizer
    from medvl.model.spec import tiny_spec

    return save_model(*build_model(tiny_spec(str(smollm2_tokenizer()))), folder, card=False)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# `medvl serve ...` that dies with this process, even when it is SIGKILLed (no orphaned server)
_MEDVL_DYING_WITH = ("from medvl.io.process import die_with_parent; die_with_parent(parent={pid}); "
                     "from medvl.cli import main; main()")


@contextmanager
def serve_process(model_dir: Path, *options: str, api_key: str | None = None
                  ) -> Iterator[tuple[str, subprocess.Popen]]:
    """(url, process) of `medvl serve MODEL_DIR OPTIONS...` on a free loopback port, once healthy;
    the server dies with this process."""
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if k != "MEDVL_API_KEY"}
    env.update(MEDVL_LOG="WARNING", TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1")
    if api_key is not None:
        env["MEDVL_API_KEY"] = api_key
    command = [sys.executable, "-c", _MEDVL_DYING_WITH.format(pid=os.getpid()), "serve", str(model_dir),
               "--host", "127.0.0.1", "--port", str(port), *options]
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"server exited: {process.stderr.read()[-2000:] if process.stderr else ''}")
            try:
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("server did not become healthy in 180 s")
            time.sleep(0.2)
        yield url, process
    finally:
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()


def _requests(n: int, max_tokens: int) -> list[dict]:
    rng = np.random.default_rng(0)
    bodies = []
    for i in range(n):
        image = Image.fromarray(rng.integers(0, 255, (48, 48, 3), dtype=np.uint8))
        content = [{"type": "image_url", "image_url": {"url": encode_data_url(image, "PNG")}},
                   {"type": "text", "text": f"Question {i}: is there an abnormality in region {i % 7}?"}]
        bodies.append({"messages": [{"role": "user", "content": content}], "max_tokens": max_tokens})
    return bodies


async def _load(url: str, clients: int, per_client: int, max_tokens: int) -> tuple[list[float], list[int], float]:
    bodies = _requests(clients * per_client, max_tokens)
    latencies: list[float] = []
    statuses: list[int] = []

    async def client(index: int, http: httpx.AsyncClient) -> None:
        for j in range(per_client):
            start = time.perf_counter()
            response = await http.post(f"{url}/v1/chat/completions", json=bodies[index * per_client + j])
            latencies.append(time.perf_counter() - start)
            statuses.append(response.status_code)

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(timeout=300, limits=limits) as http:
        await http.post(f"{url}/v1/chat/completions", json=_requests(1, 2)[0])  # warm-up
        start = time.perf_counter()
        await asyncio.gather(*(client(i, http) for i in range(clients)))
        wall = time.perf_counter() - start
    return latencies, statuses, wall


def _generate_calls(url: str) -> int:
    return httpx.get(f"{url}/health").json()["stats"]["generate_calls"]


def run(quick: bool = False, model_dir: Path | None = None) -> list[dict]:
    clients, per_client, max_tokens = (8, 3, 16) if quick else (16, 4, 24)
    with tempfile.TemporaryDirectory(prefix="medvl-serve-bench-") as tmp, ExitStack() as server:
        folder = model_dir or bench_model(Path(tmp) / "model")
        running: dict[str, str] = {}  # the mode and url of the one server up (a real model may not fit twice)

        def one_pass(mode: str, part: int) -> dict:
            if mode not in running:
                server.close()
                running.clear()
                running[mode], _ = server.enter_context(
                    serve_process(folder, *MODES[mode], "limits.max_queue=1024"))
            url = running[mode]
            calls = _generate_calls(url)
            latencies, statuses, wall = asyncio.run(_load(url, clients, per_client, max_tokens))
            return {"latencies": latencies, "statuses": statuses, "wall": wall,
                    "generate_calls": _generate_calls(url) - calls - 1}  # minus the warm-up

        passes = mirrored(list(MODES), (1, 2), one_pass)  # batching, none, none, batching: three server starts
    rows = []
    for mode, runs in passes.items():
        latencies = [x for run in runs for x in run["latencies"]]
        statuses = [x for run in runs for x in run["statuses"]]
        rows.append({
            "bench": "serve_load", "mode": mode, "clients": clients, "requests": len(statuses),
            "ok": statuses.count(200), "errors_5xx": sum(s >= 500 for s in statuses),
            "p50_ms": 1000 * float(np.percentile(latencies, 50)),
            "p95_ms": 1000 * float(np.percentile(latencies, 95)),
            "throughput_rps": len(statuses) / sum(run["wall"] for run in runs),
            "generate_calls": sum(run["generate_calls"] for run in runs),
        })
    on, off = rows
    rows.append({"bench": "serve_load", "mode": "ratio (batching / no batching)",
                 "throughput_x": on["throughput_rps"] / off["throughput_rps"],
                 "p50_x": on["p50_ms"] / off["p50_ms"], "p95_x": on["p95_ms"] / off["p95_ms"]})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer clients and requests")
    parser.add_argument("--model", type=Path, default=None, help="serve this model folder instead of a random one")
    args = parser.parse_args()
    rows = run(quick=args.quick, model_dir=args.model)
    print(f"{'mode':<14}{'requests':>9}{'5xx':>5}{'p50 ms':>9}{'p95 ms':>9}{'req/s':>8}{'generate calls':>16}")
    for row in rows[:-1]:
        print(f"{row['mode']:<14}{row['requests']:>9}{row['errors_5xx']:>5}{row['p50_ms']:>9.0f}{row['p95_ms']:>9.0f}"
              f"{row['throughput_rps']:>8.2f}{row['generate_calls']:>16}")
    ratio = rows[-1]
    print(f"batching vs none: throughput {ratio['throughput_x']:.2f}x, p50 latency {ratio['p50_x']:.2f}x, "
          f"p95 latency {ratio['p95_x']:.2f}x")
    if any(row.get("errors_5xx") for row in rows):
        sys.exit("server errors (5xx) under load")


if __name__ == "__main__":
    main()
