"""IP range allocation: the pure allocator, the IPRange value, and the FileStore.

Properties run with hypothesis against brute-force references; the FileStore
runs for real on a temporary directory (time is a FakeClock where the test
moves it by hand, the wall clock where it waits for real).
"""

from __future__ import annotations

import ipaddress
import json
import re
import tempfile
import threading
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fixtures.ranges import (
    FileStore,
    IPRange,
    RangeAllocator,
    RangeError,
    RangeExhaustedError,
    RangeRequestError,
    RangeStoreError,
    first_free_subnet,
    free_subnets,
    lease_name,
    parse_pool,
)
from tests.ranges_support import (
    AllocatorMachine,
    DoubleBookingStore,
    FakeClock,
    brute_first_free,
    churn,
    crash_and_reclaim,
)

# Documentation and benchmarking ranges only: these are data, nothing is sent to them.
V4_PARENTS = [
    ipaddress.ip_network(p)
    for p in (
        "192.0.2.0/24",
        "198.51.100.0/24",
        "203.0.113.0/24",
        "198.18.0.0/15",
        "169.254.0.0/16",
    )
]
V6_PARENT = ipaddress.ip_network("2001:db8::/32")


@st.composite
def pools(
    draw: st.DrawFn, family: int | None = None
) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    """A pool inside the documentation ranges."""
    fam = family or draw(st.sampled_from([4, 6]))
    if fam == 4:
        parent = draw(st.sampled_from(V4_PARENTS))
        plen = draw(st.integers(parent.prefixlen, 28))
    else:
        parent = V6_PARENT
        plen = draw(st.integers(96, 124))
    size = 1 << (parent.max_prefixlen - plen)
    index = draw(st.integers(0, (1 << (plen - parent.prefixlen)) - 1))
    return ipaddress.ip_network((int(parent.network_address) + index * size, plen))


@st.composite
def pool_prefix_taken(draw: st.DrawFn) -> tuple:
    pool = draw(pools())
    prefix = draw(st.integers(pool.prefixlen, min(pool.prefixlen + 6, pool.max_prefixlen)))
    # taken subnets of any size near or inside the pool, some straddling its edges
    around = pool.supernet(prefixlen_diff=min(2, pool.prefixlen))
    n = draw(st.integers(0, 12))
    taken = []
    for _ in range(n):
        plen = draw(st.integers(around.prefixlen, min(around.prefixlen + 10, around.max_prefixlen)))
        size = 1 << (around.max_prefixlen - plen)
        index = draw(st.integers(0, (1 << (plen - around.prefixlen)) - 1))
        taken.append(ipaddress.ip_network((int(around.network_address) + index * size, plen)))
    return pool, prefix, taken


# --------------------------------------------------------------------------- the allocator


@given(pool_prefix_taken())
@settings(max_examples=400)
def test_first_free_subnet_is_the_lowest_aligned_candidate_that_overlaps_nothing(case):
    pool, prefix, taken = case
    got = first_free_subnet(pool, prefix, taken)
    assert got == brute_first_free(pool, prefix, taken)
    if got is not None:
        assert got.prefixlen == prefix
        assert got.subnet_of(pool)
        assert int(got.network_address) % (1 << (got.max_prefixlen - prefix)) == 0
        assert not any(got.overlaps(t) for t in taken)


@given(pool_prefix_taken())
@settings(max_examples=200)
def test_free_subnets_lists_every_free_aligned_candidate_in_order(case):
    pool, prefix, taken = case
    expected = [c for c in pool.subnets(new_prefix=prefix) if not any(c.overlaps(t) for t in taken)]
    assert list(free_subnets(pool, prefix, taken)) == expected


@given(pools(), st.data())
@settings(max_examples=200)
def test_filling_a_pool_yields_disjoint_aligned_ranges_until_it_is_full(pool, data):
    prefix = data.draw(st.integers(pool.prefixlen, pool.prefixlen + 4))
    held: list = []
    while (got := first_free_subnet(pool, prefix, held)) is not None:
        assert ipaddress.ip_network(str(got)) == got  # strict parse: aligned
        assert not any(got.overlaps(h) for h in held)
        held.append(got)
    assert len(held) == 1 << (prefix - pool.prefixlen)


class FileStoreMachine(AllocatorMachine):
    """Model-based run of two holders sharing one FileStore."""

    def make_store(self, clock: FakeClock) -> FileStore:
        self._dir = tempfile.TemporaryDirectory(prefix="ranges-machine-")
        return FileStore(self._dir.name, clock=clock)

    def teardown(self) -> None:
        super().teardown()
        self._dir.cleanup()


TestFileStoreAgainstTheModel = FileStoreMachine.TestCase
TestFileStoreAgainstTheModel.settings = settings(
    max_examples=60,
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


# --------------------------------------------------------------------------- the value


@given(pools(), st.data())
def test_iprange_forms_cover_exactly_the_addresses_antrea_allocates(pool, data):
    family = pool.version
    longest = 30 if family == 4 else 127
    prefix = data.draw(st.integers(pool.prefixlen, max(pool.prefixlen, longest)))
    net = next(pool.subnets(new_prefix=prefix))
    r = IPRange(net, pool)
    start, end = (ipaddress.ip_address(r.as_start_end()[k]) for k in ("start", "end"))
    assert start == net.network_address + 1 == r.first_host == r.host(0)
    # Antrea never hands out the network address, nor the IPv4 broadcast address
    assert end == (net.broadcast_address - 1 if family == 4 else net.broadcast_address)
    assert int(end) - int(start) + 1 == r.usable == net.num_addresses - (2 if family == 4 else 1)
    assert r.host(r.usable - 1) == end
    assert r.as_cidr() == {"cidr": str(net)}
    with pytest.raises(IndexError):
        r.host(r.usable)


def test_a_v4_slash_30_has_two_usable_addresses_like_antreas_pool_status():
    r = IPRange(ipaddress.ip_network("169.254.100.0/30"), ipaddress.ip_network("169.254.100.0/24"))
    assert r.usable == 2
    assert r.as_start_end() == {"start": "169.254.100.1", "end": "169.254.100.2"}
    assert str(r) == "169.254.100.0/30" and r.family == 4 and r.prefix == 30


DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


@given(st.lists(pools(), min_size=2, max_size=2))
def test_lease_names_are_valid_and_distinct_for_distinct_subnets(nets):
    a, b = nets
    for n in nets:
        assert DNS_SUBDOMAIN.match(lease_name(n)) and len(lease_name(n)) <= 253
    assert (lease_name(a) == lease_name(b)) == (a == b)


def test_lease_names_read_like_the_subnet():
    assert lease_name(ipaddress.ip_network("198.18.0.0/28")) == "r4-198-18-0-0-28"
    assert lease_name(ipaddress.ip_network("2001:db8::10/124")) == "r6-2001-db8--10-124"


# --------------------------------------------------------------------------- requests


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("198.18.0.1/16", "has host bits set; did you mean 198.18.0.0/16"),
        ("not-a-cidr", "'not-a-cidr' is not a CIDR"),
        ("2001:db8::1/64", "did you mean 2001:db8::/64"),
    ],
)
def test_a_bad_pool_is_named_with_the_fix(text, message):
    with pytest.raises(RangeRequestError, match=re.escape(message)):
        parse_pool(text)


@pytest.fixture
def store(tmp_path: Path) -> FileStore:
    return FileStore(tmp_path / "state")


def allocator(store, pools, **kw) -> RangeAllocator:
    kw.setdefault("quarantine", 0.0)
    kw.setdefault("ttl", 30.0)
    return RangeAllocator(store, pools, **kw)


@pytest.mark.parametrize(
    ("pools", "kwargs", "message"),
    [
        (["192.0.2.0/24"], {"family": 6}, "no IPv6 pool configured (pools: 192.0.2.0/24)"),
        (["192.0.2.0/24"], {"prefix": 31}, "use /30 or shorter"),
        (["2001:db8::/120"], {"prefix": 128}, "use /127 or shorter"),
        (["192.0.2.0/24"], {"prefix": 20}, "a /20 does not fit in any IPv4 pool (192.0.2.0/24)"),
        (["192.0.2.0/24"], {"family": 5}, "IP family must be 4 or 6, got 5"),
        (["192.0.2.0/24"], {"prefix": "28"}, "prefix must be an integer, got '28'"),
    ],
)
def test_an_impossible_request_names_the_input_and_the_fix(store, pools, kwargs, message):
    with pytest.raises(RangeRequestError, match=re.escape(message)):
        allocator(store, pools).allocate(**kwargs)


def test_no_pools_at_all_says_where_to_configure_them(store):
    with pytest.raises(RangeRequestError, match="--ip-range-pool CIDR or set ipRangePools"):
        allocator(store, [])


def test_defaults_are_slash_28_and_slash_124_and_follow_the_first_pool(store):
    a = allocator(store, ["2001:db8:7::/120", "198.51.100.0/24"])
    assert a.allocate().cidr == "2001:db8:7::/124"
    assert a.allocate(family=4).cidr == "198.51.100.0/28"
    assert a.allocate(prefix=126).family == 6  # only IPv6 has a /126
    a.close()


def test_a_full_pool_falls_over_to_the_next_pool_of_the_family(store):
    a = allocator(store, ["192.0.2.0/28", "198.51.100.0/28", "2001:db8::/124"])
    first, second = a.allocate(), a.allocate()
    assert (first.cidr, first.pool) == ("192.0.2.0/28", ipaddress.ip_network("192.0.2.0/28"))
    assert (second.cidr, str(second.pool)) == ("198.51.100.0/28", "198.51.100.0/28")
    a.close()


# --------------------------------------------------------------------------- FileStore


def test_exhaustion_names_the_pool_and_counts_live_and_quarantined(store):
    a = allocator(store, ["192.0.2.0/26"], quarantine=60.0)
    got = [a.allocate() for _ in range(4)]
    a.release(got[0])
    with pytest.raises(RangeExhaustedError) as exc:
        a.allocate()
    msg = str(exc.value)
    assert "pool 192.0.2.0/26: no free /28, 3 ranges live and 1 quarantined" in msg
    assert re.search(r"the first quarantine ends in (60\.0|59\.9)s", msg)
    assert "--ip-range-pool" in msg and "--ip-range-quarantine" in msg
    (usage,) = exc.value.usages
    assert (usage.live, usage.quarantined) == (3, 1)
    a.close()


def test_exhaustion_lists_every_pool_of_the_family(store):
    a = allocator(store, ["192.0.2.0/28", "203.0.113.0/28"])
    a.allocate(), a.allocate()
    with pytest.raises(RangeExhaustedError, match=r"(?s)192\.0\.2\.0/28.*203\.0\.113\.0/28"):
        a.allocate()
    a.close()


def test_a_just_released_range_is_quarantined_then_handed_out_again(store):
    """The #6783 lesson: the next test must not get the range the previous one just freed."""
    clock = FakeClock()
    store.clock = clock
    a = allocator(store, ["198.18.0.0/27"], quarantine=30.0)
    first = a.allocate()
    a.release(first)
    second = a.allocate()
    assert not second.overlaps(first)
    a.release(second)
    with pytest.raises(RangeExhaustedError, match="0 ranges live and 2 quarantined"):
        a.allocate()
    clock.now += 29.9
    with pytest.raises(RangeExhaustedError):
        a.allocate()
    clock.now += 0.1
    assert a.allocate() == first
    a.close()


def test_allocate_waits_for_a_quarantined_range_when_asked_to(store):
    a = allocator(store, ["198.18.0.0/28"], quarantine=0.3, wait=5.0)
    first = a.allocate()
    a.release(first)
    released = time.monotonic()
    again = a.allocate()
    assert again == first
    assert time.monotonic() - released >= 0.3
    a.close()


def test_allocate_does_not_wait_longer_than_asked(store):
    a = allocator(store, ["198.18.0.0/28"], quarantine=30.0, wait=0.2)
    a.release(a.allocate())
    started = time.monotonic()
    with pytest.raises(RangeExhaustedError, match="after waiting"):
        a.allocate()
    assert time.monotonic() - started < 1.0
    a.close()


def test_overlapping_pool_definitions_never_hand_out_overlapping_ranges(store):
    """Two runs configured differently (a /24 and a /25 of it) share one truth per family."""
    wide = allocator(store, ["198.51.100.0/24"], run_id="wide")
    narrow = allocator(store, ["198.51.100.128/25"], run_id="narrow")
    got = [wide.allocate(prefix=26) for _ in range(3)] + [narrow.allocate(prefix=27)]
    assert [r.cidr for r in got] == [
        "198.51.100.0/26",
        "198.51.100.64/26",
        "198.51.100.128/26",
        "198.51.100.192/27",
    ]
    with pytest.raises(RangeExhaustedError):
        wide.allocate(prefix=26)
    wide.close()
    narrow.close()


def test_a_live_holder_keeps_its_range_past_the_ttl_by_renewing(store):
    holder = allocator(store, ["192.0.2.0/28"], ttl=0.5, run_id="holder")
    other = allocator(store, ["192.0.2.0/28"], ttl=0.5, run_id="other")
    r = holder.allocate()
    deadline = time.monotonic() + 1.5  # three TTLs
    stop = threading.Event()
    while time.monotonic() < deadline:
        with pytest.raises(RangeExhaustedError):
            other.allocate()
        stop.wait(0.1)
    assert holder.lost == []
    holder.release(r)
    assert other.allocate() == r
    holder.close()
    other.close()


def test_renew_reports_a_range_another_holder_reclaimed_as_lost(store):
    clock = FakeClock()
    store.clock = clock
    paused = allocator(store, ["192.0.2.0/28"], ttl=10.0, run_id="paused", autorenew=False)
    r = paused.allocate()
    clock.now += 10.0  # paused for a whole TTL: no renewal
    thief = allocator(store, ["192.0.2.0/28"], ttl=10.0, run_id="thief", autorenew=False)
    assert thief.allocate() == r
    assert store.renew([r.network], paused.holder, 10.0) == [r.network]
    assert store.renew([r.network], thief.holder, 10.0) == []


def test_the_renewer_thread_stops_once_nothing_is_held(store):
    a = allocator(store, ["192.0.2.0/28"], ttl=0.15)
    a.release(a.allocate())
    renewer = a._renewer
    assert renewer is not None
    renewer.join(timeout=2)
    assert not renewer.is_alive()
    a.close()


def test_close_releases_what_is_still_held_and_refuses_more(store):
    a = allocator(store, ["192.0.2.0/28"], quarantine=5.0)
    r = a.allocate()
    a.close()
    (claim,) = store.claims(4)
    assert claim.network == r.network and claim.released_at is not None
    with pytest.raises(RangeError, match="closed"):
        a.allocate()


def test_state_is_plain_json_with_holder_identity(store):
    a = allocator(store, ["2001:db8:9::/120"], run_id="run42")
    r = a.allocate()
    data = json.loads((store.directory / "ipv6.json").read_text())
    (entry,) = data["claims"]
    assert entry["network"] == r.cidr
    host, pid, run = entry["holder"].split("/")
    assert (int(pid), run) == (a.holder.pid, "run42") and host
    a.close()


def test_a_corrupt_state_file_is_named_with_what_to_do(store):
    (store.directory / "ipv4.json").write_text("{not json")
    with pytest.raises(RangeStoreError, match=r"ipv4\.json is unreadable .*delete it if no test"):
        allocator(store, ["192.0.2.0/28"]).allocate()


def test_the_default_state_dir_follows_the_cache_env(monkeypatch, tmp_path):
    monkeypatch.setenv("CNI_E2E_CACHE", str(tmp_path))
    assert FileStore().directory == tmp_path / "ranges"


# --------------------------------------------------------------------------- processes


def test_the_overlap_witness_catches_a_store_that_double_books(tmp_path):
    """The churn witness is what the stress tests rely on; prove it can fail."""
    a = RangeAllocator(DoubleBookingStore(), ["198.18.0.0/23"], quarantine=0, autorenew=False)
    out = churn(a, cycles=5, prefixes=(28,), witness=tmp_path, unit=29, seed=0)
    assert out["collisions"], "two holders of 198.18.0.0/28 went unnoticed"


def test_a_killed_holders_ranges_come_back_after_the_ttl_and_not_before(tmp_path):
    ttl = 1.0
    state = tmp_path / "state"
    report = crash_and_reclaim(
        {"state_dir": state}, FileStore(state), "198.51.100.0/27", 28, ttl=ttl, alive_for=1.5
    )
    assert len(report.taken) == 2
    assert report.failures_while_alive > 0
    assert report.last_renewal > report.allocated_at, "the holder never renewed"
    assert report.failures_after_kill, "the ranges came back the moment the holder died"
    expiry = report.last_renewal + ttl
    assert all(t < expiry for t in report.failures_after_kill)
    assert report.first_success is not None, "the ranges never came back"
    assert expiry <= report.first_success < expiry + 2.0
    assert sorted(report.reclaimed) == sorted(report.taken)


def test_an_unreachable_api_server_is_named_after_retries(tmp_path):
    """The lease store against a closed loopback port: no cluster needed to see the message."""
    import socket

    from fixtures.ranges import LeaseStore

    with socket.socket() as s:  # a port the kernel just handed out and nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        "apiVersion: v1\nkind: Config\ncurrent-context: c\n"
        f"clusters: [{{name: c, cluster: {{server: 'https://127.0.0.1:{port}', "
        "insecure-skip-tls-verify: true}}]\n"
        "users: [{name: u, user: {token: t}}]\n"
        "contexts: [{name: c, context: {cluster: c, user: u}}]\n"
    )
    store = LeaseStore.from_kubeconfig(kubeconfig, "cni-e2e-ranges")
    with pytest.raises(
        RangeStoreError, match=rf"API server at https://127\.0\.0\.1:{port} did not"
    ):
        allocator(store, ["192.0.2.0/28"]).allocate()
    store.close()
