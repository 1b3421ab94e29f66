"""Chaos test of `medvl serve`: hostile clients and a steady load at the same time, on loopback.

The server runs as its own process (`medvl serve`, the tiny random test model or `--model DIR`,
an API key, default limits). A steady mixed load (16 clients, each sending one request after
another: text, image, streamed, sampled with a seed) runs alone and together with a second
process that attacks the server, in mirrored order (`bench/interleave.py`: alone, attacked,
attacked, alone) so that a drift in the machine's load hits both alike. The attackers, all at once:

- idle sockets: 500 connections (spread over 10 loopback addresses) that never send a byte,
  each reopened as soon as the server closes it;
- slow bodies without a key: clients that announce 1 MB and send one byte a second;
- mid-stream disconnects: streams dropped after their first chunk;
- a 30 MB body of 300k tiny messages, sent again and again;
- out-of-range options: seed 2^64, temperature 5, max_tokens 10^6, n=3, json_object,
  logit_bias, top_logprobs, penalties, a foreign Host header, a wrong key.

Reported: the steady clients' statuses (5xx and transport errors must be zero) and p50/p95
latency alone and under chaos (each pooled over its two phases), with their ratio; what each
attacker got; the server's RSS after the last phase against before the first attack; and the
machine's load average, since the ratio is only as quiet as the machine. Everything is bounded: fixed counts, fixed phase
length, loopback only. The attackers run in their own process (`--attack`), so their CPU is
not spent in the event loop that times the steady clients; it and the server die with this one.

    python bench/serve_chaos.py [--quick] [--model DIR] [--seconds S]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import secrets
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import httpx
import numpy as np
from interleave import mirrored  # bench/interleave.py
from PIL import Image
from serve_load import bench_model, serve_process  # bench/serve_load.py

from medvl.io.images import encode_data_url
from medvl.io.process import die_with_parent

CHAT = "/v1/chat/completions"
SIZES = {"quick": {"clients": 8, "idle": 100, "seconds": 8}, "full": {"clients": 16, "idle": 500, "seconds": 20}}


def _steady_bodies() -> list[dict]:
    """The steady clients' mix: text, image, streamed, sampled."""
    rng = np.random.default_rng(0)
    image = encode_data_url(Image.fromarray(rng.integers(0, 255, (48, 48, 3), dtype=np.uint8)), "PNG")
    with_image = [{"type": "image_url", "image_url": {"url": image}}, {"type": "text", "text": "Any abnormality?"}]
    text = [{"role": "user", "content": "Which organ is most often injured in blunt abdominal trauma?"}]
    return [
        {"messages": text, "max_tokens": 8},
        {"messages": [{"role": "user", "content": with_image}], "max_tokens": 16},
        {"messages": text, "max_tokens": 16, "stream": True, "stream_options": {"include_usage": True}},
        {"messages": [{"role": "user", "content": with_image}], "max_tokens": 12, "temperature": 0.7, "seed": 7},
    ]


async def _steady(url: str, key: str, clients: int, seconds: float) -> dict:
    """Each client sends one request after another for `seconds`; latencies and statuses of all."""
    bodies, latencies, statuses, failures = _steady_bodies(), [], Counter(), Counter()
    end = time.monotonic() + seconds

    async def client(index: int, http: httpx.AsyncClient) -> None:
        turn = index
        while time.monotonic() < end:
            body, turn = bodies[turn % len(bodies)], turn + 1
            start = time.perf_counter()
            try:
                if body.get("stream"):
                    async with http.stream("POST", url + CHAT, json=body) as response:
                        async for _ in response.aiter_lines():
                            pass
                else:
                    response = await http.post(url + CHAT, json=body)
            except httpx.HTTPError as exc:
                failures[type(exc).__name__] += 1
                continue
            latencies.append(time.perf_counter() - start)
            statuses[response.status_code] += 1

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    headers = {"Authorization": f"Bearer {key}"}
    async with httpx.AsyncClient(timeout=120, limits=limits, headers=headers) as http:
        await asyncio.gather(*(client(i, http) for i in range(clients)))
    return {"latencies": latencies, "statuses": statuses, "failures": failures}


def _summary(case: str, clients: int, runs: list[dict]) -> dict:
    latencies = [x for run in runs for x in run["latencies"]]
    statuses = sum((run["statuses"] for run in runs), Counter())
    failures = sum((run["failures"] for run in runs), Counter())
    return {"bench": "serve_chaos", "case": case, "clients": clients, "requests": len(latencies),
            "ok": statuses[200], "errors_5xx": sum(n for s, n in statuses.items() if s >= 500),
            "other_statuses": {status: n for status, n in statuses.items() if status != 200} or None,
            "transport_errors": sum(failures.values()),
            "p50_ms": 1000 * float(np.percentile(latencies, 50)), "p95_ms": 1000 * float(np.percentile(latencies, 95))}


def _rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        line = next(line for line in status if line.startswith("VmRSS:"))
    return int(line.split()[1]) / 1024


async def _health_probe(url: str, seconds: float) -> Counter:
    """/health once a second: it must answer 200 whatever the attackers hold."""
    seen: Counter = Counter()
    end = time.monotonic() + seconds
    async with httpx.AsyncClient(timeout=10) as http:
        while time.monotonic() < end:
            try:
                seen[(await http.get(url + "/health")).status_code] += 1
            except httpx.HTTPError as exc:
                seen[type(exc).__name__] += 1
            await asyncio.sleep(1)
    return seen


# --- the attackers (run with --attack in their own process) ---------------------------------------------

async def _idle_socket(host: str, port: int, source: str, end: float, counts: Counter) -> None:
    while (left := end - time.monotonic()) > 0:
        try:
            reader, writer = await asyncio.open_connection(host, port, local_addr=(source, 0))
        except OSError:
            counts["idle_connect_errors"] += 1
            await asyncio.sleep(0.5)
            continue
        counts["idle_opened"] += 1
        try:
            if await asyncio.wait_for(reader.read(1), left) == b"":
                counts["idle_closed_by_server"] += 1
        except (TimeoutError, ConnectionError):
            pass
        finally:
            writer.close()
        await asyncio.sleep(0.1)


async def _slow_body(host: str, port: int, end: float, counts: Counter) -> None:
    head = (f"POST {CHAT} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
            "Content-Length: 1000000\r\n\r\n{").encode()
    while end - time.monotonic() > 0:
        try:
            reader, writer = await asyncio.open_connection(host, port, local_addr=("127.0.0.20", 0))
        except OSError:
            counts["slow_body_connect_errors"] += 1
            await asyncio.sleep(0.5)
            continue
        writer.write(head)

        async def trickle() -> None:
            while True:
                await asyncio.sleep(1)
                writer.write(b" ")
                await writer.drain()

        dripping = asyncio.create_task(trickle())
        try:
            line = await asyncio.wait_for(reader.readline(), max(end - time.monotonic(), 0.1))
            counts[f"slow_body_{line.split()[1].decode() if line else 'closed'}"] += 1
        except (TimeoutError, ConnectionError):
            counts["slow_body_unanswered"] += 1
        finally:
            dripping.cancel()
            writer.close()
        await asyncio.sleep(0.2)


async def _stream_cut(url: str, key: str, end: float, counts: Counter) -> None:
    body = {"messages": [{"role": "user", "content": "Tell me everything."}], "max_tokens": 64, "stream": True}
    transport = httpx.AsyncHTTPTransport(local_address="127.0.0.21")
    async with httpx.AsyncClient(timeout=60, transport=transport, headers={"Authorization": f"Bearer {key}"}) as http:
        while end - time.monotonic() > 0:
            try:
                async with http.stream("POST", url + CHAT, json=body) as response:
                    counts[f"stream_cut_{response.status_code}"] += 1
                    async for _ in response.aiter_lines():
                        break  # the first event, then hang up
            except httpx.HTTPError as exc:
                counts[f"stream_cut_{type(exc).__name__}"] += 1
            await asyncio.sleep(1)


async def _requests(url: str, name: str, source: str, end: float, pause: float, counts: Counter,
                    cases: list[tuple[dict[str, str], bytes]]) -> None:
    transport = httpx.AsyncHTTPTransport(local_address=source)
    async with httpx.AsyncClient(timeout=120, transport=transport) as http:
        turn = 0
        while end - time.monotonic() > 0:
            headers, content = cases[turn % len(cases)]
            turn += 1
            try:
                response = await http.post(url + CHAT, content=content, headers=headers)
                counts[f"{name}_{response.status_code}"] += 1
            except httpx.HTTPError as exc:
                counts[f"{name}_{type(exc).__name__}"] += 1
            await asyncio.sleep(pause)


def _bad_options(key: str) -> list[tuple[dict[str, str], bytes]]:
    good = {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4}
    bad = [{"seed": 2**64}, {"temperature": 5}, {"max_tokens": 10**6}, {"n": 3},
           {"response_format": {"type": "json_object"}}, {"logit_bias": {"1": 100}}, {"top_logprobs": 5},
           {"frequency_penalty": 1.5}, {"messages": []}, {"messages": [{"role": "robot", "content": "x"}]}]
    auth = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    cases = [(auth, json.dumps({**good, **change}).encode()) for change in bad]
    cases.append(({**auth, "Host": "rebind.attacker.example"}, json.dumps(good).encode()))
    cases.append(({**auth, "Authorization": "Bearer wrong-key-wrong-key"}, json.dumps(good).encode()))
    cases.append((auth, b'{"messages": [{"role": "user", "content": "x"}], "max_tokens": '))  # broken JSON
    return cases


async def _attack(url: str, key: str, seconds: float, idle: int) -> Counter:
    host, port = url.rsplit("/", 1)[1].split(":")
    counts: Counter = Counter()
    end = time.monotonic() + seconds
    big = json.dumps({"messages": [{"role": "user", "content": "hi"}] * 300_000}).encode()
    auth = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    tasks = [_idle_socket(host, int(port), f"127.0.0.{2 + i % 10}", end, counts) for i in range(idle)]
    tasks += [_slow_body(host, int(port), end, counts) for _ in range(8)]
    tasks += [_stream_cut(url, key, end, counts) for _ in range(4)]
    tasks.append(_requests(url, "big_body", "127.0.0.22", end, 2.0, counts, [(auth, big)]))
    tasks.append(_requests(url, "bad_option", "127.0.0.23", end, 0.1, counts, _bad_options(key)))
    await asyncio.gather(*tasks)
    return counts


def _attack_main(url: str, key: str, seconds: float, idle: int, parent: int) -> None:
    die_with_parent(parent=parent)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < idle + 256:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(idle + 256, hard), hard))
    print(json.dumps(asyncio.run(_attack(url, key, seconds, idle))))


# --- the run ---------------------------------------------------------------------------------------------

async def _under_chaos(url: str, key: str, clients: int, seconds: float, idle: int) -> tuple[dict, Counter, Counter]:
    attacker = await asyncio.create_subprocess_exec(
        sys.executable, __file__, "--attack", url, "--key", key, "--seconds", str(seconds + 2), "--idle", str(idle),
        "--parent", str(os.getpid()), stdout=subprocess.PIPE)
    await asyncio.sleep(2)  # the idle sockets are open before the steady load starts
    steady, health = await asyncio.gather(_steady(url, key, clients, seconds), _health_probe(url, seconds))
    out, _ = await attacker.communicate()
    return steady, Counter(json.loads(out or b"{}")), health


def run(quick: bool = False, model_dir: Path | None = None, seconds: float | None = None) -> list[dict]:
    size = SIZES["quick" if quick else "full"]
    clients, idle, seconds = size["clients"], size["idle"], seconds or size["seconds"]
    key = secrets.token_hex(16)
    load = os.getloadavg()[0]
    attacks, health, rss = Counter(), Counter(), {}
    with tempfile.TemporaryDirectory(prefix="medvl-serve-chaos-") as tmp:
        folder = model_dir or bench_model(Path(tmp) / "model")
        with serve_process(folder, api_key=key) as (url, process):
            asyncio.run(_steady(url, key, clients, 2))  # warm-up

            def phase(mode: str, part: int) -> dict:
                if mode == "alone":
                    return asyncio.run(_steady(url, key, clients, seconds))
                rss.setdefault("before", _rss_mb(process.pid))  # after a calm phase, before any attack
                steady, attacked, probed = asyncio.run(_under_chaos(url, key, clients, seconds, idle))
                attacks.update(attacked)
                health.update(probed)
                time.sleep(3)  # the attackers' sockets are gone
                return steady

            phases = mirrored(["alone", "under chaos"], (1, 2), phase)  # alone, chaos, chaos, alone
            rss["after"] = _rss_mb(process.pid)
            stats = httpx.get(url + "/health").json()["stats"]
    alone = _summary("steady load alone", clients, phases["alone"])
    chaos = _summary("steady load under chaos", clients, phases["under chaos"])
    chaos["ratio"] = chaos["p95_ms"] / alone["p95_ms"]
    return [
        alone, chaos,
        {"bench": "serve_chaos", "case": "attackers", "idle_sockets": idle, **dict(sorted(attacks.items())),
         "health_probes": dict(health), "server_stopped_requests": stats["stopped"]},
        {"bench": "serve_chaos", "case": "server RSS after / before", "ratio": rss["after"] / rss["before"],
         "rss_before_mb": rss["before"], "rss_after_mb": rss["after"], "load_average_1min": load},
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="8 clients, 100 idle sockets, 8 s phases")
    parser.add_argument("--model", type=Path, default=None, help="serve this model folder instead of a random one")
    parser.add_argument("--seconds", type=float, default=None, help="length of each phase")
    parser.add_argument("--attack", metavar="URL", help=argparse.SUPPRESS)  # the attackers' process
    parser.add_argument("--key", help=argparse.SUPPRESS)
    parser.add_argument("--idle", type=int, default=500, help=argparse.SUPPRESS)
    parser.add_argument("--parent", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.attack:
        return _attack_main(args.attack, args.key, args.seconds, args.idle, args.parent)
    rows = run(quick=args.quick, model_dir=args.model, seconds=args.seconds)
    for row in rows:
        print(json.dumps(row))
    alone, chaos, _, memory = rows
    problems = []
    if alone["errors_5xx"] or chaos["errors_5xx"] or alone["transport_errors"] or chaos["transport_errors"]:
        problems.append("the steady clients saw 5xx or transport errors")
    if chaos["ratio"] > 2:
        problems.append(f"p95 under chaos is {chaos['ratio']:.2f}x the calm p95 (limit 2x)")
    if abs(memory["ratio"] - 1) > 0.10:
        problems.append(f"RSS after the chaos is {memory['ratio']:.2f}x its value before (limit ±10%)")
    if problems:
        sys.exit("; ".join(problems))


if __name__ == "__main__":
    main()
