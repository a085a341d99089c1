"""Seen red: the #6718 verdicts fail on a controller that stays silent, pass on one that reports.

antrea-controller cannot run here (the Go proxy refuses its modules), so its Egress
webhook and IP allocation are replaced at the process boundary by a double
(tests/doubles/antrea_egress.py) against the real API server of scripts/test: the API
server calls its webhook over TLS exactly as it would call Antrea's. The verdicts are
the scenario's own, from fixtures.antrea, as e2e/test_antrea_egress_pool_validation.py
calls them on a cluster.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator

import pytest
from kubernetes import config as kconfig

from fixtures.antrea import (
    EGRESS,
    assert_denied_for_ip_outside_pool,
    assert_denied_for_missing_pool,
    egress,
    external_ip_pool,
    wait_for_allocation_error,
    wait_for_ip_from_pool,
)
from fixtures.kube import create_with_retry, get_object, unique_name
from fixtures.ranges import IPRange
from tests.doubles.antrea_egress import EgressDouble, Mode

pytestmark = [pytest.mark.needs_control_plane, pytest.mark.seen_red("antrea#6718")]

NO_PODS = {"cni-e2e/egress-target": "none"}
TEST_NET = ipaddress.ip_network("198.51.100.0/24")
# how long the verdict waits for the condition; the fixed double needs one pass (< 1 s)
VERDICT_TIMEOUT = 5.0


def make_range(cidr: str) -> IPRange:
    return IPRange(ipaddress.ip_network(cidr), TEST_NET)


@pytest.fixture
def client(control_plane):
    api = kconfig.new_client_from_config(str(control_plane.kubeconfig))
    yield api
    api.close()


@pytest.fixture
def double(control_plane, request) -> Iterator[EgressDouble]:
    with EgressDouble(control_plane.kubeconfig, mode=request.param) as d:
        yield d
    assert not d.errors, f"the double hit API errors: {d.errors}"


def pool_only_egress(client, double: EgressDouble, name: str, pool: str) -> None:
    """The scenario's first step: a pool-only Egress naming a pool that does not exist yet."""
    create_with_retry(client, double.labelled(egress(name, namespace_labels=NO_PODS, pool=pool)))
    admitted = [d for d in double.decisions if d.name == name]
    assert admitted and admitted[0].operation == "CREATE" and admitted[0].allowed, admitted


@pytest.mark.parametrize("double", [Mode.BUGGY], indirect=True, ids=["before-pr-5282"])
def test_with_a_silent_controller_both_verdicts_fail_naming_the_missing_report(client, double):
    name, pool = unique_name("eg-6718-red"), unique_name("pool-later")
    pool_only_egress(client, double, name, pool)

    with pytest.raises(AssertionError) as no_error:
        wait_for_allocation_error(client, name, pool, timeout=VERDICT_TIMEOUT)
    message = str(no_error.value)
    assert f"names ExternalIPPool {pool}, which does not exist; it was admitted" in message
    assert "no IPAllocated condition" in message and "Antrea #6718" in message
    assert double.synced[name] >= 2, "the verdict went red before the double looked twice"
    assert f"{name}: silent about: ExternalIPPool {pool} does not exist" in double.actions

    ip_range = make_range("198.51.100.64/29")
    create_with_retry(client, double.labelled(external_ip_pool(pool, [ip_range])))
    with pytest.raises(AssertionError) as unreported:
        wait_for_ip_from_pool(client, name, pool, [ip_range], timeout=VERDICT_TIMEOUT)
    assert f"ExternalIPPool {pool} exists now" in str(unreported.value)
    assert "IPAllocated=True" in str(unreported.value)
    # red for the right reason: the IP was allocated, only the report is missing
    obj = get_object(client, EGRESS, name)
    assert obj is not None and obj["spec"].get("egressIP") == str(ip_range.first_host), obj
    assert not (obj.get("status") or {}).get("conditions"), obj


@pytest.mark.parametrize("double", [Mode.FIXED], indirect=True, ids=["pr-5282"])
def test_with_a_reporting_controller_both_verdicts_pass(client, double):
    name, pool = unique_name("eg-6718-green"), unique_name("pool-later")
    pool_only_egress(client, double, name, pool)

    before = wait_for_allocation_error(client, name, pool, timeout=VERDICT_TIMEOUT)
    assert not before["spec"].get("egressIP")

    ip_range = make_range("198.51.100.72/29")
    create_with_retry(client, double.labelled(external_ip_pool(pool, [ip_range])))
    ip = wait_for_ip_from_pool(client, name, pool, [ip_range], timeout=VERDICT_TIMEOUT)
    assert ip == str(ip_range.first_host)
    double.wait_for_passes(1)  # the pass that wrote the condition has logged what it did
    assert f"{name}: IPAllocated=False/AllocationError" in double.actions
    assert double.actions.index(f"{name}: spec.egressIP={ip}") < double.actions.index(
        f"{name}: IPAllocated=True/Allocated"
    )


@pytest.mark.parametrize("double", [Mode.FIXED], indirect=True, ids=["webhook"])
def test_the_denial_verdicts_hold_against_the_webhook_through_the_api_server(client, double):
    missing, name = unique_name("no-such-pool"), unique_name("eg-6718-ip-missing")
    with_ip = egress(name, namespace_labels=NO_PODS, pool=missing, egress_ip="198.51.100.81")
    assert_denied_for_missing_pool(
        client, lambda: create_with_retry(client, double.labelled(with_ip)), name, missing
    )

    inside, pool = make_range("198.51.100.88/29"), unique_name("eg-6718-pool")
    create_with_retry(client, double.labelled(external_ip_pool(pool, [inside])))
    name = unique_name("eg-6718-ip-outside")
    outside = egress(name, namespace_labels=NO_PODS, pool=pool, egress_ip="198.51.100.97")
    assert_denied_for_ip_outside_pool(
        client, lambda: create_with_retry(client, double.labelled(outside)), name, "198.51.100.97"
    )
    denials = [d for d in double.decisions if not d.allowed]
    assert [d.message for d in denials] == [
        f"ExternalIPPool {missing} does not exist",
        "IP 198.51.100.97 is not within the IP range",
    ]


@pytest.mark.parametrize("double", [Mode.FIXED], indirect=True, ids=["admitted"])
def test_the_denial_verdict_fails_when_the_egress_is_admitted(client, double):
    """Red for the webhook half: a pool the webhook finds makes the create succeed."""
    pool = unique_name("eg-6718-exists")
    create_with_retry(
        client, double.labelled(external_ip_pool(pool, [make_range("198.51.100.104/29")]))
    )
    name = unique_name("eg-6718-admitted")
    obj = egress(name, namespace_labels=NO_PODS, pool=pool, egress_ip="198.51.100.105")
    with pytest.raises(AssertionError) as admitted:
        assert_denied_for_missing_pool(
            client, lambda: create_with_retry(client, double.labelled(obj)), name, pool
        )
    assert f"Egress {name} was admitted; egressvalidator.antrea.io should have denied it" in str(
        admitted.value
    )
