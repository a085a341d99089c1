"""Probes against the namespace lab (tests/lab): owners, handshakes, HTTP, the matrix, the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fixtures.netns import NETNS_RUN_DIR, Netns
from fixtures.probes import (
    MatrixCase,
    Outcome,
    ProbeKind,
    Prober,
    ProbeSpec,
    parse_clientip,
    probe_batch,
)
from tests.lab.marks import needs_root
from tests.lab.topology import CLIENT_GATEWAY, CLIENT_IP, EXTERNAL_IP, EXTERNAL_IP6, build_lab

pytestmark = needs_root

REPO = Path(__file__).resolve().parent.parent
FAST = Prober(timeout=0.3)  # short: every "filtered" below waits this long per attempt


@pytest.fixture
def lab():
    with build_lab() as built:
        yield built


# -- ARP / NDP owner discovery -----------------------------------------------------------


def test_arp_owner_probe_finds_the_node_that_holds_the_ip(lab):
    lab.assign_ip("n2")
    result = FAST.arp(EXTERNAL_IP, source=lab.router.netns)
    assert result.ok, result
    assert lab.owner_of(result.owner) == "n2"


def test_moving_the_ip_moves_the_arp_answer(lab):
    lab.assign_ip("n1")
    before = FAST.arp(EXTERNAL_IP, source=lab.router.netns)
    lab.move_ip("n1", "n3")
    after = FAST.arp(EXTERNAL_IP, source=lab.router.netns)
    assert (lab.owner_of(before.owner), lab.owner_of(after.owner)) == ("n1", "n3")


def test_two_arp_owners_are_split_brain_and_never_pass(lab):
    lab.assign_ip("n1")
    lab.assign_ip("n3")
    result = FAST.arp(EXTERNAL_IP, source=lab.router.netns)
    assert result.split_brain and not result.ok
    assert sorted(lab.owner_of(m) for m in result.macs) == ["n1", "n3"]


def test_ndp_owner_probe_finds_the_owner_and_sees_split_brain(lab):
    lab.assign_ip("n2", EXTERNAL_IP6)
    one = FAST.ndp(EXTERNAL_IP6, source=lab.router.netns)
    lab.assign_ip("n3", EXTERNAL_IP6)
    two = FAST.ndp(EXTERNAL_IP6, source=lab.router.netns)
    assert one.ok and lab.owner_of(one.owner) == "n2"
    assert two.split_brain and sorted(lab.owner_of(m) for m in two.macs) == ["n2", "n3"]


def test_owner_probe_without_an_owner_is_filtered(lab):
    result = FAST.arp(EXTERNAL_IP, source=lab.router.netns)
    assert result.outcome is Outcome.FILTERED and result.macs == ()


def test_owner_probe_off_the_segment_is_inconclusive(lab):
    result = FAST.arp(lab.node("n1").ipv4, source=lab.client.netns)
    assert result.outcome is Outcome.INCONCLUSIVE and "not on-link" in result.detail


# -- TCP, ICMP, HTTP ---------------------------------------------------------------------


def test_tcp_probe_tells_reachable_refused_and_filtered_apart(lab):
    n1 = lab.node("n1")
    lab.serve_http("n1", 8080)  # a listener; 8081 has none; 8082 is dropped by the router
    lab.drop_tcp(8082)
    seen = {port: FAST.tcp(n1.ipv4, port, source=lab.client.netns) for port in (8080, 8081, 8082)}
    assert {p: r.outcome for p, r in seen.items()} == {
        8080: Outcome.REACHABLE,
        8081: Outcome.REFUSED,
        8082: Outcome.FILTERED,
    }
    assert seen[8080].responder == n1.ipv4 and seen[8080].rtt is not None


def test_tcp_probe_counts_a_firewall_reject_as_refused(lab):
    lab.reject_tcp(8083)
    result = FAST.tcp(lab.node("n1").ipv4, 8083, source=lab.client.netns)
    assert result.outcome is Outcome.REFUSED
    assert "communication-prohibited" in result.detail and result.responder == CLIENT_GATEWAY


def test_tcp_probe_over_ipv6(lab):
    n1 = lab.node("n1")
    lab.serve_http("n1", 8090, host="::")
    seen = [FAST.tcp(n1.ipv6, port, source=lab.node("n2").netns).outcome for port in (8090, 8091)]
    assert seen == [Outcome.REACHABLE, Outcome.REFUSED]


def test_tcp_probe_retries_count_times_when_nothing_answers(lab):
    lab.drop_tcp(8082)
    result = FAST.tcp(lab.node("n1").ipv4, 8082, source=lab.client.netns, timeout=0.1, count=3)
    assert result.outcome is Outcome.FILTERED and result.attempts == 3


def test_icmp_probe_reachable_and_unanswered(lab):
    reply = FAST.icmp(lab.node("n1").ipv4, source=lab.client.netns)
    silence = FAST.icmp("198.51.100.99", source=lab.router.netns)
    assert reply.outcome is Outcome.REACHABLE and reply.responder == lab.node("n1").ipv4
    assert silence.outcome is Outcome.FILTERED


def test_icmp_error_makes_a_probe_inconclusive_not_filtered(lab):
    # the router has no route to 198.18.0.0/15 and answers the client "net unreachable"
    result = FAST.icmp("198.18.5.5", source=lab.client.netns)
    assert result.outcome is Outcome.INCONCLUSIVE and "unreach" in result.detail


def test_http_probe_reads_hostname_and_client_ip(lab):
    lab.serve_http("n1", 8080)
    n1 = lab.node("n1")
    hostname = FAST.http(n1.ipv4, 8080, "/hostname", source=lab.client.netns)
    clientip = FAST.http(n1.ipv4, 8080, "/clientip", source=lab.client.netns)
    assert (hostname.http_status, hostname.body) == (200, "n1")
    assert parse_clientip(clientip.body)[0] == CLIENT_IP
    assert hostname.rtt is not None and hostname.ok


def test_http_probe_reports_refused_and_filtered(lab):
    lab.drop_tcp(8082)
    n1 = lab.node("n1").ipv4
    refused = FAST.http(n1, 8081, source=lab.client.netns)
    dropped = FAST.http(n1, 8082, source=lab.client.netns)
    assert (refused.outcome, dropped.outcome) == (Outcome.REFUSED, Outcome.FILTERED)


def test_probe_from_a_process_namespace(lab):
    lab.assign_ip("n3")
    code = (
        "import sys; from pyroute2 import netns; "
        f"netns.setns({lab.router.netns.path!r}, flags=0); print('in', flush=True); "
        "sys.stdin.read()"
    )
    child = subprocess.Popen(
        [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert child.stdout.readline().strip() == "in"
        result = FAST.arp(EXTERNAL_IP, source=Netns.of_pid(child.pid))
    finally:
        child.stdin.close()
        child.wait(timeout=10)
    assert lab.owner_of(result.owner) == "n3"


# -- the reachability matrix -------------------------------------------------------------


def test_matrix_reports_expected_vs_observed_diff(lab):
    lab.serve_http("n1", 8080)
    lab.drop_tcp(8082)
    n1 = lab.node("n1").ipv4
    client, router = lab.client.netns, lab.router.netns

    def tcp(port: int) -> ProbeSpec:
        return ProbeSpec(ProbeKind.TCP, n1, port=port, timeout=0.2)

    cases = [
        MatrixCase(client, tcp(8080), Outcome.REACHABLE),
        MatrixCase(client, tcp(8081), Outcome.REFUSED),
        MatrixCase(client, tcp(8082), Outcome.REACHABLE),  # wrong on purpose: it is dropped
        MatrixCase(router, tcp(8080), Outcome.REACHABLE),
        MatrixCase(router, tcp(8081), Outcome.FILTERED),  # wrong on purpose: it is refused
        MatrixCase(router, tcp(8082), Outcome.REFUSED),  # the drop is for the client only
    ]
    reports = []
    report = Prober(on_report=reports.append).matrix(cases, retries=1, retry_wait=0, settle=0.1)
    assert reports == [report]
    wrong = {
        (c.case.source.label, c.case.probe.port): c.observed.outcome for c in report.mismatches
    }
    assert wrong == {
        (client.label, 8082): Outcome.FILTERED,
        (router.label, 8081): Outcome.REFUSED,
    }
    assert report.rounds == 2
    by_pair = {(c.case.source.label, c.case.probe.port): c.observed for c in report.cells}
    assert by_pair[(client.label, 8082)].attempts == 2  # expected reachable: retried once
    assert by_pair[(router.label, 8081)].attempts == 1  # expected filtered: never retried
    diff = report.diff()
    assert "!! reachable->filtered" in diff and "!! filtered->refused" in diff


# -- batches: every probe of a namespace in flight at once ------------------------------


def test_one_batch_of_every_kind_from_several_namespaces_keeps_each_verdict_in_order(lab):
    lab.serve_http("n1", 8080)
    lab.drop_tcp(8082)
    lab.assign_ip("n2")
    n1 = lab.node("n1").ipv4
    client, router = lab.client.netns, lab.router.netns
    pairs = [
        (client, ProbeSpec(ProbeKind.TCP, n1, port=8080, timeout=0.3)),
        (router, ProbeSpec(ProbeKind.ARP, EXTERNAL_IP, timeout=0.3)),
        (client, ProbeSpec(ProbeKind.TCP, n1, port=8082, timeout=0.3)),
        (client, ProbeSpec(ProbeKind.HTTP, n1, port=8080, timeout=0.3)),
        (router, ProbeSpec(ProbeKind.TCP, n1, port=8081, timeout=0.3)),
        (client, ProbeSpec(ProbeKind.ICMP, n1, timeout=0.3)),
        (router, ProbeSpec(ProbeKind.HTTP, n1, port=8081, timeout=0.3)),
    ]
    got = probe_batch(pairs)
    assert [(r.source, r.kind, r.outcome) for r in got] == [
        (client.label, ProbeKind.TCP, Outcome.REACHABLE),
        (router.label, ProbeKind.ARP, Outcome.REACHABLE),
        (client.label, ProbeKind.TCP, Outcome.FILTERED),
        (client.label, ProbeKind.HTTP, Outcome.REACHABLE),
        (router.label, ProbeKind.TCP, Outcome.REFUSED),
        (client.label, ProbeKind.ICMP, Outcome.REACHABLE),
        (router.label, ProbeKind.HTTP, Outcome.REFUSED),
    ]
    assert lab.owner_of(got[1].owner) == "n2" and got[3].body == "n1"
    assert got[0].macs and got[0].macs == got[3].macs  # the client's next hop (the router)


def test_owners_of_many_ips_in_one_sweep_are_told_apart_and_split_brain_still_shows(lab):
    ips = [f"198.51.100.{201 + i}" for i in range(3)]
    lab.assign_ip("n1", ips[0])
    lab.assign_ip("n2", ips[1])
    lab.assign_ip("n1", ips[2])
    lab.assign_ip("n3", ips[2])
    specs = [ProbeSpec(ProbeKind.ARP, ip, timeout=1.0, window=0.2) for ip in ips]
    got = probe_batch([(lab.router.netns, s) for s in specs])
    assert [sorted(lab.owner_of(m) for m in r.macs) for r in got] == [["n1"], ["n2"], ["n1", "n3"]]
    assert got[2].split_brain and len(got[2].owner_rtts) == 2


def test_a_node_level_drop_is_filtered_and_an_unreachable_route_inconclusive(lab):
    lab.serve_http("n2", 8082)
    lab.drop_tcp_at("n2", 8082)
    lab.unreachable_from("n1", lab.node("n3").ipv4)
    n1 = lab.node("n1").netns
    dropped = FAST.tcp(lab.node("n2").ipv4, 8082, source=n1)
    no_route = FAST.tcp(lab.node("n3").ipv4, 8080, source=n1)
    assert dropped.outcome is Outcome.FILTERED
    assert no_route.outcome is Outcome.INCONCLUSIVE and "No route to host" in no_route.detail


def test_bench_probes_quick_mode_checks_agreement_and_prints_json():
    done = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "bench-probes"), "--quick", "--json"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    data = json.loads(done.stdout)
    assert data["checks"] and data["checks_ok"] is True
    assert set(data["goals"]) == {
        "tcp_matrix_vs_parallel_curl",
        "http_matrix_vs_parallel_curl",
        "tcp_single_p50_ms",
        "arp_owner_verdict_p99_ms",
        "arp_owner_matrix_10_ips_s",
    }


# -- the command line --------------------------------------------------------------------


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(REPO / "scripts" / "probe"), *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_cli_json_and_exit_status_follow_the_owner_count(lab):
    router = lab.router.netns.name
    lab.assign_ip("n1")
    one = _cli("--netns", router, "arp", EXTERNAL_IP, "--timeout", "0.3", "--json")
    lab.assign_ip("n2")
    two = _cli("--netns", router, "arp", EXTERNAL_IP, "--timeout", "0.3", "--json")
    assert one.returncode == 0, one.stderr
    assert json.loads(one.stdout)["macs"] == [lab.node("n1").mac]
    assert two.returncode == 1
    data = json.loads(two.stdout)
    assert data["outcome"] == "reachable" and data["split_brain"] is True
    assert sorted(data["macs"]) == sorted([lab.node("n1").mac, lab.node("n2").mac])


def test_cli_tcp_refused_exits_1_and_prints_one_line(lab):
    pid = lab.client.netns  # probe by PID: the CLI's other way in
    code = (
        "import sys; from pyroute2 import netns; "
        f"netns.setns({pid.path!r}, flags=0); print('in', flush=True); sys.stdin.read()"
    )
    child = subprocess.Popen(
        [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert child.stdout.readline().strip() == "in"
        done = _cli("--pid", str(child.pid), "tcp", lab.node("n1").ipv4, "--port", "8081")
    finally:
        child.stdin.close()
        child.wait(timeout=10)
    assert done.returncode == 1
    assert done.stdout.count("\n") == 1 and ": refused (" in done.stdout


# -- the lab itself ----------------------------------------------------------------------


def _docker_link(name: str) -> bool:
    """Links Docker itself makes and removes as containers come and go (kind nodes booting
    on the other xdist worker): its bridges and containers' host-side veths. The lab's own
    links are p<N>, br0 and eth0, so leaving these out hides nothing of the lab's."""
    return name == "docker0" or name.startswith(("br-", "veth"))


def _root_view() -> tuple[list, list, list]:
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        all_links = {link["index"]: link.get("IFLA_IFNAME") for link in ipr.get_links()}
        docker = {i for i, name in all_links.items() if _docker_link(name)}
        links = sorted(name for i, name in all_links.items() if i not in docker)
        addrs = sorted(
            (a.get("IFA_ADDRESS"), a["prefixlen"])
            for a in ipr.get_addr()
            if a["index"] not in docker
        )
        routes = sorted(
            str(r.get("RTA_DST")) + "/" + str(r["dst_len"])
            for r in ipr.get_routes()
            if r.get("RTA_OIF") not in docker
        )
    return links, addrs, routes


def test_lab_changes_nothing_in_the_root_namespace_and_removes_everything():
    before = _root_view()
    with build_lab() as built:
        names = [ns.name for ns in built.namespaces]
        bridge_pin = os.open(built.bridge.path, os.O_RDONLY)  # keep its links observable
        assert _root_view() == before
    try:
        pinned = Netns.at(f"/proc/self/fd/{bridge_pin}", label="pinned bridge namespace")
        with pinned.iproute() as ipr:
            left = [link.get("IFLA_IFNAME") for link in ipr.get_links()]
    finally:
        os.close(bridge_pin)
    assert left == ["lo"]  # every veth and the bridge are gone, not just unnamed
    assert not [n for n in names if (NETNS_RUN_DIR / n).exists()]
    assert _root_view() == before


def test_lab_is_removed_after_a_failure_inside():
    with pytest.raises(RuntimeError, match="test failed here"), build_lab() as built:
        names = [ns.name for ns in built.namespaces]
        raise RuntimeError("test failed here")
    assert names and not [n for n in names if (NETNS_RUN_DIR / n).exists()]
