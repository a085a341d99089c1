"""scripts/bench-ranges: runs and prints its table (a smoke test, not a timed one)."""

from __future__ import annotations

import argparse
import ipaddress
import json
import subprocess
import sys
from pathlib import Path

import pytest

from fixtures.cli.bench_ranges import HEADERS, Row, _Witness, main, report_of, table

REPO = Path(__file__).resolve().parent.parent


def test_the_file_store_rows_are_measured_and_tabulated(capsys):
    assert main(["--stores", "file", "--processes", "1,2", "--cycles", "5", "--repeat", "1",
                 "--pool", "198.18.0.0/24"]) == 0  # fmt: skip
    out = capsys.readouterr().out.split("\nbench-ranges:")[0].splitlines()
    assert out[0].split()[:3] == ["store", "procs", "cycles"]
    rows = [line.split() for line in out[2:]]
    assert [(r[0], r[1], r[2]) for r in rows] == [("file", "1", "5"), ("file", "2", "10")]
    rate = HEADERS.index("cycles/s")
    assert all(float(r[rate]) > 0 for r in rows)
    assert [r[rate + 1] for r in rows] == ["0", "0"]  # no overlaps
    # throughput as a ratio to the baseline row of the same invocation
    assert rows[0][-1] == "1.00x"
    assert float(rows[1][-1].rstrip("x")) == pytest.approx(
        float(rows[1][rate]) / float(rows[0][rate]), rel=0.05
    )


def test_percentiles_and_throughput_come_from_the_samples():
    row = Row("file", 2, 100, tuple(float(i) for i in range(1, 101)), (1.0,) * 100,
              (2.0,) * 100, seconds=4.0)  # fmt: skip
    cells = dict(zip(HEADERS, [*row.cells(), "1.00x"], strict=True))
    assert cells["p50 ms"] == "50.50" and cells["p99 ms"] == "99.01"
    assert cells["cycles/s"] == "25"
    assert len({len(line) for line in table([row]).splitlines()}) == 1


def test_the_lease_store_without_a_cluster_is_skipped_with_the_reason():
    proc = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "bench-ranges"), "--stores", "lease",
         "--processes", "1", "--cycles", "1"],
        capture_output=True, text=True, check=False, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 0
    assert "lease store skipped: pass --kubeconfig PATH or --kwok" in proc.stderr


def test_an_unknown_store_is_a_usage_error():
    with pytest.raises(SystemExit) as exc:
        main(["--stores", "file,redis"])
    assert exc.value.code == 2


def test_json_mode_prints_one_object_with_overlap_checks(capsys):
    assert main(["--stores", "file", "--processes", "2", "--cycles", "3",
                 "--pool", "198.18.0.0/24", "--json"]) == 0  # fmt: skip
    data = json.loads(capsys.readouterr().out)
    assert data["checks"] == {"overlaps (file, 2 processes)": 0} and data["checks_ok"] is True
    assert set(data) >= {"ratios", "goals", "met", "figures"}


def test_a_second_holder_of_any_part_of_a_range_is_counted_as_an_overlap(tmp_path):
    witness = _Witness(str(tmp_path))
    wide, inside = ipaddress.ip_network("198.18.0.0/28"), ipaddress.ip_network("198.18.0.4/30")
    assert witness.take(wide) == 0
    assert witness.take(inside) == 1  # one /30 of the /28 is held twice
    witness.drop(wide)
    assert witness.take(inside) == 0


def test_an_overlap_fails_the_report_and_the_goals_are_the_issues():
    def row(store: str, overlaps: int = 0) -> Row:
        return Row(store, 16, 10, (1.0,) * 10, (0.5,) * 10, (0.5,) * 10, 1.0, overlaps)

    args = argparse.Namespace(processes=[16], quick=False, baseline_rev="r0")
    good = report_of([row("lease"), row("lease-baseline")], args)
    assert good.checks_ok
    assert {k: str(g) for k, g in good.goals.items()} == {
        "lease_p99_ms_16_processes": "<= 25",
        "lease_throughput_vs_baseline_16_processes": ">= 5",
    }
    assert not report_of([row("lease", overlaps=1)], args).checks_ok
