"""Seen red: the #6783 scenario fails without the retry policy and passes with it.

antrea-controller cannot run here (its modules are refused by the Go proxy), so the
webhook is the stale-cache lab (tests/stalecache): a real TLS admission webhook on
127.0.0.1, registered with the real API server of scripts/test, whose overlap check
reads an informer cache that lags like antrea-controller's. The scenario's own code
(fixtures.antrea.recreate_range_immediately) runs unchanged against it.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from kubernetes import config as kconfig
from kubernetes.client.exceptions import ApiException

from fixtures import upstream_messages
from fixtures.antrea import recreate_range_immediately
from fixtures.retry import CREATE, RetryPolicy, api_status
from tests.stalecache.webhook import StaleCacheWebhook

pytestmark = [pytest.mark.needs_control_plane, pytest.mark.seen_red("antrea#6783")]
NO_RETRIES = RetryPolicy("create-without-retries", deadline=0.0, kinds=frozenset())


@pytest.fixture
def lab(control_plane, request) -> Iterator[StaleCacheWebhook]:
    with StaleCacheWebhook(control_plane.kubeconfig, lag=request.param) as hook:
        yield hook


@pytest.fixture
def client(control_plane):
    api = kconfig.new_client_from_config(str(control_plane.kubeconfig))
    yield api
    api.close()


def scenario(lab, client, cidr: str, policy: RetryPolicy = CREATE):
    return recreate_range_immediately(
        client,
        lambda name: lab.pool_manifest(name, [{"cidr": cidr}]),
        cycles=3,
        policy=policy,
        prefix=f"{lab.lab_id}-re",
        settle=lab.wait_cached,
    )


@pytest.mark.parametrize("lab", [2.0], indirect=True)
def test_with_a_lagging_cache_and_no_retry_policy_the_scenario_fails(lab, client):
    with pytest.raises(ApiException) as err:
        scenario(lab, client, "169.254.102.0/30", NO_RETRIES)
    message = api_status(err.value).message
    assert upstream_messages.match("antrea.pool-overlap", message), message


@pytest.mark.parametrize("lab", [2.0], indirect=True)
def test_with_a_lagging_cache_the_retry_policy_rides_out_every_stale_denial(lab, client):
    report = scenario(lab, client, "169.254.103.0/30")
    assert report.cycles == 3
    assert report.stale_cache_retries >= 3, report  # each cycle met the stale cache


@pytest.mark.parametrize("lab", [0.0], indirect=True)
def test_without_lag_the_scenario_passes_with_no_retry(lab, client):
    report = scenario(lab, client, "169.254.104.0/30", NO_RETRIES)
    assert report.stale_cache_retries == 0
