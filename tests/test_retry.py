"""The transient/permanent predicate and the retry policies, without an API server.

Errors are real kubernetes ApiExceptions, raised by the client's own response
handling (ApiClient.response_deserialize) from HTTP responses shaped like the
API server's: status line, headers and a JSON Status body. The stale-cache
lookup is a plain function standing in for a GET of the named ExternalIPPool.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import urllib3
from kubernetes.client import ApiClient
from kubernetes.client.exceptions import ApiException
from kubernetes.client.rest import RESTResponse
from urllib3.exceptions import (
    MaxRetryError,
    NewConnectionError,
    ProtocolError,
    ReadTimeoutError,
    SSLError,
)

from fixtures.retry import (
    CREATE,
    READ,
    UPDATE,
    ErrorKind,
    ObjectState,
    RetryPolicy,
    RetryStats,
    api_status,
    classify,
    describe,
    is_transient,
)

pytest_plugins = ["pytester"]

REPO = Path(__file__).resolve().parent.parent

POOL_WEBHOOK = "externalippoolvalidator.antrea.io"
EGRESS_WEBHOOK = "egressvalidator.antrea.io"


def api_error(
    code: int,
    phrase: str,
    message: str,
    reason: str = "",
    details: dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
) -> ApiException:
    """The ApiException the client raises for this API server response."""
    status: dict[str, Any] = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
    }
    if reason:
        status["reason"] = reason
    if details:
        status["details"] = details
    status["code"] = code
    raw = urllib3.HTTPResponse(
        body=json.dumps(status).encode(),
        status=code,
        reason=phrase,
        headers={"Content-Type": "application/json", "Audit-Id": "4f1c-audit", **(headers or {})},
        preload_content=True,
    )
    resp = RESTResponse(raw)
    resp.read()
    try:
        ApiClient().response_deserialize(resp, {"2XX": "object"})
    except ApiException as exc:
        return exc
    raise AssertionError("a non-2xx response must raise")


def denied(webhook: str, message: str, code: int = 400) -> ApiException:
    """A validating webhook's denial as the API server wraps it (no code from Antrea -> 400)."""
    phrase = {400: "Bad Request", 403: "Forbidden"}[code]
    return api_error(code, phrase, f'admission webhook "{webhook}" denied the request: {message}')


OVERLAP_V25 = "range [198.18.30.0/24] overlaps with range [198.18.0.0/16] of ExternalIPPool qux"
OVERLAP_V24 = (
    "range [169.254.100.0/30] overlaps with range [169.254.100.0/30] "
    "of pool test-service-pool-86dtz"
)
OVERLAP_START_END = (
    "range [198.19.20.10-198.19.20.20] overlaps with range [198.19.20.0/24] of ExternalIPPool a"
)
OVERLAPS = [
    pytest.param(OVERLAP_V25, "qux", id="v2.5-cidr"),
    pytest.param(OVERLAP_V24, "test-service-pool-86dtz", id="v2.4-pool"),
    pytest.param(OVERLAP_START_END, "a", id="start-end"),
]


class FakeLookup:
    """Stands in for a GET of the named ExternalIPPool; records which names it was asked."""

    def __init__(self, state: ObjectState | None = None, error: BaseException | None = None):
        self.state, self.error, self.asked = state, error, []

    def __call__(self, pool: str) -> ObjectState:
        self.asked.append(pool)
        if self.error is not None:
            raise self.error
        assert self.state is not None
        return self.state


# --- overlap denials: decided with the lookup ------------------------------------------------


@pytest.mark.parametrize("code", [400, 403])
@pytest.mark.parametrize(("message", "pool"), OVERLAPS)
@pytest.mark.parametrize("state", [ObjectState.ABSENT, ObjectState.TERMINATING])
def test_overlap_with_a_gone_or_terminating_pool_is_a_stale_cache(message, pool, state, code):
    lookup = FakeLookup(state)
    verdict = classify(denied(POOL_WEBHOOK, message, code), lookup)
    assert verdict.kind is ErrorKind.STALE_CACHE
    assert verdict.transient
    assert verdict.pool == pool
    assert lookup.asked == [pool]
    assert "stale" in verdict.summary


@pytest.mark.parametrize(("message", "pool"), OVERLAPS)
def test_overlap_with_a_live_pool_is_permanent(message, pool):
    lookup = FakeLookup(ObjectState.LIVE)
    verdict = classify(denied(POOL_WEBHOOK, message), lookup)
    assert verdict.kind is ErrorKind.OVERLAP
    assert not verdict.transient
    assert lookup.asked == [pool]
    assert f"{pool} is live" in verdict.summary


@pytest.mark.parametrize(("message", "pool"), OVERLAPS)
def test_overlap_without_a_lookup_is_not_retried(message, pool):
    verdict = classify(denied(POOL_WEBHOOK, message))
    assert verdict.kind is ErrorKind.OVERLAP
    assert verdict.pool == pool
    assert not is_transient(denied(POOL_WEBHOOK, message))


def test_overlap_whose_pool_check_hits_a_connection_reset_is_transient():
    lookup = FakeLookup(error=ConnectionResetError(104, "Connection reset by peer"))
    verdict = classify(denied(POOL_WEBHOOK, OVERLAP_V25), lookup)
    assert verdict.kind is ErrorKind.CONNECTION
    assert verdict.pool == "qux"


def test_overlap_whose_pool_check_is_forbidden_is_permanent():
    forbidden = api_error(
        403, "Forbidden", 'externalippools.crd.antrea.io "qux" is forbidden', "Forbidden"
    )
    verdict = classify(denied(POOL_WEBHOOK, OVERLAP_V25), FakeLookup(error=forbidden))
    assert verdict.kind is ErrorKind.OVERLAP
    assert "could not be checked" in verdict.summary


@pytest.mark.parametrize(
    ("webhook", "message"),
    [
        (POOL_WEBHOOK, "existing IPRanges [198.19.20.0/24] cannot be updated or deleted"),
        (EGRESS_WEBHOOK, "ExternalIPPool pool-a does not exist"),
        (EGRESS_WEBHOOK, "IP 198.19.90.9 is not within the IP range"),
    ],
)
def test_other_webhook_denials_are_permanent_and_need_no_lookup(webhook, message):
    lookup = FakeLookup(ObjectState.ABSENT)
    verdict = classify(denied(webhook, message), lookup)
    assert verdict.kind is ErrorKind.WEBHOOK_DENIED
    assert lookup.asked == []


def test_the_full_wrapped_message_is_read_from_the_status_body():
    exc = denied(POOL_WEBHOOK, OVERLAP_V25)
    assert exc.status == 400
    status = api_status(exc)
    assert status.message == f'admission webhook "{POOL_WEBHOOK}" denied the request: {OVERLAP_V25}'
    assert status.code == 400


# --- status codes ------------------------------------------------------------------------------


def _terminating(resource: str, name: str) -> ApiException:
    return api_error(
        409,
        "Conflict",
        f'object is being deleted: {resource} "{name}" already exists',
        "AlreadyExists",
        {"name": name, "kind": resource},
    )


CONFLICT = api_error(
    409,
    "Conflict",
    'Operation cannot be fulfilled on configmaps "c": the object has been modified; '
    "please apply your changes to the latest version and try again",
    "Conflict",
    {"name": "c", "kind": "configmaps"},
)
INVALID = api_error(
    422,
    "Unprocessable Entity",
    'ExternalIPPool.crd.antrea.io "a" is invalid: spec.ipRanges: Required value',
    "Invalid",
)
FORBIDDEN = api_error(
    403,
    "Forbidden",
    'externalippools.crd.antrea.io is forbidden: User "system:serviceaccount:e2e:x" '
    'cannot create resource "externalippools" in API group "crd.antrea.io"',
    "Forbidden",
)

STATUS_CASES = [
    pytest.param(
        _terminating("externalippools.crd.antrea.io", "a"), ErrorKind.TERMINATING, id="terminating"
    ),
    pytest.param(_terminating("namespaces", "ns1"), ErrorKind.TERMINATING, id="ns-terminating"),
    pytest.param(
        api_error(409, "Conflict", 'configmaps "c" already exists', "AlreadyExists"),
        ErrorKind.ALREADY_EXISTS,
        id="already-exists",
    ),
    pytest.param(CONFLICT, ErrorKind.CONFLICT, id="conflict"),
    pytest.param(
        api_error(
            429,
            "Too Many Requests",
            "Too many requests, please try again later.",
            "TooManyRequests",
            {"retryAfterSeconds": 1},
            {"Retry-After": "1"},
        ),
        ErrorKind.THROTTLED,
        id="429",
    ),
    pytest.param(
        api_error(
            500,
            "Internal Server Error",
            f'Internal error occurred: failed calling webhook "{POOL_WEBHOOK}": failed to call '
            'webhook: Post "https://127.0.0.1:10349/validate/externalippool?timeout=5s": '
            "dial tcp 127.0.0.1:10349: connect: connection refused",
            "InternalError",
        ),
        ErrorKind.SERVER_ERROR,
        id="500-webhook-down",
    ),
    pytest.param(
        api_error(
            503, "Service Unavailable", "the server is currently unable", "ServiceUnavailable"
        ),
        ErrorKind.SERVER_ERROR,
        id="503",
    ),
    pytest.param(
        api_error(
            504,
            "Gateway Timeout",
            "Timeout: request did not complete within requested timeout",
            "Timeout",
        ),
        ErrorKind.SERVER_ERROR,
        id="504",
    ),
    pytest.param(INVALID, ErrorKind.INVALID, id="422"),
    pytest.param(
        api_error(
            400, "Bad Request", "the body of the request was in an unknown format", "BadRequest"
        ),
        ErrorKind.INVALID,
        id="400",
    ),
    pytest.param(FORBIDDEN, ErrorKind.FORBIDDEN, id="403-rbac"),
    pytest.param(
        api_error(
            403,
            "Forbidden",
            'configmaps "c" is forbidden: unable to create new content in namespace ns1 '
            "because it is being terminated",
            "Forbidden",
        ),
        ErrorKind.FORBIDDEN,
        id="403-namespace-terminating",
    ),
    pytest.param(
        api_error(401, "Unauthorized", "Unauthorized", "Unauthorized"),
        ErrorKind.FORBIDDEN,
        id="401",
    ),
    pytest.param(
        api_error(404, "Not Found", 'externalippools.crd.antrea.io "a" not found', "NotFound"),
        ErrorKind.NOT_FOUND,
        id="404",
    ),
]


@pytest.mark.parametrize(("exc", "kind"), STATUS_CASES)
def test_api_errors_are_classified_by_status_and_reason(exc, kind):
    lookup = FakeLookup(ObjectState.ABSENT)
    assert classify(exc, lookup).kind is kind
    assert is_transient(exc, lookup) is kind.transient
    assert lookup.asked == []


def test_the_transient_kinds_are_exactly_the_issue_list():
    assert {k for k in ErrorKind if k.transient} == {
        ErrorKind.STALE_CACHE,
        ErrorKind.TERMINATING,
        ErrorKind.CONFLICT,
        ErrorKind.THROTTLED,
        ErrorKind.SERVER_ERROR,
        ErrorKind.CONNECTION,
    }


@pytest.mark.parametrize(
    ("exc", "kind"),
    [
        (ConnectionResetError(104, "Connection reset by peer"), ErrorKind.CONNECTION),
        (
            ProtocolError("Connection aborted.", ConnectionResetError(104, "reset")),
            ErrorKind.CONNECTION,
        ),
        (
            MaxRetryError(
                None,  # type: ignore[arg-type]
                "/api/v1/namespaces",
                NewConnectionError(None, "Failed to establish a new connection: [Errno 111]"),  # type: ignore[arg-type]
            ),
            ErrorKind.CONNECTION,
        ),
        (
            ReadTimeoutError(None, "/api/v1", "Read timed out. (read timeout=30)"),
            ErrorKind.CONNECTION,
        ),  # type: ignore[arg-type]
        (TimeoutError("timed out"), ErrorKind.CONNECTION),
        (MaxRetryError(None, "/api", SSLError("certificate verify failed")), ErrorKind.OTHER),  # type: ignore[arg-type]
        (ApiException(status=0, reason="SSLError\ncertificate verify failed"), ErrorKind.OTHER),
        (ValueError("bad manifest"), ErrorKind.OTHER),
    ],
    ids=["reset", "aborted", "refused", "read-timeout", "timeout", "tls", "tls-api", "value"],
)
def test_connection_failures_are_transient_and_tls_failures_are_not(exc, kind):
    assert classify(exc).kind is kind


def test_describe_shows_the_status_but_never_response_headers():
    exc = api_error(
        500,
        "Internal Server Error",
        "etcdserver: leader changed",
        "InternalError",
        headers={"Set-Cookie": "session=abc123"},
    )
    text = describe(exc)
    assert text == "500 InternalError: etcdserver: leader changed"
    assert "abc123" not in text and "Audit-Id" not in text


# --- policies ---------------------------------------------------------------------------------


def flaky(*failures: BaseException, result: str = "done"):
    """A callable that raises `failures` in order, then returns `result`; counts its calls."""
    pending = list(failures)

    def call() -> str:
        call.calls += 1  # type: ignore[attr-defined]
        if pending:
            raise pending.pop(0)
        return result

    call.calls = 0  # type: ignore[attr-defined]
    return call


def quick(policy: RetryPolicy) -> tuple[RetryPolicy, RetryStats]:
    stats = RetryStats()
    return replace(policy, initial_wait=0.0, jitter=0.0, max_wait=0.0, stats=stats), stats


def test_create_policy_retries_a_stale_cache_denial_then_succeeds(caplog):
    policy, stats = quick(CREATE)
    call = flaky(denied(POOL_WEBHOOK, OVERLAP_V25), denied(POOL_WEBHOOK, OVERLAP_V25))
    lookup = FakeLookup(ObjectState.ABSENT)
    with caplog.at_level(logging.WARNING, logger="cni_e2e.retry"):
        assert policy.retrying(lookup, what="ExternalIPPool/b")(call) == "done"
    assert call.calls == 3
    assert stats.snapshot() == {"stale-cache": 2}
    lines = [r.getMessage() for r in caplog.records if r.name == "cni_e2e.retry"]
    assert len(lines) == 2
    assert "create ExternalIPPool/b: attempt 1 failed (stale-cache)" in lines[0]
    assert "attempt 2 failed (stale-cache)" in lines[1]
    assert "of ExternalIPPool qux" in lines[0]
    assert all("Audit-Id" not in line for line in lines)


@pytest.mark.parametrize(
    "exc",
    [
        pytest.param(denied(POOL_WEBHOOK, OVERLAP_V25), id="live-overlap"),
        pytest.param(INVALID, id="422"),
        pytest.param(FORBIDDEN, id="403"),
        pytest.param(denied(EGRESS_WEBHOOK, "ExternalIPPool p does not exist"), id="egress"),
    ],
)
def test_a_permanent_error_fails_on_the_first_attempt(exc, caplog):
    policy, stats = quick(CREATE)
    call = flaky(exc)
    with pytest.raises(ApiException) as raised:
        policy.retrying(FakeLookup(ObjectState.LIVE))(call)
    assert raised.value is exc
    assert call.calls == 1
    assert stats.snapshot() == {}
    assert not [r for r in caplog.records if r.name == "cni_e2e.retry"]


def test_each_kind_is_counted_separately():
    policy, stats = quick(UPDATE)
    call = flaky(CONFLICT, ConnectionResetError(104, "reset"), CONFLICT)
    policy.retrying()(call)
    assert stats.snapshot() == {"conflict": 2, "connection": 1}


def test_read_policy_does_not_retry_what_only_writes_can_fix():
    policy, stats = quick(READ)
    call = flaky(_terminating("namespaces", "ns1"))
    with pytest.raises(ApiException):
        policy.retrying()(call)
    assert call.calls == 1


def test_retrying_stops_at_the_deadline_and_reraises_the_last_error():
    stats = RetryStats()
    policy = RetryPolicy(
        "t", deadline=0.5, initial_wait=0.05, max_wait=0.05, jitter=0.0, stats=stats
    )
    errors = [ConnectionResetError(104, f"reset {i}") for i in range(100)]
    call = flaky(*errors)
    start = time.monotonic()
    with pytest.raises(ConnectionResetError) as raised:
        policy.retrying()(call)
    elapsed = time.monotonic() - start
    assert elapsed < 0.5 + 0.2
    assert 3 <= call.calls < 100
    assert raised.value is errors[call.calls - 1]
    assert stats.get(ErrorKind.CONNECTION) == call.calls - 1


@pytest.mark.parametrize(("header", "slept"), [("2", 2.0), ("30", 5.0)])
def test_throttling_waits_for_retry_after_capped_at_max_wait(header, slept):
    throttled = api_error(
        429,
        "Too Many Requests",
        "Too many requests",
        "TooManyRequests",
        headers={"Retry-After": header},
    )
    sleeps: list[float] = []
    policy = replace(CREATE, initial_wait=0.01, max_wait=5.0, jitter=0.0, stats=RetryStats())
    assert policy.retrying(sleep=sleeps.append)(flaky(throttled)) == "done"
    assert sleeps == [slept]


def test_backoff_grows_exponentially_with_jitter_up_to_the_cap():
    sleeps: list[float] = []
    policy = RetryPolicy(
        "t", deadline=60, initial_wait=0.1, max_wait=1.0, jitter=0.05, stats=RetryStats()
    )
    policy.retrying(sleep=sleeps.append)(flaky(*[TimeoutError()] * 6))
    assert len(sleeps) == 6
    for i, s in enumerate(sleeps[:4]):
        assert 0.1 * 2**i <= s <= 0.1 * 2**i + 0.05
    assert 1.0 <= sleeps[-1] <= 1.05


def test_retry_stats_merge_and_snapshot():
    stats = RetryStats()
    stats.record(ErrorKind.CONFLICT)
    stats.merge({"conflict": 2, "stale-cache": 1})
    assert stats.snapshot() == {"conflict": 3, "stale-cache": 1}
    stats.clear()
    assert stats.snapshot() == {}


# --- the session summary under xdist -----------------------------------------------------------

INNER_RETRY = """
from dataclasses import replace
from fixtures.retry import CREATE

def test_one_connection_retry():
    calls = []
    def call():
        calls.append(1)
        if len(calls) == 1:
            raise ConnectionResetError(104, "Connection reset by peer")
        return "ok"
    policy = replace(CREATE, initial_wait=0.0, jitter=0.0, max_wait=0.0)
    assert policy.retrying(sleep=lambda s: None)(call) == "ok"
"""


@pytest.fixture
def retry_suite(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    """A one-test suite with the cni-e2e plugins, run in a subprocess like the real thing."""
    pytester.makeconftest('pytest_plugins = ["fixtures.plugins", "fixtures.plugins.kube"]\n')
    pytester.makeini("[pytest]\n")
    pytester.makepyfile(test_inner=INNER_RETRY)
    monkeypatch.setenv("PYTHONPATH", str(REPO))
    return pytester


def _summary(result: pytest.RunResult) -> list[str]:
    lines = result.outlines
    start = next(i for i, line in enumerate(lines) if "retries by error kind" in line)
    return [line.strip() for line in lines[start + 1 : start + 3]]


def test_summary_sums_every_workers_retries(retry_suite):
    """Each of two workers runs the test once (--dist each): 2 retries, seen by the controller."""
    result = retry_suite.runpytest_subprocess(
        "-p", "no:cacheprovider", "-n", "2", "--dist", "each", timeout=120
    )
    result.assert_outcomes(passed=2)
    assert _summary(result)[0] == "connection: 2"


def test_summary_without_xdist_counts_the_process_own_retries(retry_suite):
    result = retry_suite.runpytest_subprocess("-p", "no:cacheprovider", timeout=120)
    result.assert_outcomes(passed=1)
    assert _summary(result)[0] == "connection: 1"


@pytest.mark.parametrize(
    ("key", "message", "group"),
    [
        (
            "antrea.pool-overlap",
            "range [198.18.30.0/24] overlaps with range [198.18.0.0/16] of ExternalIPPool qux",
            "qux",
        ),
        (
            "antrea.pool-overlap",
            "range [169.254.100.0/30] overlaps with range [169.254.100.0/30] of pool p-86dtz",
            "p-86dtz",
        ),
        (
            "antrea.range-immutable",
            "existing IPRanges [198.18.9.0/24] cannot be updated or deleted",
            "198.18.9.0/24",
        ),
        (
            "antrea.range-immutable",
            "existing IPRanges [198.18.9.0/24] cannot be deleted",
            "198.18.9.0/24",
        ),
    ],
)
def test_every_wording_of_the_supported_versions_is_recognised(key, message, group):
    from fixtures import upstream_messages

    found = upstream_messages.match(key, message)
    assert found is not None
    assert group in found.groups()
