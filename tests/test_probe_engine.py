"""The probe engine's packets and parsers against scapy's, and the benches' verdict rules
(no privileges needed: nothing is sent)."""

from __future__ import annotations

import http.client
import json
import logging
import socket

import pytest
from scapy.layers.inet import IP, TCP
from scapy.layers.inet6 import (
    ICMPv6ND_NA,
    ICMPv6ND_NS,
    ICMPv6NDOptDstLLAddr,
    ICMPv6NDOptSrcLLAddr,
    IPv6,
)
from scapy.layers.l2 import ARP, Ether
from scapy.utils6 import in6_getnsma, in6_getnsmac

from fixtures import lifecycle
from fixtures.bench import BenchReport, Goal, curl_outcome, percentile
from fixtures.cli.bench_session import _CREATE_DONE
from fixtures.probe_engine import (
    _arp_request,
    _neighbour_solicitation,
    _owner_answer,
    _response_complete,
    parse_response,
    syn_segment,
)
from fixtures.probes import Outcome

MAC = "02:00:5e:00:00:0b"
MAC_RAW = bytes.fromhex(MAC.replace(":", ""))


@pytest.mark.parametrize(
    ("src", "dst"), [("198.51.100.11", "198.51.100.12"), ("2001:db8:51::11", "2001:db8:51::12")]
)
def test_the_syn_is_byte_for_byte_the_one_scapy_builds(src, dst):
    ours = syn_segment(src, dst, 20001, 8080, 0x12345678)
    under = IPv6(src=src, dst=dst) if ":" in dst else IP(src=src, dst=dst)
    syn = TCP(sport=20001, dport=8080, flags="S", seq=0x12345678, window=64240,
              options=[("MSS", 1460)])  # fmt: skip
    assert ours == bytes(under / syn)[40 if ":" in dst else 20 :]


def test_the_arp_request_is_a_broadcast_who_has():
    frame = Ether(_arp_request(MAC_RAW, socket.inet_aton("198.51.100.1"),
                               socket.inet_aton("198.51.100.200")))  # fmt: skip
    assert frame.dst == "ff:ff:ff:ff:ff:ff" and frame.src == MAC
    assert (frame[ARP].op, frame[ARP].psrc, frame[ARP].pdst) == (
        1,
        "198.51.100.1",
        "198.51.100.200",
    )
    assert frame[ARP].hwsrc == MAC


def test_the_neighbour_solicitation_is_the_one_scapy_builds():
    src, target = "2001:db8:51::1", "2001:db8:51::200"
    ours = _neighbour_solicitation(
        MAC_RAW, socket.inet_pton(socket.AF_INET6, src), socket.inet_pton(socket.AF_INET6, target)
    )
    nsma = in6_getnsma(socket.inet_pton(socket.AF_INET6, target))
    ref = (
        Ether(src=MAC, dst=in6_getnsmac(nsma))
        / IPv6(src=src, dst=socket.inet_ntop(socket.AF_INET6, nsma), hlim=255)
        / ICMPv6ND_NS(tgt=target)
        / ICMPv6NDOptSrcLLAddr(lladdr=MAC)
    )
    assert ours == bytes(ref)


def test_owner_answers_name_the_target_and_the_mac_that_owns_it():
    owner = "02:00:5e:00:00:0c"
    reply = Ether(src=owner, dst=MAC) / ARP(op=2, hwsrc=owner, psrc="198.51.100.200",
                                            hwdst=MAC, pdst="198.51.100.1")  # fmt: skip
    assert _owner_answer(bytes(reply)) == (socket.inet_aton("198.51.100.200"), owner)
    request = Ether(src=owner, dst="ff:ff:ff:ff:ff:ff") / ARP(op=1, psrc="198.51.100.9")
    assert _owner_answer(bytes(request)) is None
    target = "2001:db8:51::200"
    base = Ether(src="02:00:5e:00:00:0d", dst=MAC) / IPv6(src=target, dst="2001:db8:51::1")
    with_option = base / ICMPv6ND_NA(tgt=target) / ICMPv6NDOptDstLLAddr(lladdr=owner)
    packed = socket.inet_pton(socket.AF_INET6, target)
    assert _owner_answer(bytes(with_option)) == (packed, owner)
    without = base / ICMPv6ND_NA(tgt=target)
    assert _owner_answer(bytes(without)) == (packed, "02:00:5e:00:00:0d")


def test_an_http_answer_is_complete_by_its_length_or_its_last_chunk():
    head = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n"
    assert not _response_complete(head + b"n")
    assert _response_complete(head + b"n1")
    chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nn1\r\n"
    assert not _response_complete(chunked) and _response_complete(chunked + b"0\r\n\r\n")
    assert not _response_complete(b"HTTP/1.0 200 OK\r\n")  # no end of headers yet


@pytest.mark.parametrize(
    ("rc", "stderr", "outcome"),
    [
        (0, "", Outcome.REACHABLE),
        (28, "* Connection timed out after 1001 milliseconds", Outcome.FILTERED),
        (7, "* connect to 198.51.100.30 port 8081 failed: Connection refused", Outcome.REFUSED),
        (7, "* Immediate connect fail for 198.51.100.21: No route to host", Outcome.INCONCLUSIVE),
        (52, "* Empty reply from server", Outcome.INCONCLUSIVE),
    ],
)
def test_curl_exit_codes_read_as_the_probes_verdicts(rc, stderr, outcome):
    assert curl_outcome(rc, stderr) is outcome


def test_a_bench_report_holds_figures_to_goals_and_prints_one_json_object():
    report = BenchReport("bench-x")
    report.figure("speedup", 12.0, Goal(">=", 10), "a / b")
    report.figure("p50_ms", 1.5, Goal("<=", 1.0), "one at a time")
    report.check("agree", 0)
    data = json.loads(report.to_json())
    assert data["ratios"] == {"speedup": 12.0, "p50_ms": 1.5}
    assert data["goals"] == {"speedup": ">= 10", "p50_ms": "<= 1"}
    assert data["met"] == {"speedup": True, "p50_ms": False}
    assert data["checks_ok"] is True
    report.check("agree", 2)
    assert not report.checks_ok and "MISSED" in report.render()
    assert percentile([3.0, 1.0, 2.0, 4.0], 0.5) == 2.0


def test_bench_session_counts_creates_from_the_lines_the_pipeline_logs(caplog):
    """The -n 4 "exactly one create" check reads these lines; if their wording changed the
    count would drop to 0 and the check fail, never pass by accident."""
    with caplog.at_level(logging.INFO, logger="cni_e2e.progress"):
        lifecycle._timed("create (kind)", "cni-e2e-x", lambda: None)
    found = [_CREATE_DONE.search(r.getMessage()) for r in caplog.records]
    assert [m.group(1) for m in found if m] == ["cni-e2e-x"]


def test_an_http_answer_reads_as_status_and_body_however_it_is_framed():
    assert parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nn1") == (200, "n1")
    assert parse_response(b"HTTP/1.0 404 Not Found\r\nServer: x\r\n\r\nnope") == (404, "nope")
    chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nn1\r\n0\r\n\r\n"
    assert parse_response(chunked) == (200, "n1")
    with pytest.raises(http.client.IncompleteRead):
        parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nn1")
    with pytest.raises(http.client.BadStatusLine):
        parse_response(b"SSH-2.0-OpenSSH\r\n\r\n")
