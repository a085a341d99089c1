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
    k8s, ip_range, lb_pool, backends, lb_service
):
    # one address: the second Service can only get it once the first one released it
    only = ip_range.first_host
    pool = lb_pool([f"{only}/32"])
    b = backends(replicas=1)
    svc = lb_service(pool, b)
    assert ipaddress.ip_address(svc.ip) in ip_range.network, (
        f"{svc.namespace}/{svc.name} got {svc.ip}, outside its pool {ip_range.cidr}"
    )
    assert svc.ip == str(only), f"{svc.namespace}/{svc.name} got {svc.ip}, its pool is {only}/32"
    core = kclient.CoreV1Api(k8s)
    core.delete_namespaced_service(svc.name, svc.namespace)

    def gone() -> bool | None:
        try:
            core.read_namespaced_service(svc.name, svc.namespace)
        except kclient.exceptions.ApiException as exc:
            return True if exc.status == 404 else None
        return None

    assert wait_for("service deleted", gone, 30), f"{svc.name} was not deleted within 30s"
    try:
        again = lb_service(pool, b, name="lb2", timeout=30)
    except AllocationPending as exc:
        raise AssertionError(
            f"{svc.ip} was not released when {svc.namespace}/{svc.name} was deleted: {exc}"
        ) from exc
    assert again.ip == svc.ip, f"{again.name} got {again.ip}, the pool's only address is {only}"


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
