"""The ip_range fixtures in real pytest sessions (pytester subprocesses, with xdist).

No cluster is configured in these runs, so the plugin uses the FileStore,
pointed at a temporary cache through CNI_E2E_CACHE. The LeaseStore path of
the plugin is exercised in test_ranges_lease.py.
"""

from __future__ import annotations

import ipaddress
import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
pytest_plugins = ["pytester"]

INNER = """
import ipaddress, json, os
import pytest

def record(r, test):
    with open(os.environ["RANGES_SEEN"], "a") as f:
        f.write(json.dumps({"cidr": r.cidr, "pool": str(r.pool), "test": test,
                            "worker": os.environ.get("PYTEST_XDIST_WORKER", "main")}) + "\\n")

def test_default_shape(ip_range):
    record(ip_range, "default")
    assert ip_range.as_cidr() == {"cidr": ip_range.cidr}

@pytest.mark.ip_range(prefix=26)
def test_marker_prefix(ip_range):
    record(ip_range, "prefix26")

@pytest.mark.ip_range(family=6)
def test_marker_family(ip_range):
    record(ip_range, "family6")

@pytest.mark.ip_range(120, 6)
def test_marker_positional(ip_range):
    record(ip_range, "v6-120")

def test_factory(ip_range_factory):
    got = [ip_range_factory(), ip_range_factory(prefix=27), ip_range_factory(prefix=126, family=6)]
    for r in got:
        record(r, "factory")
    early = got[0]
    ip_range_factory.release(early)
    assert early not in ip_range_factory.ranges

@pytest.mark.parametrize("i", range(12))
def test_many(ip_range, i):
    record(ip_range, f"many{i}")
"""

INNER_PROFILE = """
import pytest

def test_profile_pool(ip_range):
    assert str(ip_range.pool) == "2001:db8:100::/112"
    assert ip_range.prefix == 124

@pytest.mark.ip_range(size=4)
def test_unknown_marker_argument(ip_range):
    pass
"""

INNER_EXHAUST = """
def test_wants_too_much(ip_range_factory):
    ip_range_factory()
    ip_range_factory()
"""


@pytest.fixture
def run(pytester: pytest.Pytester, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    pytester.makeconftest('pytest_plugins = ["fixtures.plugins", "fixtures.plugins.ranges"]\n')
    pytester.makeini("[pytest]\nmarkers =\n    ip_range(prefix, family): shape of ip_range\n")
    monkeypatch.setenv("PYTHONPATH", str(REPO))
    monkeypatch.setenv("CNI_E2E_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("RANGES_SEEN", str(tmp_path / "seen.jsonl"))

    def go(source: str, *args: str) -> pytest.RunResult:
        (pytester.path / "test_inner.py").write_text(source)
        return pytester.runpytest_subprocess(
            "-p", "no:cacheprovider", "--strict-markers", *args, timeout=120
        )

    go.seen = lambda: [  # type: ignore[attr-defined]
        json.loads(x) for x in (tmp_path / "seen.jsonl").read_text().splitlines()
    ]
    go.state = lambda family: json.loads(  # type: ignore[attr-defined]
        (tmp_path / "cache" / "ranges" / f"ipv{family}.json").read_text()
    )["claims"]
    return go


def test_fixtures_and_marker_under_xdist_hand_out_disjoint_ranges(run):
    result = run(
        INNER,
        "-n",
        "2",
        "--ip-range-pool",
        "198.18.0.0/20",
        "--ip-range-pool",
        "2001:db8:42::/112",
        "--ip-range-quarantine",
        "60",
    )
    result.assert_outcomes(passed=17)
    rows = run.seen()
    assert len({r["worker"] for r in rows}) == 2, "the tests should have spread over workers"
    by_test = {r["test"]: r for r in rows}
    assert ipaddress.ip_network(by_test["default"]["cidr"]).prefixlen == 28
    assert ipaddress.ip_network(by_test["prefix26"]["cidr"]).prefixlen == 26
    assert ipaddress.ip_network(by_test["family6"]["cidr"]).prefixlen == 124
    assert by_test["v6-120"]["pool"] == "2001:db8:42::/112"
    assert ipaddress.ip_network(by_test["v6-120"]["cidr"]).prefixlen == 120
    nets = [ipaddress.ip_network(r["cidr"]) for r in rows]
    assert len(nets) == 19
    # with a 60 s quarantine nothing may be reused within this run, on any worker
    for i, a in enumerate(nets):
        for b in nets[i + 1 :]:
            assert a.version != b.version or not a.overlaps(b), f"{a} and {b}"
    # everything was released at teardown, and is quarantined
    claims = run.state(4) + run.state(6)
    assert len(claims) == 19
    assert all(c["released_at"] is not None for c in claims)
    assert {c["holder"].split("/")[2] for c in claims} != {""}


def test_the_profiles_pools_are_used_and_a_bad_marker_argument_is_named(run):
    result = run(INNER_PROFILE, "--profile", "antrea-ipv6")
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines(["*ip_range takes prefix= and family= only*size*"])


def test_exhaustion_fails_the_test_naming_the_pool(run):
    result = run(INNER_EXHAUST, "--ip-range-pool", "192.0.2.0/28", "--ip-range-ttl", "300")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "*RangeExhaustedError*",
            "*pool 192.0.2.0/28: no free /28, 1 ranges live and 0 quarantined*",
        ]
    )


def test_a_bad_pool_option_is_a_usage_error_naming_it(run):
    result = run(INNER_PROFILE, "--ip-range-pool", "198.18.0.1/16")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--ip-range-pool*198.18.0.1/16*did you mean 198.18.0.0/16*"])


INNER_LOST = """
import time
from tenacity import Retrying, retry_if_result, stop_after_delay, wait_fixed
from fixtures.ranges import FileStore, Holder, default_state_dir

def test_a_rival_reclaims_this_tests_range(ip_range, ip_range_allocator):
    # stand-in for renewals that stopped for longer than the TTL: a rival whose clock runs
    # an hour ahead sees this claim as expired and takes it, as any holder would after such
    # a gap (the state is the real FileStore of this run)
    rival = FileStore(default_state_dir(), clock=lambda: time.time() + 3600)
    taken = rival.try_claim(ip_range.pool, ip_range.prefix, Holder.current("rival"), 60.0)
    assert taken == ip_range.network
    noticed = Retrying(stop=stop_after_delay(30), wait=wait_fixed(0.05),
                       retry=retry_if_result(lambda seen: not seen))
    assert noticed(lambda: any(x is ip_range for x in ip_range_allocator.lost))

def test_a_range_nobody_takes_fails_nothing(ip_range):
    assert ip_range.prefix == 28
"""


def test_a_range_lost_while_its_test_held_it_fails_that_test_naming_it(run):
    result = run(INNER_LOST, "--ip-range-pool", "192.0.2.0/27", "--ip-range-ttl", "3")
    result.assert_outcomes(passed=2, errors=1)
    result.stdout.fnmatch_lines(
        [
            "*ERROR at teardown of test_a_rival_reclaims_this_tests_range*",
            "*IP range(s) 192.0.2.0/28 lost while this test held them: their claim went "
            "unrenewed for longer than the TTL (3s) and another holder reclaimed it*",
        ]
    )
    assert "ERROR at teardown of test_a_range_nobody_takes_fails_nothing" not in result.stdout.str()
