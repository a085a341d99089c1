"""Every e2e scenario runs against the session cluster; without one it skips with the reason."""

import pytest

from fixtures.lifecycle import SessionCluster


@pytest.fixture(autouse=True)
def _session_cluster_required(cluster: SessionCluster) -> SessionCluster:
    return cluster
