"""An endpoint the client never reached stops the run (`EndpointUnreachable`, a `UserError`) once the
first requests have spent their retries, instead of every item paying them; an endpoint that was
reached once keeps per-request failures; cached replies need no endpoint at all."""

from __future__ import annotations

import asyncio
import socket
import threading

import pytest
from llm_testkit import ask

from medvl.errors import UserError
from medvl.llm.client import EndpointUnreachable, LLMClient, LLMError
from medvl.llm.config import LLMConfig

FIX = "check llm.base_url and that the server is up; finished items are kept: rerun to resume"


def config(base_url: str, **overrides) -> LLMConfig:
    values = {"model": "mock-model", "base_url": base_url, "max_retries": 2, "backoff_initial_s": 0.01,
              "backoff_max_s": 0.05, "timeout_s": 1.0, "max_concurrency": 2}
    return LLMConfig(**{**values, **overrides})


def test_a_closed_port_stops_the_run_after_the_first_retries_not_per_item(unreachable_url):
    client = LLMClient(config(unreachable_url))
    with pytest.raises(EndpointUnreachable) as caught:
        client.run_many([ask(f"q{i}") for i in range(50)], progress=False)
    error = caught.value
    assert str(error) == (f"LLM endpoint {unreachable_url} is unreachable: connection refused "
                          f"(3 attempts, no connection ever made); {FIX}")
    assert isinstance(error, UserError) and not isinstance(error, LLMError)  # not a per-item failure
    # the requests in flight (max_concurrency 2) spent at most their own retries; 50 x 3 before
    assert 3 <= client.usage.requests_sent <= 2 * 3
    sent = client.usage.requests_sent
    with pytest.raises(EndpointUnreachable):  # later requests fail at once, sending nothing
        asyncio.run(client.complete(ask("later")))
    assert client.usage.requests_sent == sent


@pytest.fixture
def blackhole():
    """A loopback port whose accept queue is full: a connection attempt waits, unanswered (Linux)."""
    with socket.socket() as listening:
        listening.bind(("127.0.0.1", 0))
        listening.listen(0)
        with socket.create_connection(listening.getsockname(), timeout=5):  # fills the queue
            yield f"http://127.0.0.1:{listening.getsockname()[1]}/v1"


def test_a_host_name_that_does_not_resolve_stops_the_run():
    client = LLMClient(config("http://medvl-no-such-host.invalid/v1", max_retries=1))
    with pytest.raises(EndpointUnreachable, match="medvl-no-such-host.invalid/v1 is unreachable: "
                                                  "(host name not found|no connection within 0.5 s)"):
        client.run_many([ask("q")], progress=False)


def test_a_connect_timeout_stops_the_run(blackhole):
    client = LLMClient(config(blackhole, max_retries=1, timeout_s=0.4))
    with pytest.raises(EndpointUnreachable, match=r"is unreachable: no connection within 0.2 s \(2 attempts"):
        client.run_many([ask("q")], progress=False)


@pytest.mark.parametrize("first", ["ok", {"status": 503}], ids=["answered", "error_status"])
def test_a_server_that_answered_then_died_fails_per_request(mock_server, first):
    """Any answer, an error status too, shows the server is there: its later outage is per request."""
    server = mock_server(script=[first] * 3)  # the 503 for all three attempts of the first request
    client = LLMClient(config(server.base_url, max_concurrency=1))

    def stop_after_the_first(index, result):
        if index == 0:
            server.stop()

    requests = [ask(f"q{i}") for i in range(4)]
    results = client.run_many(requests, progress=False, on_result=stop_after_the_first)
    assert isinstance(results[0], LLMError) == (first != "ok")
    assert all(r.kind == "retries_exhausted" and r.cause_kind == "connection" for r in results[1:])
    attempts_first = 1 if first == "ok" else 3
    assert client.usage.requests_sent == attempts_first + 3 * 3  # every later item still had its retries


def test_a_server_that_comes_up_during_the_first_retries_is_used(mock_server, unreachable_url):
    """A server still loading (nothing listening yet) gets the first request's whole retry schedule."""
    port = int(unreachable_url.rsplit(":", 1)[1].split("/")[0])
    starting = threading.Timer(0.3, lambda: mock_server(port=port))
    starting.start()
    client = LLMClient(config(unreachable_url, max_retries=8, backoff_initial_s=0.1, backoff_max_s=0.2))
    try:
        replies = client.run_many([ask("a"), ask("b")], progress=False)
    finally:
        starting.join()
    assert not any(isinstance(reply, LLMError) for reply in replies) and client.usage.retries >= 1


def test_cached_replies_need_no_endpoint(mock_server, tmp_path):
    server = mock_server()
    requests = [ask(f"q{i}") for i in range(4)]
    LLMClient(config(server.base_url, cache_dir=str(tmp_path))).run_many(requests, progress=False)
    server.stop()
    rerun = LLMClient(config(server.base_url, cache_dir=str(tmp_path)))
    assert all(reply.cached for reply in rerun.run_many(requests, progress=False))
    assert rerun.usage.requests_sent == 0
    with pytest.raises(EndpointUnreachable):  # the first cache miss finds the endpoint gone
        rerun.run_many([ask("new")], progress=False)
