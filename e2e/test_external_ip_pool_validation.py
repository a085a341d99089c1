"""Overlapping pools are rejected with the provider's message; delete + re-create goes through."""

import pytest
from kubernetes.client.exceptions import ApiException

from fixtures.external_ip import ADAPTED_PROVIDERS
from fixtures.retry import CREATE, RETRY_STATS

pytestmark = [
    pytest.mark.external_ip,
    pytest.mark.ext_pool_validation,
    pytest.mark.controlplane,
    pytest.mark.requires(lb_provider=ADAPTED_PROVIDERS),
]


# Cilium LB-IPAM flags overlaps in the pool's status instead: test_external_ip_pool_conflict.py
@pytest.mark.requires(lb_provider="metallb")
def test_overlapping_pool_is_rejected_with_the_webhooks_message(external_ip, lb_pool, ip_range):
    live = lb_pool()
    with pytest.raises(ApiException) as info:
        external_ip.create_pool_only(f"{live.name}-overlap", [f"{ip_range.first_host}/32"])
        external_ip.delete_pool(external_ip.pool_body and live)  # not reached when rejected
    body = info.value.body or ""
    want = (
        f'CIDR \\"{ip_range.first_host}/32\\" in pool \\"{live.name}-overlap\\" overlaps '
        f'with already defined CIDR \\"{ip_range.cidr}\\"'
    )
    assert info.value.status in (400, 403, 422) and (
        want in body or want.replace('\\"', '"') in body
    ), f"expected MetalLB's webhook denial {want!r}, got HTTP {info.value.status}: {body}"


def test_delete_and_immediate_recreate_of_a_range_succeeds_through_the_retry_policy(
    external_ip, lb_pool, ip_range
):
    before = sum(RETRY_STATS.snapshot().values())
    pool = lb_pool(name="recreate")
    for _ in range(5):
        external_ip.delete_pool(pool)
        pool = external_ip.make_pool(pool.name, [ip_range.cidr])  # CREATE policy retries denials
    retries = sum(RETRY_STATS.snapshot().values()) - before
    print(f"5 delete/re-create cycles of {ip_range.cidr}: {retries} retries ({CREATE.name})")
