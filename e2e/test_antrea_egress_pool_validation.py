"""Antrea #6718: Egress validation of its ExternalIPPool depends on which fields are set.

The egressvalidator webhook checks the pool only when BOTH egressIP and
externalIPPool are set; a pool-only Egress naming a missing pool is admitted and
reports IPAllocated=False/AllocationError until the pool appears. These tests pin
both halves of that behaviour so a change on either side shows up red.

Who writes what (upstream-facts.md): antrea-controller allocates by patching
`spec.egressIP` and sets `IPAllocated`; only antrea-agent writes `status.egressIP`
and `status.egressNode`. These are control-plane tests, so they read what the
controller writes and never wait on the agent. The verdicts are fixtures.antrea's, the
same code tests/test_seen_red_antrea_6718.py runs against a buggy and a fixed controller.
"""

import pytest

from fixtures.antrea import (
    assert_denied_for_ip_outside_pool,
    assert_denied_for_missing_pool,
    egress,
    external_ip_pool,
    wait_for_allocation_error,
    wait_for_ip_from_pool,
)
from fixtures.kube import unique_name

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
    assert_denied_for_missing_pool(k8s, lambda: objects.create(obj), name, missing)


def test_egress_ip_outside_its_pool_is_rejected(k8s, objects, ip_range_factory):
    inside, outside = ip_range_factory(), ip_range_factory()
    pool = objects.create(external_ip_pool(unique_name("eg-pool"), [inside]))["metadata"]["name"]
    name, ip = unique_name("eg-ip-outside"), str(outside.first_host)
    obj = egress(name, namespace_labels=NO_PODS, pool=pool, egress_ip=ip)
    assert_denied_for_ip_outside_pool(k8s, lambda: objects.create(obj), name, ip)


def test_pool_only_egress_naming_a_missing_pool_is_admitted_with_allocation_error(k8s, objects):
    name, missing = unique_name("eg-pool-only"), unique_name("pool-later")
    objects.create(egress(name, namespace_labels=NO_PODS, pool=missing))
    wait_for_allocation_error(k8s, name, missing)


def test_creating_the_missing_pool_later_allocates_an_ip_from_it(k8s, objects, ip_range):
    name, pool = unique_name("eg-pool-later"), unique_name("pool-later")
    objects.create(egress(name, namespace_labels=NO_PODS, pool=pool))
    wait_for_allocation_error(k8s, name, pool)
    objects.create(external_ip_pool(pool, [ip_range]))
    wait_for_ip_from_pool(k8s, name, pool, [ip_range])
