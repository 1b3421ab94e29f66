"""A rejected API key (a 401, or 403s in a row) stops the run (`KeyRejected`, a `UserError`) instead of
every item paying for it: one line naming the endpoint, the status, the server's message and the
variable to set, never the key; nothing more is sent. A 403 for one request alone fails that item."""

from __future__ import annotations

import asyncio
import pickle

import pytest
from llm_testkit import ask, fast_config

from medvl.errors import UserError
from medvl.llm.client import KeyRejected, LLMClient, LLMError

RESUME = "finished items are kept: rerun to resume"


def test_a_wrong_key_is_one_line_that_never_holds_it(wrong_key_endpoint):
    endpoint = wrong_key_endpoint()  # its 401 echoes the key it got
    client = LLMClient(fast_config(endpoint, api_key_env=endpoint.api_key_env))
    with pytest.raises(KeyRejected) as caught:
        client.run_many([ask("q")], progress=False)
    error = caught.value
    assert str(error) == (f"LLM endpoint {endpoint.base_url} rejected the API key in ${endpoint.api_key_env} "
                          "(401 Unauthorized: Incorrect API key provided: ***); set a valid key in "
                          f"${endpoint.api_key_env} (llm.api_key_env names the variable); {RESUME}")
    assert isinstance(error, UserError) and not isinstance(error, LLMError)  # not a per-item failure
    assert error.__cause__ is None and error.__suppress_context__  # no traceback shows the server's reply
    assert client.usage.requests_sent == 1 and client.usage.retries == 0  # not retried
    copy = pickle.loads(pickle.dumps(error))  # crosses a worker pool as it is
    assert type(copy) is KeyRejected and str(copy) == str(error)


def test_a_key_that_is_not_set_and_a_403_name_their_fix(mock_server, monkeypatch):
    monkeypatch.delenv("MEDVL_TEST_KEY", raising=False)
    server = mock_server(script=[{"status": 401}])
    with pytest.raises(KeyRejected) as unset:
        LLMClient(fast_config(server, api_key_env="MEDVL_TEST_KEY")).run_many([ask("q")], progress=False)
    assert str(unset.value) == (f"LLM endpoint {server.base_url} rejected the API key (401 Unauthorized: mock "
                                "status 401): $MEDVL_TEST_KEY is not set; set it to the endpoint's key "
                                f"(llm.api_key_env names the variable); {RESUME}")

    monkeypatch.setenv("MEDVL_TEST_KEY", "sk-medvl-test-no-access")
    server = mock_server(script=lambda index: {"status": 403})  # a key without access: every request
    client = LLMClient(fast_config(server, api_key_env="MEDVL_TEST_KEY", max_concurrency=1))
    with pytest.raises(KeyRejected, match=r"rejected the API key in \$MEDVL_TEST_KEY \(403 Forbidden: mock status "
                                          r"403; 3 requests in a row\); set a key with access to model mock-model in "
                                          r"\$MEDVL_TEST_KEY"):
        client.run_many([ask(f"q{i}") for i in range(10)], progress=False)
    assert client.usage.requests_sent == 3


def test_a_403_for_one_request_fails_that_item_alone(mock_server, monkeypatch):
    """A proxy that forbids one request for its content: stopping the run there stopped every rerun
    at the same item, as the finished ones are cached and it is the first sent again."""
    monkeypatch.setenv("MEDVL_TEST_KEY", "sk-medvl-test-key")
    server = mock_server(script=["ok", {"status": 403}, {"status": 403}, "ok", {"status": 403}, "ok"])
    client = LLMClient(fast_config(server, api_key_env="MEDVL_TEST_KEY", max_concurrency=1))
    results = client.run_many([ask(f"q{i}") for i in range(6)], progress=False)
    failed = [i for i, r in enumerate(results) if isinstance(r, LLMError)]
    assert failed == [1, 2, 4] and all(results[i].status == 403 and results[i].kind == "http_error" for i in failed)
    assert "sk-medvl-test-key" not in str(results[1]) and client.usage.retries == 0


def test_the_first_rejection_stops_every_request(wrong_key_endpoint):
    """The requests in flight get their own 401s; none after them is sent (before: 50 sent, 50 failed)."""
    endpoint = wrong_key_endpoint()
    client = LLMClient(fast_config(endpoint, api_key_env=endpoint.api_key_env, max_concurrency=4))
    with pytest.raises(KeyRejected):
        client.run_many([ask(f"q{i}") for i in range(50)], progress=False)
    assert 1 <= client.usage.requests_sent <= 4
    sent = client.usage.requests_sent
    with pytest.raises(KeyRejected):  # later requests fail at once, sending nothing
        asyncio.run(client.complete(ask("later")))
    assert client.usage.requests_sent == sent


def test_a_key_revoked_mid_run_stops_it_after_the_finished_items(mock_server):
    server = mock_server(script=["ok", "ok", {"status": 401}])
    client = LLMClient(fast_config(server, max_concurrency=1))
    finished: list[int] = []
    with pytest.raises(KeyRejected):
        client.run_many([ask(f"q{i}") for i in range(6)], progress=False,
                        on_result=lambda index, result: finished.append(index))
    assert finished == [0, 1] and client.usage.requests_sent == 3


def test_the_right_key_is_sent_and_accepted(wrong_key_endpoint, monkeypatch):
    endpoint = wrong_key_endpoint()
    monkeypatch.setenv(endpoint.api_key_env, endpoint.key)
    client = LLMClient(fast_config(endpoint, api_key_env=endpoint.api_key_env))
    replies = client.run_many([ask("a"), ask("b")], progress=False)
    assert all(reply.text.startswith("mock reply") for reply in replies)
