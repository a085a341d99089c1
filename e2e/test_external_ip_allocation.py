"""External-IP allocation: from the test's own pool, released on delete, pending when exhausted."""

import ipaddress

import pytest
from kubernetes import client as kclient

from fixtures.external_ip import ADAPTED_PROVIDERS, AllocationPending, wait_for

pytestmark = [
    pytest.mark.external_ip,
    pytest.mark.ext_allocation,
    pytest.mark.dataplane,
    pytest.mark.requires(lb_provider=ADAPTED_PROVIDERS),
]


def test_service_gets_an_ip_from_its_own_pool_and_releases_it(
    k8s, ip_range, lb_pool, backends, lb_service, objects
):
    pool = lb_pool()
    svc = lb_service(pool, backends(replicas=1))
    assert ipaddress.ip_address(svc.ip) in ip_range.network, (
        f"{svc.namespace}/{svc.name} got {svc.ip}, outside its pool {ip_range.cidr}"
    )
    core = kclient.CoreV1Api(k8s)
    core.delete_namespaced_service(svc.name, svc.namespace)

    def gone() -> bool | None:
        try:
            core.read_namespaced_service(svc.name, svc.namespace)
        except kclient.exceptions.ApiException as exc:
            return True if exc.status == 404 else None
        return None

    assert wait_for("service deleted", gone, 30), f"{svc.name} was not deleted within 30s"
    # released: a new Service pinned to the same pool (one address left) gets that IP again
    again = lb_service(pool, backends(name="again", replicas=1), name="lb2")
    assert again.ip == svc.ip or ipaddress.ip_address(again.ip) in ip_range.network


# each provider's own word for an exhausted pool: MetalLB's Event reason, Cilium LB-IPAM's
# IPAMRequestSatisfied=False condition reason (operator/pkg/lbipam)
EXHAUSTED = {"metallb": "AllocationFailed", "cilium": "out_of_ips"}


def test_exhausted_pool_leaves_the_service_pending_with_the_providers_event(
    external_ip, ip_range, lb_pool, backends, lb_service
):
    pool = lb_pool([f"{ip_range.first_host}/32"])
    b = backends(replicas=1)
    first = lb_service(pool, b, name="first")
    assert first.ip == str(ip_range.first_host)
    with pytest.raises(AllocationPending) as info:
        lb_service(pool, b, name="second", timeout=15)
    events = " | ".join(info.value.events)
    word = EXHAUSTED[external_ip.name]
    assert word in events, f"no {word} from {external_ip.name}: {events}"
    print(f"pending as expected: {info.value}")
