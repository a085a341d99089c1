"""Many processes allocating and releasing at once never hold overlapping ranges (FileStore).

Four spawned processes each run 250 allocate/release cycles on one small
pool with mixed prefixes and no quarantine (maximum reuse). While a process
holds a range it owns one witness directory per /29 block of it; an overlap
with any other holder would make a mkdir fail. The LeaseStore runs the same
churn in test_ranges_lease.py.
"""

from __future__ import annotations

from tests.ranges_support import (
    STRESS_CYCLES,
    STRESS_POOL,
    STRESS_PREFIXES,
    STRESS_PROCESSES,
    assert_clean_churn,
    run_churn,
)


def test_four_processes_churning_one_pool_never_overlap(tmp_path):
    witness = tmp_path / "witness"
    witness.mkdir()
    reports = run_churn(
        STRESS_PROCESSES,
        {"state_dir": tmp_path / "state"},
        STRESS_POOL,
        STRESS_CYCLES,
        STRESS_PREFIXES,
        witness,
        unit=29,
    )
    assert_clean_churn(reports)
    assert list(witness.iterdir()) == []
