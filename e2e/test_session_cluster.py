"""The session cluster is what the profile promised: these run on every provider."""

import pytest
from kubernetes import client

from fixtures.profiles import load_profile
from fixtures.render import node_names

pytestmark = pytest.mark.controlplane


def test_every_node_of_the_profile_is_registered_and_ready(cluster, api_client):
    profile = load_profile(cluster.profile)
    nodes = client.CoreV1Api(api_client).list_node().items
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
