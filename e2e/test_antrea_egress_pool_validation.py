"""Antrea #6718: Egress validation of its ExternalIPPool depends on which fields are set.

The egressvalidator webhook checks the pool only when BOTH egressIP and
externalIPPool are set; a pool-only Egress naming a missing pool is admitted and
reports IPAllocated=False/AllocationError until the pool appears. These tests pin
both halves of that behaviour so a change on either side shows up red.

Who writes what (upstream-facts.md): antrea-controller allocates by patching
`spec.egressIP` and sets `IPAllocated`; only antrea-agent writes `status.egressIP`
and `status.egressNode`. These are control-plane tests, so they read what the
controller writes and never wait on the agent.
"""

import ipaddress

import pytest
from kubernetes.client.exceptions import ApiException

from fixtures.antrea import EGRESS, condition, egress, external_ip_pool, in_ranges
from fixtures.kube import get_object, has_condition, unique_name, wait_for_condition
from fixtures.retry import ErrorKind, api_status, classify

pytestmark = [
    pytest.mark.antrea,
    pytest.mark.egress,
    pytest.mark.controlplane,
    pytest.mark.requires(cni="antrea", feature_gates=["Egress"]),
]

NO_PODS = {"cni-e2e/egress-target": "none"}  # select no namespace: only the control plane acts


def test_egress_with_ip_and_missing_pool_is_rejected_by_the_webhook(k8s, objects, ip_range):
    name, missing = unique_name("eg-ip-missing-pool"), unique_name("no-such-pool")
    obj = egress(name, namespace_labels=NO_PODS, pool=missing, egress_ip=str(ip_range.first_host))
    with pytest.raises(ApiException) as err:
        objects.create(obj)
    message = api_status(err.value).message
    assert 'admission webhook "egressvalidator.antrea.io" denied the request' in message
    assert f"ExternalIPPool {missing} does not exist" in message
    assert classify(err.value).kind is ErrorKind.WEBHOOK_DENIED, "a denial is never retried"
    assert get_object(k8s, EGRESS, name) is None


def test_egress_ip_outside_its_pool_is_rejected(k8s, objects, ip_range_factory):
    inside, outside = ip_range_factory(), ip_range_factory()
    pool = objects.create(external_ip_pool(unique_name("eg-pool"), [inside]))["metadata"]["name"]
    name = unique_name("eg-ip-outside")
    obj = egress(name, namespace_labels=NO_PODS, pool=pool, egress_ip=str(outside.first_host))
    with pytest.raises(ApiException) as err:
        objects.create(obj)
    assert f"IP {outside.first_host} is not within the IP range" in api_status(err.value).message


def test_pool_only_egress_naming_a_missing_pool_is_admitted_with_allocation_error(k8s, objects):
    name, missing = unique_name("eg-pool-only"), unique_name("pool-later")
    objects.create(egress(name, namespace_labels=NO_PODS, pool=missing))
    obj = wait_for_condition(k8s, EGRESS, name, has_condition("IPAllocated", "False"), timeout=60)
    cond = condition(obj, "IPAllocated")
    assert cond is not None and cond["reason"] == "AllocationError"
    assert cond["message"] == (
        f"Cannot allocate EgressIP from ExternalIPPool: ExternalIPPool {missing} does not exist"
    )
    assert not (obj.get("spec") or {}).get("egressIP"), "no pool, yet an IP was allocated"


def test_creating_the_missing_pool_later_allocates_an_ip_from_it(k8s, objects, ip_range):
    name, pool = unique_name("eg-pool-later"), unique_name("pool-later")
    objects.create(egress(name, namespace_labels=NO_PODS, pool=pool))
    wait_for_condition(k8s, EGRESS, name, has_condition("IPAllocated", "False"), timeout=60)
    objects.create(external_ip_pool(pool, [ip_range]))

    def allocated(o):
        return has_condition("IPAllocated", "True")(o) and bool(
            ((o or {}).get("spec") or {}).get("egressIP")
        )

    obj = wait_for_condition(
        k8s, EGRESS, name, allocated, timeout=60, description="IPAllocated=True, spec.egressIP"
    )
    ip = obj["spec"]["egressIP"]
    assert in_ranges(ip, [ip_range]), f"egressIP {ip} is not from pool {pool} ({ip_range})"
    assert ipaddress.ip_address(ip) != ip_range.network.network_address
    assert (condition(obj, "IPAllocated") or {}).get("reason") == "Allocated"
