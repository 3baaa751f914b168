"""The Matrix adapter's retry rules, on a mock transport: 429 honoured, 5xx and timeouts retried, then a clear error."""

from __future__ import annotations

import threading
import time

import httpx
import pytest

from chatbridge.backends.matrix import MatrixBackend
from chatbridge.backends.port import AddOutcome, BackendError, BackendUnavailable

TOKEN = "syt_secret_token"
USER = "@org.p1:localhost"


def backend(handler, slept: list[float], **kwargs) -> MatrixBackend:
    return MatrixBackend(
        "http://synapse", "localhost", TOKEN, transport=httpx.MockTransport(handler), sleep=slept.append, **kwargs
    )


def join_ok(request: httpx.Request) -> httpx.Response:
    if request.url.path.startswith("/_synapse/admin/v2/users/"):
        return httpx.Response(200, json={"name": USER, "deactivated": False})
    return httpx.Response(200, json={"room_id": "!r:localhost"})


def test_429_waits_as_long_as_the_server_asks():
    answers = [httpx.Response(429, json={"errcode": "M_LIMIT_EXCEEDED", "retry_after_ms": 1500}),
               httpx.Response(429, headers={"Retry-After": "2"}, json={})]  # fmt: skip

    def handler(request: httpx.Request) -> httpx.Response:
        assert request.headers["Authorization"] == f"Bearer {TOKEN}"
        return answers.pop(0) if answers else join_ok(request)

    slept: list[float] = []
    assert backend(handler, slept).add_member("!r:localhost", USER) == AddOutcome.JOINED
    assert slept == [1.5, 2.0]


def test_5xx_and_timeouts_back_off_exponentially_with_jitter_then_succeed():
    failures = [httpx.Response(502), httpx.Response(503), "timeout", httpx.Response(500)]

    def handler(request: httpx.Request) -> httpx.Response:
        if failures:
            failure = failures.pop(0)
            if failure == "timeout":
                raise httpx.ReadTimeout("slow", request=request)
            return failure
        return join_ok(request)

    slept: list[float] = []
    matrix = backend(handler, slept, backoff_base=1.0, backoff_max=100.0)
    assert matrix.add_member("!r:localhost", USER) == AddOutcome.JOINED
    assert [round(s) for s in slept] != [0, 0, 0, 0]
    for attempt, wait in enumerate(slept, start=1):
        assert 2 ** (attempt - 1) / 2 <= wait <= 2 ** (attempt - 1)


def test_bounded_attempts_end_in_backend_unavailable_without_ids_or_token():
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    slept: list[float] = []
    matrix = backend(handler, slept, max_attempts=3)
    with pytest.raises(BackendUnavailable) as caught:
        matrix.add_member("!r:localhost", USER)
    assert len(slept) == 2
    assert "after 3 attempts" in str(caught.value)
    assert USER not in str(caught.value) and TOKEN not in str(caught.value) and TOKEN not in repr(matrix)


def test_a_rate_limit_longer_than_we_wait_in_place_is_handed_to_the_loop():
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(429, json={"retry_after_ms": 600_000})

    with pytest.raises(BackendUnavailable, match="rate limited for 600 s"):
        backend(handler, [], max_retry_after=30).add_member("!r:localhost", USER)


def test_a_refusal_is_not_retried():
    calls = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        return httpx.Response(403, json={"errcode": "M_FORBIDDEN", "error": "You are banned"})

    with pytest.raises(BackendError, match="remove member: HTTP 403 M_FORBIDDEN"):
        backend(handler, []).remove_member("!r:localhost", USER)
    assert len(calls) == 1


def test_abandoned_calls_stop_waiting_and_retrying_at_once_and_start_no_more():
    requests: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        requests.append(request.url.path)
        return httpx.Response(503)

    # the real back-off wait (no `sleep` given): 30 to 60 s before the second attempt
    matrix = MatrixBackend("http://synapse", "localhost", TOKEN, transport=httpx.MockTransport(handler),
                           backoff_base=60.0, backoff_max=60.0)  # fmt: skip
    threading.Timer(0.2, matrix.abandon).start()
    started = time.monotonic()
    with pytest.raises(BackendUnavailable, match="abandoned, chatbridge is stopping"):
        matrix.add_member("!r:localhost", USER)
    assert time.monotonic() - started < 20  # not the 30 s of the wait (the margin is for a busy machine)
    assert len(requests) == 1
    with pytest.raises(BackendUnavailable, match="abandoned"):
        matrix.set_name("!r:localhost", "name")
    assert len(requests) == 1  # no call starts once abandoned
