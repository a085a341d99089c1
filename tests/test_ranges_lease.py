"""The LeaseStore against a real API server: the offline control plane (kwok provider).

    .venv/bin/pytest tests/test_ranges_lease.py --provider kwok --provision always -n 2

Without a control plane every test here skips, saying why. Each test works
in a namespace of its own, so tests on several xdist workers do not see each
other's leases; the plugin's default namespace is touched only by the last test.
"""

from __future__ import annotations

import ipaddress
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis.stateful import run_state_machine_as_test

from fixtures.ranges import (
    ANNOTATION_QUARANTINE_UNTIL,
    ANNOTATION_RELEASED_AT,
    DEFAULT_NAMESPACE,
    LABEL_FAMILY,
    Holder,
    LeaseStore,
    PoolUsage,
    RangeAllocator,
    RangeExhaustedError,
    lease_name,
)
from tests.ranges_support import (
    STRESS_CYCLES,
    STRESS_POOL,
    STRESS_PREFIXES,
    STRESS_PROCESSES,
    AllocatorMachine,
    FakeClock,
    assert_clean_churn,
    crash_and_reclaim,
    run_churn,
)

REPO = Path(__file__).resolve().parent.parent
pytest_plugins = ["pytester"]
pytestmark = pytest.mark.needs_control_plane


@pytest.fixture(scope="module")
def kubeconfig(control_plane: Any) -> Path:
    return Path(control_plane.kubeconfig)


@pytest.fixture(scope="module")
def admin_client(kubeconfig: Path) -> Iterator[Any]:
    """A plain client to look at what the store wrote, as kubectl would."""
    from kubernetes import config as kconfig

    client = kconfig.new_client_from_config(str(kubeconfig))
    yield client
    client.close()


def _drop_namespace(admin_client: Any, name: str) -> None:
    from kubernetes import client as k8s
    from kubernetes.client.exceptions import ApiException

    try:
        k8s.CoreV1Api(admin_client).delete_namespace(name)
    except ApiException as exc:
        if exc.status != 404:
            raise


@pytest.fixture
def lease_ns(admin_client: Any) -> Iterator[str]:
    name = f"cni-e2e-ranges-t-{uuid.uuid4().hex[:8]}"
    yield name
    _drop_namespace(admin_client, name)


@pytest.fixture
def store(kubeconfig: Path, lease_ns: str) -> Iterator[LeaseStore]:
    s = LeaseStore.from_kubeconfig(kubeconfig, lease_ns)
    yield s
    s.close()


def leases(admin_client: Any, lease_ns: str) -> dict[str, Any]:
    from kubernetes import client as k8s

    items = k8s.CoordinationV1Api(admin_client).list_namespaced_lease(lease_ns).items
    return {str(x.metadata.name): x for x in items if x.metadata is not None}


def allocator(store: LeaseStore, pools: list[str], **kw: Any) -> RangeAllocator:
    kw.setdefault("quarantine", 0.0)
    kw.setdefault("ttl", 30.0)
    return RangeAllocator(store, pools, **kw)


def test_a_claim_is_a_lease_named_after_the_subnet(store, admin_client, lease_ns):
    a = allocator(store, ["198.18.0.0/24", "2001:db8:100::/112"], ttl=45.0, run_id="run7")
    v4, v6 = a.allocate(), a.allocate(family=6)
    found = leases(admin_client, lease_ns)
    assert set(found) == {"r4-198-18-0-0-28", "r6-2001-db8-100---124"}
    lease = found[lease_name(v4.network)]
    assert lease.spec.holder_identity == f"{a.holder.host}/{a.holder.pid}/run7"
    assert lease.spec.lease_duration_seconds == 45
    assert lease.spec.renew_time is not None
    assert lease.metadata.labels[LABEL_FAMILY] == "4"
    assert found[lease_name(v6.network)].metadata.labels[LABEL_FAMILY] == "6"
    a.close()


def test_release_keeps_the_lease_until_the_quarantine_is_over(kubeconfig, admin_client, lease_ns):
    clock = FakeClock(2_000_000_000.0)
    store = LeaseStore.from_kubeconfig(kubeconfig, lease_ns, clock=clock)
    a = allocator(store, ["198.18.0.0/28"], quarantine=30.0)
    r = a.allocate()
    uid = leases(admin_client, lease_ns)[lease_name(r.network)].metadata.uid
    a.release(r)
    ann = leases(admin_client, lease_ns)[lease_name(r.network)].metadata.annotations
    assert ann[ANNOTATION_RELEASED_AT].startswith("2033-05-18T03:33:20.")
    assert ann[ANNOTATION_QUARANTINE_UNTIL].startswith("2033-05-18T03:33:50.")
    with pytest.raises(RangeExhaustedError, match="0 ranges live and 1 quarantined"):
        a.allocate()
    clock.now += 30.0
    again = a.allocate()
    assert again == r
    assert leases(admin_client, lease_ns)[lease_name(r.network)].metadata.uid != uid
    a.close()
    store.close()


def test_exhaustion_names_the_pool_and_counts(store):
    a = allocator(store, ["192.0.2.0/26"], quarantine=60.0)
    got = [a.allocate() for _ in range(4)]
    a.release(got[1])
    with pytest.raises(RangeExhaustedError) as exc:
        a.allocate()
    assert "pool 192.0.2.0/26: no free /28, 3 ranges live and 1 quarantined" in str(exc.value)
    a.close()


def test_the_lease_store_agrees_with_the_model(kubeconfig, admin_client):
    namespaces: list[str] = []

    class LeaseMachine(AllocatorMachine):
        FIRST_FIT = False  # with two holders active the lease store spreads its claims

        def make_store(self, clock: FakeClock) -> LeaseStore:
            namespaces.append(f"cni-e2e-ranges-m-{uuid.uuid4().hex[:8]}")
            return LeaseStore.from_kubeconfig(kubeconfig, namespaces[-1], clock=clock)

    try:
        run_state_machine_as_test(
            LeaseMachine,
            settings=settings(
                max_examples=10,
                stateful_step_count=20,
                deadline=None,
                database=None,
                suppress_health_check=[HealthCheck.too_slow],
            ),
        )
    finally:
        for name in namespaces:
            _drop_namespace(admin_client, name)


class _Intercept:
    """Runs `before` just ahead of the first create this store sends (a racing process)."""

    def __init__(self, store: LeaseStore, before: Any) -> None:
        self.real, self.before, self.fired = store.api.create, before, False
        store.api.create = self  # type: ignore[method-assign]

    def __call__(self, body: dict[str, Any]) -> dict[str, Any]:
        if not self.fired:
            self.fired = True
            self.before()
        return dict(self.real(body))


def test_a_wider_claim_that_lands_first_makes_the_later_claimant_back_off(
    store, kubeconfig, lease_ns
):
    """Lease names only collide for identical subnets; the verify step covers the rest.

    Replaces nothing but inserts another holder's complete claim of 198.18.0.0/27
    between our list and our create of 198.18.0.0/28, as a racing process would.
    """
    rival_store = LeaseStore.from_kubeconfig(kubeconfig, lease_ns)
    rival = Holder.current("rival")
    rival_got: list[Any] = []
    _Intercept(
        store,
        lambda: rival_got.append(
            rival_store.try_claim(ipaddress.ip_network("198.18.0.0/26"), 27, rival, 30.0)
        ),
    )
    ours = store.try_claim(ipaddress.ip_network("198.18.0.0/26"), 28, Holder.current("us"), 30.0)
    assert [str(x) for x in rival_got] == ["198.18.0.0/27"]
    assert str(ours) in ("198.18.0.32/28", "198.18.0.48/28")  # outside the rival's /27
    standing = sorted(str(c.network) for c in store.claims(4))
    assert standing == ["198.18.0.0/27", str(ours)]
    rival_store.close()


def test_a_same_subnet_claim_that_lands_first_is_skipped_without_relisting(
    store, kubeconfig, lease_ns
):
    """Inserts another holder's create of our first candidate just before ours (AlreadyExists)."""
    rival_store = LeaseStore.from_kubeconfig(kubeconfig, lease_ns)
    pool = ipaddress.ip_network("198.18.0.0/26")
    _Intercept(store, lambda: rival_store.try_claim(pool, 28, Holder.current("rival"), 30.0))
    lists: list[str] = []
    real_list = store.api.list

    def counting_list(selector: str) -> list[dict[str, Any]]:
        lists.append(selector)
        return real_list(selector)

    store.api.list = counting_list  # type: ignore[method-assign]
    ours = store.try_claim(pool, 28, Holder.current("us"), 30.0)
    assert ours is not None and str(ours) != "198.18.0.0/28"
    assert ours in {ipaddress.ip_network(f"198.18.0.{n}/28") for n in (16, 32, 48)}
    assert len(lists) == 2  # the first list and the verify list, no retry from scratch
    rival_store.close()


def test_of_several_reclaimers_of_an_expired_lease_exactly_one_wins(kubeconfig, lease_ns):
    pool = ipaddress.ip_network("198.51.100.0/28")
    stores = [LeaseStore.from_kubeconfig(kubeconfig, lease_ns) for _ in range(4)]
    holders = [Holder.current(f"reclaimer{i}") for i in range(4)]
    past = LeaseStore.from_kubeconfig(kubeconfig, lease_ns, clock=FakeClock())
    for round_ in range(5):
        dead = Holder.current(f"dead{round_}")
        assert str(past.try_claim(pool, 28, dead, 1.0)) == str(pool)  # expired long ago
        barrier = threading.Barrier(len(stores))
        results: list[Any] = [None] * len(stores)

        def claim(i: int, barrier: threading.Barrier, results: list[Any]) -> None:
            barrier.wait()
            results[i] = stores[i].try_claim(pool, 28, holders[i], 1.0)

        threads = [
            threading.Thread(target=claim, args=(i, barrier, results)) for i in range(len(stores))
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=30)
        winners = [i for i, r in enumerate(results) if not isinstance(r, PoolUsage)]
        assert len(winners) == 1, results
        assert all(r.live == 1 for r in results if isinstance(r, PoolUsage))
        (claim_,) = stores[0].claims(4)
        assert claim_.holder == str(holders[winners[0]])
        stores[winners[0]].release(pool, holders[winners[0]], 0.0)
    for s in [*stores, past]:
        s.close()


def test_renew_reports_a_lease_another_holder_reclaimed_as_lost(kubeconfig, lease_ns):
    clock = FakeClock()
    store = LeaseStore.from_kubeconfig(kubeconfig, lease_ns, clock=clock)
    paused = allocator(store, ["192.0.2.0/28"], ttl=10.0, run_id="paused", autorenew=False)
    r = paused.allocate()
    clock.now += 10.0
    thief_store = LeaseStore.from_kubeconfig(kubeconfig, lease_ns, clock=clock)
    thief = allocator(thief_store, ["192.0.2.0/28"], ttl=10.0, run_id="thief", autorenew=False)
    assert thief.allocate() == r
    assert store.renew([r.network], paused.holder, 10.0) == [r.network]
    assert thief_store.renew([r.network], thief.holder, 10.0) == []
    store.close()
    thief_store.close()


def test_a_killed_holders_leases_come_back_after_the_ttl_and_not_before(
    store, kubeconfig, lease_ns
):
    ttl = 1.0  # leaseDurationSeconds is whole seconds
    report = crash_and_reclaim(
        {"kubeconfig": kubeconfig, "namespace": lease_ns},
        store,
        "198.51.100.0/27",
        28,
        ttl=ttl,
        alive_for=1.5,
    )
    assert len(report.taken) == 2
    assert report.failures_while_alive > 0
    assert report.last_renewal > report.allocated_at, "the holder never renewed"
    assert report.failures_after_kill, "the leases came back the moment the holder died"
    expiry = report.last_renewal + ttl
    assert all(t < expiry for t in report.failures_after_kill)
    assert report.first_success is not None, "the leases never came back"
    assert expiry <= report.first_success < expiry + 2.0
    assert sorted(report.reclaimed) == sorted(report.taken)


def test_four_processes_churning_leases_never_overlap(kubeconfig, lease_ns, tmp_path):
    witness = tmp_path / "witness"
    witness.mkdir()
    reports = run_churn(
        STRESS_PROCESSES,
        {"kubeconfig": kubeconfig, "namespace": lease_ns},
        STRESS_POOL,
        STRESS_CYCLES,
        STRESS_PREFIXES,
        witness,
        unit=29,
        timeout=300,
    )
    assert_clean_churn(reports)
    assert list(witness.iterdir()) == []


INNER = """
from fixtures.ranges import lease_name

def test_uses_the_clusters_leases(ip_range, ip_range_allocator):
    store = ip_range_allocator.store
    assert store.kind == "lease" and store.namespace == "cni-e2e-ranges"
    names = [c.network for c in store.claims(4) if c.holder == str(ip_range_allocator.holder)]
    assert names == [ip_range.network]
"""


def test_the_plugin_uses_the_session_clusters_leases(pytester, kubeconfig, monkeypatch, tmp_path):
    pytester.makeconftest('pytest_plugins = ["fixtures.plugins", "fixtures.plugins.ranges"]\n')
    pytester.makeini("[pytest]\n")
    (pytester.path / "test_inner.py").write_text(INNER)
    monkeypatch.setenv("PYTHONPATH", str(REPO))
    monkeypatch.setenv("CNI_E2E_CACHE", str(tmp_path / "cache"))
    result = pytester.runpytest_subprocess(
        "-p", "no:cacheprovider",
        "--kubeconfig", str(kubeconfig),
        "--ip-range-pool", "203.0.113.0/24",
        "--ip-range-quarantine", "0",
        timeout=120,
    )  # fmt: skip
    result.assert_outcomes(passed=1)
    assert not (tmp_path / "cache" / "ranges").exists(), "it used the file store"
    assert DEFAULT_NAMESPACE == "cni-e2e-ranges"


def test_a_lease_namespace_deleted_under_a_store_is_made_again(kubeconfig, admin_client, lease_ns):
    """The store is told its namespace is ready (as after someone deleted it under a
    running session): the create that 404s makes the namespace again and succeeds."""
    store = LeaseStore.from_kubeconfig(kubeconfig, lease_ns)
    store._namespace_ready = True
    a = allocator(store, ["192.0.2.0/28"])
    r = a.allocate()
    assert set(leases(admin_client, lease_ns)) == {lease_name(r.network)}
    a.close()
    store.close()


def test_a_lease_reclaimed_by_another_holder_of_the_same_store_is_lost_to_the_first(
    kubeconfig, lease_ns
):
    """One store (one process) serves both holders: the body it last wrote for the network
    is the new holder's, and must not let the old holder renew or release that claim."""
    clock = FakeClock()
    store = LeaseStore.from_kubeconfig(kubeconfig, lease_ns, clock=clock)
    first = allocator(store, ["192.0.2.0/28"], ttl=10.0, run_id="first", autorenew=False)
    second = allocator(store, ["192.0.2.0/28"], ttl=10.0, run_id="second", autorenew=False)
    r = first.allocate()
    clock.now += 10.0
    assert second.allocate() == r
    assert store.renew([r.network], first.holder, 10.0) == [r.network]
    store.release(r.network, first.holder, 30.0)  # logged as "not held"; changes nothing
    (claim,) = store.claims(4)
    assert claim.holder == str(second.holder) and claim.released_at is None
    store.close()
