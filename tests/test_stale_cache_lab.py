"""The stale-cache lab: Antrea's ExternalIPPool rules, and upstream #6783 on a real API server.

The webhook is ours (tests/stalecache), standing in for antrea-controller's at the
process boundary: a real kube-apiserver calls it over TLS exactly as it would call
Antrea's, and wraps its denials the same way.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.stalecache.validator import validate_external_ip_pool
from tests.stalecache.webhook import (
    StaleCacheWebhook,
    api_error_message,
    denied,
    overlap_message,
)


def _pool(name: str, *ranges: dict, subnet: dict | None = None) -> dict:
    spec: dict = {"ipRanges": list(ranges), "nodeSelector": {}}
    if subnet:
        spec["subnetInfo"] = subnet
    return {"metadata": {"name": name}, "spec": spec}


# --- Antrea's rules, without a cluster ---------------------------------------------------------


@pytest.mark.parametrize(
    ("new", "existing", "message"),
    [
        (
            {"cidr": "198.18.30.0/24"},
            {"qux": [{"cidr": "198.18.0.0/16"}]},
            "range [198.18.30.0/24] overlaps with range [198.18.0.0/16] of ExternalIPPool qux",
        ),
        (
            {"start": "198.19.20.10", "end": "198.19.20.20"},
            {"a": [{"cidr": "198.19.20.0/24"}]},
            "range [198.19.20.10-198.19.20.20] overlaps with range [198.19.20.0/24] "
            "of ExternalIPPool a",
        ),
        (
            {"cidr": "198.19.30.0/30"},
            {"b": [{"start": "198.19.30.3", "end": "198.19.30.9"}]},
            "range [198.19.30.0/30] overlaps with range [198.19.30.3-198.19.30.9] "
            "of ExternalIPPool b",
        ),
        ({"cidr": "198.19.40.4/30"}, {"c": [{"cidr": "198.19.40.0/30"}]}, None),  # adjacent
        ({"cidr": "fd00::/126"}, {"d": [{"cidr": "0.0.0.0/0"}]}, None),  # other family
    ],
)
def test_overlap_messages_match_antrea(new, existing, message):
    assert validate_external_ip_pool("CREATE", _pool("new", new), None, existing) == message


def test_a_pool_is_not_checked_against_its_own_old_ranges():
    existing = {"p": [{"cidr": "198.19.50.0/24"}]}
    update = _pool("p", {"cidr": "198.19.50.0/24"}, {"cidr": "198.19.60.0/24"})
    old = _pool("p", {"cidr": "198.19.50.0/24"})
    assert validate_external_ip_pool("UPDATE", update, old, existing) is None


def test_update_that_removes_or_changes_ranges_is_denied_with_antreas_message():
    old = _pool("p", {"cidr": "198.19.70.0/28"}, {"start": "198.19.71.1", "end": "198.19.71.9"})
    new = _pool("p", {"cidr": "198.19.70.0/29"})
    assert (
        validate_external_ip_pool("UPDATE", new, old, {"p": old["spec"]["ipRanges"]})
        == "existing IPRanges [198.19.70.0/28 198.19.71.1-198.19.71.9] cannot be updated or deleted"
    )


@pytest.mark.parametrize(
    ("pool", "message"),
    [
        (_pool("x", {"cidr": "198.19.80.0"}), "invalid cidr 198.19.80.0"),
        (
            _pool("x", {"start": "198.19.80.9", "end": "198.19.80.1"}),
            "range start 198.19.80.9 should not be greater than range end 198.19.80.1",
        ),
        (
            _pool("x", {"start": "198.19.80.1", "end": "fd00::1"}),
            "range start 198.19.80.1 and range end fd00::1 should belong to same family",
        ),
        (
            _pool("x", {"cidr": "198.19.80.0/24"}, {"cidr": "198.19.80.128/25"}),
            "range [198.19.80.128/25] overlaps with range [198.19.80.0/24]",
        ),
        (
            _pool(
                "x",
                {"cidr": "198.19.81.0/24"},
                subnet={"gateway": "198.19.80.1", "prefixLength": 24},
            ),
            "range [198.19.81.0/24] must be a strict subset of the subnet 198.19.80.1/24",
        ),
        (
            _pool(
                "x",
                {"cidr": "198.19.80.0/28"},
                subnet={"gateway": "198.19.80.1", "prefixLength": 32},
            ),
            "invalid prefixLength 32",
        ),
    ],
)
def test_invalid_pools_get_antreas_messages(pool, message):
    assert validate_external_ip_pool("CREATE", pool, None, {}) == message


def test_delete_is_always_admitted():
    old = _pool("p", {"cidr": "198.19.90.0/24"})
    assert validate_external_ip_pool("DELETE", None, old, {}) is None


# --- against a real API server -----------------------------------------------------------------


@pytest.fixture
def lab(control_plane, request) -> Iterator[StaleCacheWebhook]:
    lag = getattr(request, "param", 0.0)
    with StaleCacheWebhook(control_plane.kubeconfig, lag=lag) as hook:
        yield hook


def _denial(call, *args) -> str:
    from kubernetes.client import ApiException

    with pytest.raises(ApiException) as err:
        call(*args)
    return api_error_message(err.value)


LAG = 3.0


@pytest.mark.needs_control_plane
@pytest.mark.parametrize("lab", [LAG], indirect=True)
def test_recreating_a_just_deleted_range_is_denied_while_the_cache_lags(lab):
    """Upstream #6783: the webhook's informer still holds the deleted pool."""
    old, new = f"{lab.lab_id}-old", f"{lab.lab_id}-new"
    lab.create_pool(old, [{"cidr": "169.254.100.0/30"}])
    lab.wait_cached(old)
    lab.delete_pool(old)

    message = _denial(lab.create_pool, new, [{"cidr": "169.254.100.0/30"}])

    assert message == denied(overlap_message("169.254.100.0/30", "169.254.100.0/30", old))
    last = lab.decisions[-1]
    assert (last.name, last.allowed, last.cached) == (new, False, (old,))
    # the denial was the cache's staleness, not a real conflict: once it catches up, it passes
    lab.wait_cached(old, present=False, timeout=LAG + 10)
    lab.create_pool(new, [{"cidr": "169.254.100.0/30"}])


@pytest.mark.needs_control_plane
def test_recreating_a_just_deleted_range_is_admitted_without_lag(lab):
    old, new = f"{lab.lab_id}-old", f"{lab.lab_id}-new"
    lab.create_pool(old, [{"cidr": "169.254.101.0/30"}])
    lab.wait_cached(old)
    lab.delete_pool(old)

    lab.create_pool(new, [{"cidr": "169.254.101.0/30"}])

    assert lab.decisions[-1].allowed and lab.decisions[-1].cached == ()


@pytest.mark.needs_control_plane
@pytest.mark.parametrize("lab", [0.0, LAG], indirect=True, ids=["no-lag", "lag"])
def test_a_range_overlapping_a_live_pool_is_denied_in_both_modes(lab):
    live = f"{lab.lab_id}-live"
    lab.create_pool(live, [{"cidr": "169.254.102.0/24"}])
    lab.wait_cached(live, timeout=LAG + 10)

    clash = [{"start": "169.254.102.10", "end": "169.254.102.20"}]
    message = _denial(lab.create_pool, f"{lab.lab_id}-clash", clash)

    assert message == denied(
        overlap_message("169.254.102.10-169.254.102.20", "169.254.102.0/24", live)
    )


@pytest.mark.needs_control_plane
def test_update_that_drops_a_range_is_denied_through_the_api_server(lab):
    from tests.stalecache.cache import GROUP, PLURAL, VERSION

    name = f"{lab.lab_id}-upd"
    obj = lab.create_pool(name, [{"cidr": "169.254.103.0/28"}, {"cidr": "169.254.103.16/28"}])
    obj["spec"]["ipRanges"] = [{"cidr": "169.254.103.0/28"}]

    message = _denial(
        lab.custom_api().replace_cluster_custom_object, GROUP, VERSION, PLURAL, name, obj
    )

    assert message == denied("existing IPRanges [169.254.103.16/28] cannot be updated or deleted")


@pytest.mark.needs_control_plane
def test_webhook_serves_tls_on_loopback_with_its_own_ca(lab):
    assert lab.url.startswith("https://127.0.0.1:")
    assert lab.ca_pem.startswith(b"-----BEGIN CERTIFICATE-----")
