"""The persistent reply cache: request keys, hits, persistence across clients and processes, SIGKILL."""

from __future__ import annotations

import json
import os
import pickle
import signal
import subprocess
import sys
import textwrap
import threading

from llm_testkit import ask, fast_config

from medvl.llm.cache import ResponseCache
from medvl.llm.client import LLMClient
from medvl.llm.config import LLMConfig
from medvl.llm.messages import ChatReply, ChatRequest, LLMError, Usage
from medvl.llm.mock_server import start_mock_server_process


def test_second_identical_call_is_a_cache_hit(mock_server, tmp_path):
    server = mock_server()
    client = LLMClient(fast_config(server, cache_dir=str(tmp_path)))
    first = client.run_many([ask("q")], progress=False)[0]
    second = client.run_many([ask("q")], progress=False)[0]
    assert not first.cached and second.cached
    assert (second.text, second.key, second.usage) == (first.text, first.key, first.usage)
    assert len(server.requests) == 1
    assert client.usage.cache_hits == 1 and client.usage.requests_sent == 1


def test_cache_persists_across_client_instances(mock_server, tmp_path):
    server = mock_server()
    config = fast_config(server, cache_dir=str(tmp_path / "cache"), temperature=0.9)
    first = LLMClient(config).run_many([ask("q")], progress=False)[0]
    again = LLMClient(config).run_many([ask("q")], progress=False)[0]
    assert again.cached and again.text == first.text  # sampled replies are cached too: re-runs repeat
    assert len(server.requests) == 1


def test_cache_persists_across_processes(mock_server, tmp_path):
    server = mock_server()
    config = fast_config(server, cache_dir=str(tmp_path / "cache"))
    script = textwrap.dedent(
        f"""
        from medvl.llm.client import LLMClient, ChatRequest
        from medvl.llm.config import LLMConfig
        config = LLMConfig.model_validate_json({config.model_dump_json()!r})
        reply = LLMClient(config).run_many([ChatRequest([{{"role": "user", "content": "q"}}])], progress=False)[0]
        print(reply.key)
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    reply = LLMClient(config).run_many([ask("q")], progress=False)[0]
    assert reply.cached and reply.key == done.stdout.strip()
    assert len(server.requests) == 1


def test_key_covers_the_model_and_every_effective_parameter(mock_server):
    server = mock_server()
    client = LLMClient(fast_config(server))
    base = client.resolve(ask("q")).key
    assert client.resolve(ask("q")).key == base
    assert client.resolve(ask("q", temperature=0.7)).key != base
    assert client.resolve(ask("q", response_format={"type": "json_object"})).key != base
    assert client.resolve(ask("other")).key != base
    assert LLMClient(fast_config(server, model="other-model")).resolve(ask("q")).key != base
    assert LLMClient(fast_config(server, max_tokens=64)).resolve(ask("q")).key != base
    assert LLMClient(fast_config(server, extra_body={"seed": 1})).resolve(ask("q")).key != base
    # The base URL is not part of the key: the same request to a mirror reuses the cache.
    assert LLMClient(fast_config(server, base_url="http://elsewhere/v1")).resolve(ask("q")).key == base
    # Different params go out as different requests, each received once.
    client.run_many([ask("q"), ask("q", temperature=0.7), ask("q")], progress=False)
    assert sorted(server.count_by_key().values()) == [1, 1]


def test_identical_requests_in_one_batch_are_sent_once(mock_server):
    server = mock_server(latency_s=0.05)
    client = LLMClient(fast_config(server))
    replies = client.run_many([ask("q"), ask("q"), ask("q")], progress=False)
    assert len(server.requests) == 1
    assert sorted(r.cached for r in replies) == [False, True, True]
    assert len({r.text for r in replies}) == 1


def test_cache_store_is_shared_by_threads_and_pickles(tmp_path):
    cache = ResponseCache(tmp_path)
    replies = [ChatReply(f"t{i}", "stop", Usage(i, i), False, f"k{i}", "m") for i in range(40)]
    threads = [threading.Thread(target=cache.put, args=(r,)) for r in replies]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(cache) == 40
    clone = pickle.loads(pickle.dumps(cache))
    assert clone.get("k7") == ChatReply("t7", "stop", Usage(7, 7), True, "k7", "m")
    assert clone.contains(["k1", "k2", "missing"]) == {"k1", "k2"}
    assert clone.get("missing") is None


_CACHE_WRITER = """
import sys
from medvl.llm.cache import ResponseCache
from medvl.llm.messages import ChatReply, Usage
cache, worker = ResponseCache(sys.argv[1]), sys.argv[2]
for i in range(200):
    cache.put(ChatReply("text", "stop", Usage(1, 1), False, f"{worker}-{i}", "m"))
    cache.get(f"{worker}-{i // 2}")
"""


def test_cache_takes_concurrent_writes_from_several_processes(tmp_path):
    writers = [subprocess.Popen([sys.executable, "-c", _CACHE_WRITER, str(tmp_path), str(w)],
                                stderr=subprocess.PIPE, text=True) for w in range(3)]
    for writer in writers:
        assert writer.wait(timeout=60) == 0, writer.stderr.read()
    cache = ResponseCache(tmp_path)
    assert len(cache) == 600 and cache.get("2-199").text == "text"


_CACHE_OPENERS = """
import multiprocessing, sys
from medvl.llm.cache import ResponseCache

def open_together(folder, barrier, errors):
    barrier.wait()
    try:
        ResponseCache(folder).contains(["k"])
    except Exception as error:
        errors.put(repr(error))

if __name__ == "__main__":
    fork, failed = multiprocessing.get_context("fork"), []
    for trial in range(int(sys.argv[2])):
        barrier, errors = fork.Barrier(4), fork.Queue()
        folder = f"{sys.argv[1]}/{trial}"  # a new database each time
        openers = [fork.Process(target=open_together, args=(folder, barrier, errors)) for _ in range(4)]
        for opener in openers:
            opener.start()
        for opener in openers:
            opener.join()
        while not errors.empty():
            failed.append(errors.get())
    print(len(failed), failed[:1])
"""


def test_processes_opening_a_new_cache_together_all_get_it(tmp_path):
    # 4 processes open the same new database at once, 80 times: SQLite refused the switch to WAL
    # ("database is locked", without waiting) in about 1 of 15 such starts before it was retried
    result = subprocess.run([sys.executable, "-c", _CACHE_OPENERS, str(tmp_path), "80"], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split()[0] == "0", result.stdout


def test_client_and_errors_pickle_for_worker_processes(tmp_path):
    client = LLMClient(LLMConfig(model="m", cache_dir=str(tmp_path)))
    clone = pickle.loads(pickle.dumps(client))
    assert clone.config == client.config and clone.cache.path == client.cache.path
    error = pickle.loads(pickle.dumps(LLMError("retries_exhausted", "x", status=503, key="k", cause_kind="timeout")))
    assert (error.kind, error.status, error.key, error.cause_kind) == ("retries_exhausted", 503, "k", "timeout")


_KILLABLE_CLIENT = """
import sys
from medvl.llm.client import LLMClient, ChatRequest
from medvl.llm.config import LLMConfig
config = LLMConfig.model_validate_json(sys.argv[1])
requests = [ChatRequest([{"role": "user", "content": f"question {i}"}]) for i in range(int(sys.argv[2]))]
def on_result(index, result):
    print(index, flush=True)
LLMClient(config).run_many(requests, progress=False, on_result=on_result)
print("done", flush=True)
"""


def test_sigkill_then_resume_never_resends_a_received_reply(tmp_path):
    """Kill a client mid-run; on resume, only requests that were in flight at the kill go out again."""
    n, concurrency = 60, 4
    # 0.15 s a reply: the rest of the run takes ~2 s, so even a loaded machine kills it mid-run (at 0.03 s the
    # client once finished all 60 before the kill landed: nothing left to resume)
    with start_mock_server_process(latency_s=0.15, log_path=tmp_path / "requests.jsonl") as server:
        config = LLMConfig(
            model="m", base_url=server.base_url, cache_dir=str(tmp_path / "cache"), max_concurrency=concurrency
        )
        command = [sys.executable, "-c", _KILLABLE_CLIENT, config.model_dump_json(), str(n)]
        process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
        finished = [process.stdout.readline() for _ in range(15)]
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
        assert all(line.strip().isdigit() for line in finished)
        before_resume = server.count_by_key()
        cached = ResponseCache(tmp_path / "cache")
        cached_keys = cached.contains(list(before_resume))
        assert len(cached_keys) >= 15 and len(before_resume) < n

        resumed = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
        assert resumed.returncode == 0 and resumed.stdout.strip().endswith("done"), resumed.stderr
        after = server.count_by_key()
    assert len(after) == n and len(cached) == n
    resent = {key for key, count in after.items() if count > 1}
    assert not resent & cached_keys  # a reply that arrived is never paid for again
    assert resent <= set(before_resume) and len(resent) <= concurrency  # only the in-flight ones
    assert max(after.values()) <= 2
    log_lines = (tmp_path / "requests.jsonl").read_text().splitlines()
    assert len(log_lines) == sum(after.values()) and json.loads(log_lines[0])["behaviour"]["text"]


def test_resolved_request_is_the_full_body_and_its_key_ignores_param_order(mock_server):
    server = mock_server()
    request = ChatRequest([{"role": "user", "content": "q"}])
    resolved = LLMClient(fast_config(server)).resolve(request)
    assert resolved.params["model"] == "mock-model" and resolved.key != request.key
    assert ChatRequest(resolved.messages, dict(reversed(resolved.params.items()))).key == resolved.key
