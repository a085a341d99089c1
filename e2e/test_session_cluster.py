"""The session cluster is what the profile promised: these run on every provider."""

import pytest
from kubernetes import client

from fixtures.profiles import load_profile
from fixtures.render import node_names

pytestmark = pytest.mark.controlplane


def test_every_node_of_the_profile_is_registered_and_ready(cluster, k8s):
    profile = load_profile(cluster.profile)
    nodes = client.CoreV1Api(k8s).list_node().items
    names = sorted(n.metadata.name for n in nodes)
    assert names == sorted(node_names(profile, cluster.name))
    not_ready = [
        n.metadata.name
        for n in nodes
        if not any(c.type == "Ready" and c.status == "True" for c in n.status.conditions or [])
    ]
    assert not_ready == [], f"nodes not Ready: {not_ready}"


def test_capabilities_match_the_provider(cluster, capabilities):
    assert capabilities.provider == cluster.provider or cluster.provider == "external"
    if cluster.provider == "kwok":
        assert capabilities.data_plane is False
        assert capabilities.cni == "none"
    else:
        assert capabilities.cni == load_profile(cluster.profile).cni


def test_a_tests_ip_range_is_held_as_a_lease_in_the_cluster(k8s, ip_range):
    """Ranges live where every worker, run and person sharing the cluster can see them."""
    from fixtures.ranges import DEFAULT_NAMESPACE, lease_name

    lease = client.CoordinationV1Api(k8s).read_namespaced_lease(
        lease_name(ip_range.network), DEFAULT_NAMESPACE
    )
    assert lease.spec.holder_identity, "the lease names no holder"
    assert lease.spec.lease_duration_seconds and lease.spec.lease_duration_seconds > 0


def test_test_namespace_carries_the_run_and_test_labels(k8s, namespace):
    labels = client.CoreV1Api(k8s).read_namespace(namespace).metadata.labels
    assert labels.get("cni-e2e/run") and labels.get("cni-e2e/test")
