"""A test's IP ranges live as long as the objects that use them, on a real API server.

Each case is a real pytest session (pytester subprocess) against this session's offline
control plane (--kubeconfig), so ranges are Leases in `cni-e2e-ranges` there. The inner
runs use a pool of their own (198.51.100.128/25) that no other test here uses.
"""

from __future__ import annotations

import ipaddress
import json
import time
from pathlib import Path
from typing import Any

import pytest

from fixtures.kube import CONFIG_MAP, Resource, delete_and_wait, get_object
from fixtures.ranges import DEFAULT_NAMESPACE, LeaseStore, lease_name

REPO = Path(__file__).resolve().parent.parent
POOL = "198.51.100.128/25"
LEASE = Resource("coordination.k8s.io/v1", "Lease", "leases", namespaced=True)
pytest_plugins = ["pytester"]
pytestmark = pytest.mark.needs_control_plane

# every release is recorded with what the test asked to watch that still existed then
INNER_CONFTEST = """
import json, os
import pytest
from fixtures.kube import get_object

pytest_plugins = ["fixtures.plugins"]
WATCHED = []

@pytest.fixture
def watch():
    WATCHED.clear()
    return WATCHED

@pytest.fixture(scope="session", autouse=True)
def record_releases(ip_range_allocator, k8s):
    real = ip_range_allocator.release

    def release(r):
        left = [f"{res.kind}/{name}" for res, name, ns in WATCHED
                if get_object(k8s, res, name, ns) is not None]
        with open(os.environ["RELEASES"], "a") as out:
            test = os.environ["PYTEST_CURRENT_TEST"].split(" ")[0]
            out.write(json.dumps({"test": test, "cidr": r.cidr, "watched": len(WATCHED),
                                  "left": left}) + "\\n")
        real(r)

    ip_range_allocator.release = release
"""

INNER_ORDER = """
from fixtures.kube import CONFIG_MAP, NAMESPACE, unique_name

def pool_config(name, ranges, namespace="default"):
    return {"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": name, "namespace": namespace},
            "data": {"ranges": ",".join(r.cidr for r in ranges)}}

def test_objects_asked_for_before_the_range(objects, ip_range, watch):
    name = unique_name("uses-range")
    objects.create(pool_config(name, [ip_range]))
    watch.append((CONFIG_MAP, name, "default"))

def test_the_range_asked_for_before_the_objects(ip_range, objects, watch):
    name = unique_name("uses-range")
    objects.create(pool_config(name, [ip_range]))
    watch.append((CONFIG_MAP, name, "default"))

def test_a_namespace_objects_and_a_factory(namespace, objects, ip_range_factory, watch):
    ranges = [ip_range_factory(), ip_range_factory()]
    name = unique_name("uses-ranges")
    objects.create(pool_config(name, ranges, namespace))
    watch.extend([(NAMESPACE, namespace, None), (CONFIG_MAP, name, namespace)])
"""

INNER_KEEP = """
import json, os
from fixtures.kube import unique_name

def test_keeps_what_uses_its_range(objects, ip_range, ip_range_allocator):
    name = unique_name("kept-pool")
    objects.create({"apiVersion": "v1", "kind": "ConfigMap",
                    "metadata": {"name": name, "namespace": "default"},
                    "data": {"ranges": ip_range.cidr}})
    with open(os.environ["KEPT"], "w") as out:
        json.dump({"name": name, "cidr": ip_range.cidr,
                   "holder": str(ip_range_allocator.holder)}, out)
"""


@pytest.fixture
def inner(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, control_plane
):
    pytester.makeconftest(INNER_CONFTEST)
    pytester.makeini("[pytest]\n")
    monkeypatch.setenv("PYTHONPATH", str(REPO))
    monkeypatch.setenv("RELEASES", str(tmp_path / "releases.jsonl"))
    monkeypatch.setenv("KEPT", str(tmp_path / "kept.json"))

    def run(source: str, *args: str) -> pytest.RunResult:
        (pytester.path / "test_inner.py").write_text(source)
        return pytester.runpytest_subprocess(
            "-p", "no:cacheprovider",
            "--kubeconfig", str(control_plane.kubeconfig),
            "--ip-range-pool", POOL,
            "--ip-range-quarantine", "0",
            *args,
            timeout=240,
        )  # fmt: skip

    return run


def _releases(tmp_path: Path) -> list[dict[str, Any]]:
    path = tmp_path / "releases.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def _claims_in_pool(store: LeaseStore) -> list[Any]:
    pool = ipaddress.ip_network(POOL)
    return [c for c in store.claims(4) if c.network.overlaps(pool)]


@pytest.fixture
def lease_store(control_plane) -> Any:
    store = LeaseStore.from_kubeconfig(control_plane.kubeconfig)
    yield store
    store.close()


def test_ranges_are_released_only_after_the_objects_and_namespace_using_them_are_gone(
    inner, tmp_path, lease_store
):
    result = inner(INNER_ORDER)
    result.assert_outcomes(passed=3)
    releases = _releases(tmp_path)
    by_test: dict[str, list[dict[str, Any]]] = {}
    for r in releases:
        by_test.setdefault(r["test"].split("::")[-1], []).append(r)
    assert {t: len(rs) for t, rs in by_test.items()} == {
        "test_objects_asked_for_before_the_range": 1,
        "test_the_range_asked_for_before_the_objects": 1,
        "test_a_namespace_objects_and_a_factory": 2,
    }
    for test, rs in by_test.items():
        for r in rs:
            assert r["watched"] > 0, f"{test}: released before it recorded what to watch"
            assert r["left"] == [], f"{test}: {r['cidr']} released while {r['left']} existed"
    assert _claims_in_pool(lease_store) == [], "released ranges (quarantine 0) leave no lease"


@pytest.mark.parametrize("workers", [[], ["-n", "1"]], ids=["one-process", "xdist-worker"])
def test_keep_namespaces_keeps_the_ranges_leased_until_their_ttl_and_says_so(
    inner, tmp_path, lease_store, k8s, workers
):
    """Under xdist the range is kept in a worker and the controller's summary lists it."""
    before = time.time()
    result = inner(INNER_KEEP, "--keep-namespaces", "--ip-range-ttl", "120", *workers)
    kept = json.loads((tmp_path / "kept.json").read_text())
    try:
        result.assert_outcomes(passed=1)
        assert get_object(k8s, CONFIG_MAP, kept["name"], "default") is not None, "object kept"
        assert _releases(tmp_path) == [], "a range of a kept object was released"
        [claim] = [c for c in _claims_in_pool(lease_store) if c.holder == kept["holder"]]
        assert str(claim.network) == kept["cidr"]
        assert claim.released_at is None, "kept ranges are not released (no quarantine)"
        assert claim.ttl == 120 and claim.renewed_at >= before
        assert claim.state(time.time()) == "live", "still leased after the run ended"
        result.stdout.fnmatch_lines(
            [
                "*cni-e2e IP ranges*",
                "*--keep-namespaces: 1 IP range(s) not released: the kept objects may still use "
                "them, so they stay leased until their TTL runs out*",
                f"*{kept['cidr']}  test_inner.py::test_keeps_what_uses_its_range  (lease store*",
            ]
        )
    finally:
        delete_and_wait(k8s, CONFIG_MAP, kept["name"], "default")
        delete_and_wait(
            k8s, LEASE, lease_name(ipaddress.ip_network(kept["cidr"])), DEFAULT_NAMESPACE
        )
