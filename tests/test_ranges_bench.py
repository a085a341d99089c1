"""scripts/bench-ranges: runs and prints its table (a smoke test, not a timed one)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from fixtures.cli.bench_ranges import HEADERS, Row, main, table

REPO = Path(__file__).resolve().parent.parent


def test_the_file_store_rows_are_measured_and_tabulated(capsys):
    assert main(["--stores", "file", "--processes", "1,2", "--cycles", "5",
                 "--pool", "198.18.0.0/24"]) == 0  # fmt: skip
    out = capsys.readouterr().out.splitlines()
    assert out[0].split()[:3] == ["store", "procs", "cycles"]
    rows = [line.split() for line in out[2:]]
    assert [(r[0], r[1], r[2]) for r in rows] == [("file", "1", "5"), ("file", "2", "10")]
    assert all(float(r[-2]) > 0 for r in rows)
    # throughput as a ratio to the baseline row of the same invocation
    assert rows[0][-1] == "1.00x"
    assert float(rows[1][-1].rstrip("x")) == pytest.approx(
        float(rows[1][-2]) / float(rows[0][-2]), rel=0.05
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
