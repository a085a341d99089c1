"""Route sets tagged with the harness's protocol number, and the DSR return path (#6992)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from fixtures import netns as nsx
from fixtures.netns import Netns
from fixtures.probes import Outcome, Prober, parse_clientip
from fixtures.routes import (
    HARNESS_PROTO,
    NodeEndpoint,
    RouteError,
    RouteSet,
    dsr_return_routes,
    harness_routes,
    install_dsr_return_routes,
)
from tests.lab.marks import NEEDS_ROOT_REASON, needs_root
from tests.lab.topology import CLIENT_IP, EXTERNAL_IP, build_lab

REPO = Path(__file__).resolve().parent.parent
FAST = Prober(timeout=0.3)
STATIC_PROTO = 4  # what `ip route add` uses: a route the harness did not make


def _nodes_nobody_may_touch() -> list[NodeEndpoint]:
    # handles on the current namespace; the tests below must return before using them
    here = Netns.current()
    return [
        NodeEndpoint("n1", here, ("198.51.100.11",)),
        NodeEndpoint("n2", here, ("198.51.100.12",)),
    ]


def test_no_dsr_return_routes_outside_dsr_mode():
    sets = install_dsr_return_routes(
        _nodes_nobody_may_touch(), owner="n1", client=CLIENT_IP, lb_mode="nat"
    )
    assert sets == {}


def test_unknown_load_balancer_mode_is_rejected_by_name():
    with pytest.raises(RouteError, match="'maglev'"):
        install_dsr_return_routes(
            _nodes_nobody_may_touch(), owner="n1", client=CLIENT_IP, lb_mode="maglev"
        )


def test_unknown_owner_is_rejected_naming_the_nodes():
    with pytest.raises(RouteError, match=r"'n9' is not one of the nodes \['n1', 'n2'\]"):
        install_dsr_return_routes(
            _nodes_nobody_may_touch(), owner="n9", client=CLIENT_IP, lb_mode="dsr"
        )


class TestRouteSet:
    pytestmark = needs_root

    @pytest.fixture
    def ns(self):
        with nsx.temporary_netns("routes") as created:
            nsx.add_veth(created, "v0", created, "v1")  # an interface with a neighbour side
            nsx.add_address(created, "v0", "198.51.100.2/24")
            nsx.add_address(created, "v0", "2001:db8:51::2/64")
            yield created

    def test_routes_carry_the_harness_protocol_and_go_away_on_close(self, ns):
        with RouteSet(ns) as rs:
            rs.add("203.0.113.10", "198.51.100.1")
            rs.add("2001:db8:113::/64", "2001:db8:51::1")
            seen = {(r.dst, r.gateway) for r in harness_routes(ns, proto=HARNESS_PROTO)}
            assert seen == {
                ("203.0.113.10/32", "198.51.100.1"),
                ("2001:db8:113::/64", "2001:db8:51::1"),
            }
        assert harness_routes(ns) == []

    def test_routes_are_removed_after_a_failure(self, ns):
        with pytest.raises(RuntimeError, match="boom"), RouteSet(ns) as rs:
            rs.add("203.0.113.0/24", "198.51.100.1")
            raise RuntimeError("boom")
        assert harness_routes(ns) == []

    def test_replace_changes_its_own_route(self, ns):
        with RouteSet(ns) as rs:
            rs.add("203.0.113.10/32", "198.51.100.1")
            rs.replace("203.0.113.10/32", "198.51.100.3")
            assert [(r.dst, r.gateway) for r in harness_routes(ns)] == [
                ("203.0.113.10/32", "198.51.100.3")
            ]

    def test_foreign_routes_are_never_touched(self, ns):
        with ns.iproute() as ipr:
            ipr.route("add", dst="203.0.113.10/32", gateway="198.51.100.1", proto=STATIC_PROTO)
        with RouteSet(ns) as rs:
            with pytest.raises(RouteError, match="proto 4, not the harness's 226"):
                rs.replace("203.0.113.10/32", "198.51.100.3")
            with pytest.raises(RouteError, match="was not installed by this route set"):
                rs.delete("203.0.113.10/32")
        with ns.iproute() as ipr:
            left = [
                (r.get("RTA_DST"), r.get("RTA_GATEWAY"), r["proto"])
                for r in ipr.get_routes(family=2, table=254)
                if r["dst_len"] == 32
            ]
        assert left == [("203.0.113.10", "198.51.100.1", STATIC_PROTO)]

    def test_delete_removes_one_route_and_keeps_the_others(self, ns):
        with RouteSet(ns) as rs:
            rs.add("203.0.113.10/32", "198.51.100.1")
            rs.add("203.0.113.11/32", "198.51.100.1")
            rs.delete("203.0.113.10/32")
            assert [r.dst for r in harness_routes(ns)] == ["203.0.113.11/32"]
            assert [r.dst for r in rs.routes] == ["203.0.113.11/32"]

    def test_bad_destination_and_family_mismatch_are_named(self, ns):
        with RouteSet(ns) as rs:
            with pytest.raises(RouteError, match="'203.0.113.300'"):
                rs.add("203.0.113.300", "198.51.100.1")
            with pytest.raises(RouteError, match="gateway 2001:db8:51::1 does not match"):
                rs.add("203.0.113.10", "2001:db8:51::1")
        assert harness_routes(ns) == []


class TestDsrReturnPath:
    """Upstream #6992: in DSR the backend node answers the client itself and needs a way back."""

    pytestmark = needs_root

    @pytest.fixture
    def lab(self):
        with build_lab() as built:
            built.enable_dsr(lb="n1", backend="n2")
            built.serve_http("n2", 8080, host=EXTERNAL_IP)
            yield built

    def test_without_the_return_route_the_client_gets_no_answer(self, lab):
        assert lab.owner_of(FAST.arp(EXTERNAL_IP, source=lab.router.netns).owner) == "n1"
        result = FAST.tcp(EXTERNAL_IP, 8080, source=lab.client.netns)
        assert result.outcome is Outcome.FILTERED

    def test_with_the_return_routes_the_backend_answers_the_client(self, lab):
        with dsr_return_routes(
            lab.node_endpoints(), owner="n1", client=CLIENT_IP, lb_mode="dsr"
        ) as sets:
            hostname = FAST.http(EXTERNAL_IP, 8080, "/hostname", source=lab.client.netns)
            clientip = FAST.http(EXTERNAL_IP, 8080, "/clientip", source=lab.client.netns)
            installed = {n: harness_routes(lab.node(n).netns) for n in ("n1", "n2", "n3")}
        assert sorted(sets) == ["n2", "n3"]
        assert (hostname.outcome, hostname.body) == (Outcome.REACHABLE, "n2")  # the backend
        assert parse_clientip(clientip.body)[0] == CLIENT_IP  # source IP preserved
        assert installed["n1"] == []
        for node in ("n2", "n3"):
            assert [(r.dst, r.gateway) for r in installed[node]] == [
                (f"{CLIENT_IP}/32", lab.node("n1").ipv4)
            ]

    def test_after_teardown_the_routes_are_gone_and_the_answer_with_them(self, lab):
        with dsr_return_routes(lab.node_endpoints(), owner="n1", client=CLIENT_IP, lb_mode="dsr"):
            during = FAST.tcp(EXTERNAL_IP, 8080, source=lab.client.netns)
        after = FAST.tcp(EXTERNAL_IP, 8080, source=lab.client.netns)
        assert during.outcome is Outcome.REACHABLE
        assert all(harness_routes(h.netns) == [] for h in lab.nodes.values())
        assert after.outcome is Outcome.FILTERED

    def test_nat_mode_installs_nothing_and_the_client_still_gets_no_answer(self, lab):
        with dsr_return_routes(
            lab.node_endpoints(), owner="n1", client=CLIENT_IP, lb_mode="nat"
        ) as sets:
            result = FAST.tcp(EXTERNAL_IP, 8080, source=lab.client.netns)
        assert sets == {}
        assert result.outcome is Outcome.FILTERED


@pytest.mark.needs_root
@pytest.mark.skipif(not nsx.has_netns_privileges(), reason=NEEDS_ROOT_REASON)
def test_dsr_return_routes_fixture_removes_its_routes_at_teardown(tmp_path):
    """Runs pytest in a subprocess with only the dataplane plugin: one test installs routes
    through the fixture, the next (same lab) finds them gone."""
    (tmp_path / "test_fixture.py").write_text(
        textwrap.dedent("""
        import pytest
        from fixtures.routes import harness_routes
        from tests.lab.topology import CLIENT_IP, build_lab

        @pytest.fixture(scope="module")
        def lab():
            with build_lab() as built:
                yield built

        def test_installs(lab, dsr_return_routes):
            sets = dsr_return_routes(lab.node_endpoints(), owner="n1", client=CLIENT_IP,
                                     lb_mode="dsr")
            assert sorted(sets) == ["n2", "n3"]
            assert all(harness_routes(lab.node(n).netns) for n in ("n2", "n3"))

        def test_gone_after_teardown(lab):
            assert all(harness_routes(h.netns) == [] for h in lab.nodes.values())
    """)
    )
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-p",
            "fixtures.plugins.dataplane",
            "-p",
            "no:cacheprovider",
            "--rootdir",
            str(tmp_path),
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"},
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "2 passed" in done.stdout
