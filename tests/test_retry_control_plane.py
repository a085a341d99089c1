"""The retry policies against a real kube-apiserver and the stale-cache lab webhook.

The lab (tests/stalecache) stands in for antrea-controller's ExternalIPPool
webhook at the process boundary: the API server calls it over TLS and wraps its
denials exactly as it wraps Antrea's; its informer cache shows every event `lag`
seconds late, which is upstream Antrea #6783.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from dataclasses import replace

import pytest
from kubernetes.client.exceptions import ApiException

from fixtures.kube import (
    EXTERNAL_IP_POOL,
    NAMESPACE,
    create_with_retry,
    delete_and_wait,
    get_object,
    request,
    unique_name,
    update_object,
    update_with_conflict_retry,
)
from fixtures.retry import CREATE, UPDATE, ErrorKind, RetryStats, classify
from tests.stalecache.webhook import StaleCacheWebhook

LAG = 2.0


@pytest.fixture
def lab(control_plane, request) -> Iterator[StaleCacheWebhook]:
    """A stale-cache webhook of our own on the session's API server (lag via indirect param)."""
    with StaleCacheWebhook(control_plane.kubeconfig, lag=getattr(request, "param", 0.0)) as hook:
        yield hook


def retry_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "cni_e2e.retry"]


def decisions_for(lab: StaleCacheWebhook, name: str) -> list:
    return [d for d in lab.decisions if d.name == name]


@pytest.mark.parametrize("lab", [LAG], indirect=True)
def test_recreating_a_deleted_range_succeeds_through_the_policy_while_the_cache_lags(
    lab, k8s, caplog
):
    old, new = f"{lab.lab_id}-old", f"{lab.lab_id}-new"
    ranges = [{"cidr": "169.254.110.0/30"}]
    create_with_retry(k8s, lab.pool_manifest(old, ranges))
    lab.wait_cached(old, timeout=LAG + 10)
    delete_and_wait(k8s, EXTERNAL_IP_POOL, old, timeout=20)  # gone from the API, not the cache

    stats = RetryStats()
    policy = replace(CREATE, deadline=LAG + 10, stats=stats)
    start = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="cni_e2e.retry"):
        made = create_with_retry(k8s, lab.pool_manifest(new, ranges), policy=policy)
    elapsed = time.monotonic() - start

    assert made["metadata"]["name"] == new
    assert elapsed < policy.deadline
    attempts = decisions_for(lab, new)
    assert [d.allowed for d in attempts][-1] is True
    denials = [d for d in attempts if not d.allowed]
    assert denials, "the lab never denied: the test did not exercise the stale cache"
    assert all(d.cached == (old,) for d in denials)
    assert stats.snapshot() == {"stale-cache": len(denials)}
    lines = retry_lines(caplog)
    assert len(lines) == len(denials)
    assert f"create ExternalIPPool/{new}: attempt 1 failed (stale-cache)" in lines[0]
    assert f"of ExternalIPPool {old}" in lines[0] and "is absent" in lines[0]


@pytest.mark.parametrize("lab", [0.0, LAG], indirect=True, ids=["no-lag", "lag"])
def test_overlapping_a_live_pool_fails_on_the_first_attempt(lab, k8s, caplog):
    live, clash = f"{lab.lab_id}-live", f"{lab.lab_id}-clash"
    create_with_retry(k8s, lab.pool_manifest(live, [{"cidr": "169.254.111.0/24"}]))
    lab.wait_cached(live, timeout=LAG + 10)
    stats = RetryStats()

    with caplog.at_level(logging.WARNING, logger="cni_e2e.retry"):
        with pytest.raises(ApiException) as raised:
            create_with_retry(
                k8s,
                lab.pool_manifest(clash, [{"cidr": "169.254.111.8/29"}]),
                policy=replace(CREATE, stats=stats),
            )

    assert classify(raised.value).kind is ErrorKind.OVERLAP
    assert len(decisions_for(lab, clash)) == 1, "a permanent denial was sent again"
    assert stats.snapshot() == {}
    assert retry_lines(caplog) == []


def test_a_schema_error_fails_on_the_first_attempt(lab, k8s, caplog):
    name = f"{lab.lab_id}-invalid"
    pool = lab.pool_manifest(name, [{"cidr": "169.254.112.0/30"}])
    del pool["spec"]["nodeSelector"]  # required by the CRD schema
    stats = RetryStats()
    start = time.monotonic()

    with caplog.at_level(logging.WARNING, logger="cni_e2e.retry"):
        with pytest.raises(ApiException) as raised:
            create_with_retry(k8s, pool, policy=replace(CREATE, stats=stats))

    assert raised.value.status == 422
    assert time.monotonic() - start < 2
    assert stats.snapshot() == {}
    assert retry_lines(caplog) == []


def test_a_resource_version_conflict_is_re_read_and_re_applied(lab, k8s, caplog):
    name = f"{lab.lab_id}-conflict"
    create_with_retry(k8s, lab.pool_manifest(name, [{"cidr": "169.254.113.0/30"}]))
    path = EXTERNAL_IP_POOL.path(name=name)
    seen_versions: list[str] = []

    def annotate(obj: dict, key: str) -> dict:
        obj["metadata"].setdefault("annotations", {})[key] = "yes"
        return obj

    def mutate(obj: dict) -> dict:
        seen_versions.append(obj["metadata"]["resourceVersion"])
        if len(seen_versions) == 1:  # someone else writes between our read and our write
            update_object(k8s, EXTERNAL_IP_POOL, name, lambda o: annotate(o, "cni-e2e.io/other"))
        return annotate(obj, "cni-e2e.io/ours")

    stats = RetryStats()
    with caplog.at_level(logging.WARNING, logger="cni_e2e.retry"):
        update_with_conflict_retry(
            lambda: request(k8s, "GET", path),
            mutate,
            lambda obj: request(k8s, "PUT", path, body=obj),
            policy=replace(UPDATE, stats=stats),
            what=f"ExternalIPPool/{name}",
        )

    assert len(seen_versions) == 2 and seen_versions[0] != seen_versions[1], "not re-read"
    annotations = get_object(k8s, EXTERNAL_IP_POOL, name)["metadata"]["annotations"]
    assert annotations["cni-e2e.io/other"] == "yes"  # the other write survived
    assert annotations["cni-e2e.io/ours"] == "yes"  # and ours was re-applied on top
    assert stats.snapshot() == {"conflict": 1}
    assert "attempt 1 failed (conflict)" in retry_lines(caplog)[0]


def test_recreating_a_namespace_that_is_still_terminating_succeeds(control_plane, k8s, caplog):
    """The namespace controller waits 5 s before deleting, so the namesake is surely terminating."""
    name = unique_name("terminating")
    manifest = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}
    first = create_with_retry(k8s, manifest)
    request(k8s, "DELETE", NAMESPACE.path(name=name))
    stats = RetryStats()

    with caplog.at_level(logging.WARNING, logger="cni_e2e.retry"):
        second = create_with_retry(k8s, manifest, policy=replace(CREATE, deadline=40, stats=stats))

    assert second["metadata"]["uid"] != first["metadata"]["uid"]
    assert stats.get(ErrorKind.TERMINATING) >= 1
    assert set(stats.snapshot()) == {"terminating"}
    assert "object is being deleted" in retry_lines(caplog)[0]
    request(k8s, "DELETE", NAMESPACE.path(name=name))  # clean up; no need to wait
