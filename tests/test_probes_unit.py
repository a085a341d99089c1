"""Probe values, matrix policy and the CLI's argument handling (no privileges needed)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from fixtures import probes
from fixtures.netns import Netns
from fixtures.probes import (
    MatrixCase,
    MatrixCell,
    MatrixMismatch,
    MatrixReport,
    Outcome,
    ProbeKind,
    ProbeResult,
    ProbeSpec,
    assert_matrix,
    parse_clientip,
    probe_matrix,
)

REPO = Path(__file__).resolve().parent.parent
A, B = Netns(None, "a"), Netns(None, "b")


def _result(spec: ProbeSpec, outcome: Outcome, source: str = "a", **kw) -> ProbeResult:
    return ProbeResult(spec.kind, spec.target, spec.port, source, outcome, **kw)


def test_spec_rejects_a_target_that_is_not_an_ip_and_names_it():
    with pytest.raises(ValueError, match="'kind-worker'"):
        ProbeSpec(ProbeKind.TCP, "kind-worker", port=80)


@pytest.mark.parametrize(
    ("kind", "target", "message"),
    [("arp", "2001:db8::1", "arp needs an IPv4"), ("ndp", "198.51.100.1", "ndp needs an IPv6")],
)
def test_owner_probes_need_the_matching_family(kind, target, message):
    with pytest.raises(ValueError, match=message):
        ProbeSpec(kind, target)


def test_tcp_needs_a_port_and_http_defaults_to_80():
    with pytest.raises(ValueError, match="needs a port"):
        ProbeSpec(ProbeKind.TCP, "198.51.100.1")
    assert ProbeSpec(ProbeKind.HTTP, "198.51.100.1").port == 80


def test_result_prints_as_one_line_with_who_answered_and_rtt():
    spec = ProbeSpec(ProbeKind.TCP, "198.51.100.11", port=8080)
    line = str(
        _result(
            spec,
            Outcome.REACHABLE,
            responder="198.51.100.11",
            macs=("02:00:5e:00:00:0b",),
            rtt=0.00042,
            detail="SYN-ACK",
        )
    )
    assert "\n" not in line
    assert line.startswith("tcp 198.51.100.11:8080 from a: reachable")
    assert "198.51.100.11 at 02:00:5e:00:00:0b" in line and "rtt 0.42 ms" in line


def test_split_brain_never_passes_and_prints_both_owners():
    spec = ProbeSpec(ProbeKind.ARP, "198.51.100.200")
    two = _result(spec, Outcome.REACHABLE, macs=("02:00:5e:00:00:0b", "02:00:5e:00:00:0d"))
    one = _result(spec, Outcome.REACHABLE, macs=("02:00:5e:00:00:0b",))
    assert two.split_brain and not two.ok and two.owner is None
    assert "SPLIT BRAIN: 2 owners 02:00:5e:00:00:0b, 02:00:5e:00:00:0d" in str(two)
    assert one.ok and one.owner == "02:00:5e:00:00:0b"


def test_result_json_carries_outcome_and_macs():
    spec = ProbeSpec(ProbeKind.ARP, "198.51.100.200")
    data = json.loads(
        json.dumps(
            _result(spec, Outcome.REACHABLE, macs=("02:00:5e:00:00:0b",), rtt=0.001).to_dict()
        )
    )
    assert data["outcome"] == "reachable" and data["macs"] == ["02:00:5e:00:00:0b"]
    assert data["ok"] is True and data["rtt_ms"] == 1.0


def test_parse_clientip_reads_agnhost_answers():
    assert parse_clientip("203.0.113.10:40000") == ("203.0.113.10", 40000)
    assert parse_clientip("[2001:db8::10]:40000\n") == ("2001:db8::10", 40000)
    with pytest.raises(ValueError, match="not an agnhost"):
        parse_clientip("NOW: 2024")


def test_matrix_table_marks_only_the_mismatched_pair():
    to_a = ProbeSpec(ProbeKind.TCP, "198.51.100.11", port=8080)
    to_b = ProbeSpec(ProbeKind.TCP, "198.51.100.12", port=8080)
    cells = (
        MatrixCell(MatrixCase(A, to_a, Outcome.REACHABLE), _result(to_a, Outcome.REACHABLE)),
        MatrixCell(MatrixCase(A, to_b, Outcome.REACHABLE), _result(to_b, Outcome.FILTERED)),
        MatrixCell(MatrixCase(B, to_a, Outcome.REFUSED), _result(to_a, Outcome.REFUSED, "b")),
        MatrixCell(MatrixCase(B, to_b, Outcome.FILTERED), _result(to_b, Outcome.FILTERED, "b")),
    )
    report = MatrixReport(cells, rounds=2, first_round_mismatches=2)
    table = report.table().splitlines()
    assert table[0].split() == [
        "source",
        "\\",
        "target",
        "tcp",
        "198.51.100.11:8080",
        "tcp",
        "198.51.100.12:8080",
    ]
    assert table[1].split() == ["a", "reachable", "!!", "reachable->filtered"]
    assert table[2].split() == ["b", "refused", "filtered"]
    assert [c.case.probe for c in report.mismatches] == [to_b]
    assert "1 of 4 pairs differ from expected after 2 rounds (first round: 2)" in report.diff()


def test_matrix_expecting_reachable_rejects_split_brain():
    spec = ProbeSpec(ProbeKind.ARP, "198.51.100.200")
    case = MatrixCase(A, spec, Outcome.REACHABLE)
    assert not case.matches(_result(spec, Outcome.REACHABLE, macs=("02:aa", "02:bb")))
    assert case.matches(_result(spec, Outcome.REACHABLE, macs=("02:aa",)))


def test_assert_matrix_raises_an_assertion_carrying_the_diff():
    spec = ProbeSpec(ProbeKind.ICMP, "198.51.100.11")
    bad = MatrixReport(
        (MatrixCell(MatrixCase(A, spec, Outcome.REACHABLE), _result(spec, Outcome.FILTERED)),)
    )
    with pytest.raises(AssertionError, match=r"!! reachable->filtered") as caught:
        assert_matrix(bad)
    assert isinstance(caught.value, MatrixMismatch) and caught.value.report is bad
    assert_matrix(MatrixReport(()))  # nothing to compare is not a failure


def _fake_batch(answer):
    """A stand-in for probe_batch (the network): answer(spec, source) per pair."""

    def fake(pairs, workers=16):
        return [answer(spec, source) for source, spec in pairs]

    return fake


def test_matrix_retries_only_pairs_expected_to_succeed_and_reprobes_after_settle(monkeypatch):
    """Replaces probe_batch (the network) with a script of outcomes; only the policy is real."""
    calls: list[str] = []
    up = ProbeSpec(ProbeKind.TCP, "198.51.100.11", port=8080)
    down = ProbeSpec(ProbeKind.TCP, "198.51.100.12", port=8080)

    def fake_probe(spec: ProbeSpec, source: Netns) -> ProbeResult:
        calls.append(spec.target)
        return _result(spec, Outcome.FILTERED, source.label)  # both look dropped

    monkeypatch.setattr(probes, "probe_batch", _fake_batch(fake_probe))
    report = probe_matrix(
        [MatrixCase(A, up, Outcome.REACHABLE), MatrixCase(A, down, Outcome.FILTERED)],
        retries=2,
        retry_wait=0,
        settle=0,
    )
    # 2 rounds; per round the expected-reachable pair is tried 1 + 2 times, the other once
    assert calls.count(up.target) == 6 and calls.count(down.target) == 2
    assert report.rounds == 2 and report.first_round_mismatches == 1
    assert [c.case.probe for c in report.mismatches] == [up]
    assert report.mismatches[0].observed.attempts == 3


def test_matrix_stops_after_one_round_when_everything_matches(monkeypatch):
    """Replaces probe_batch (the network) with one that always answers."""
    spec = ProbeSpec(ProbeKind.ICMP, "198.51.100.11")
    monkeypatch.setattr(
        probes, "probe_batch", _fake_batch(lambda s, src: _result(s, Outcome.REACHABLE, src.label))
    )
    report = probe_matrix([MatrixCase(A, spec, Outcome.REACHABLE)], settle=60)
    assert report.ok and report.rounds == 1


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(REPO / "scripts" / "probe"), *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_cli_rejects_a_bad_target_with_exit_2_and_names_it():
    done = _cli("tcp", "not-an-ip", "--port", "80")
    assert done.returncode == 2 and "'not-an-ip'" in done.stderr


def test_cli_rejects_an_unknown_netns_with_exit_2_and_names_it():
    done = _cli("--netns", "cnie2e-no-such-ns", "icmp", "198.51.100.1")
    assert done.returncode == 2 and "'cnie2e-no-such-ns' does not exist" in done.stderr


def test_cli_netns_and_pid_are_exclusive():
    done = _cli("--netns", "x", "--pid", "1", "icmp", "198.51.100.1")
    assert done.returncode == 2 and "not allowed with" in done.stderr


def test_plugin_prints_matrix_diffs_in_the_terminal_summary_under_xdist(tmp_path):
    """Runs pytest in a subprocess (-n 2) with only the dataplane plugin; the test feeds the
    prober fixture's report hook a made-up report instead of probing a network."""
    (tmp_path / "test_m.py").write_text(
        textwrap.dedent("""
        from fixtures.netns import Netns
        from fixtures.probes import (MatrixCase, MatrixCell, MatrixReport, Outcome,
                                     ProbeKind, ProbeResult, ProbeSpec)

        def test_records(prober):
            spec = ProbeSpec(ProbeKind.TCP, "198.51.100.11", port=8080)
            seen = ProbeResult(spec.kind, spec.target, spec.port, "cl", Outcome.FILTERED)
            prober.on_report(MatrixReport((MatrixCell(
                MatrixCase(Netns(None, "cl"), spec, Outcome.REACHABLE), seen),)))
    """)
    )
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-p",
            "fixtures.plugins.dataplane",
            "-n",
            "2",
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
    summary = done.stdout.split("reachability matrix diffs", 1)[1]
    assert "test_m.py::test_records" in summary
    assert "!! reachable->filtered" in summary


def test_prober_owner_picks_arp_or_ndp_by_family(monkeypatch):
    """Replaces run_probe (the network) to see which probe the prober asks for."""
    asked: list[ProbeKind] = []

    def fake_run_probe(spec: ProbeSpec, source: Netns | None) -> ProbeResult:
        asked.append(spec.kind)
        return _result(spec, Outcome.REACHABLE, macs=("02:00:5e:00:00:0b",))

    monkeypatch.setattr(probes, "run_probe", fake_run_probe)
    prober = probes.Prober(timeout=0.2)
    prober.owner("198.51.100.200")
    prober.owner("2001:db8:51::200")
    assert asked == [ProbeKind.ARP, ProbeKind.NDP]


def test_prober_expect_matrix_reports_then_raises(monkeypatch):
    """Replaces probe_batch (the network) with one that never gets an answer."""
    monkeypatch.setattr(
        probes, "probe_batch", _fake_batch(lambda s, src: _result(s, Outcome.FILTERED, src.label))
    )
    seen: list[MatrixReport] = []
    spec = ProbeSpec(ProbeKind.ICMP, "198.51.100.11")
    prober = probes.Prober(on_report=seen.append)
    with pytest.raises(MatrixMismatch, match="1 of 1 pairs differ"):
        prober.expect_matrix([MatrixCase(A, spec, Outcome.REACHABLE)], retries=0, settle=0)
    assert len(seen) == 1 and not seen[0].ok
