"""Long steps say they are alive, and a failing step names itself and its log."""

from __future__ import annotations

import logging
import sys

import pytest

from fixtures.progress import StepError, run_logged


def test_a_long_step_logs_a_heartbeat_with_its_last_output_line(tmp_path, caplog):
    script = "import time\nprint('phase one', flush=True)\ntime.sleep(0.5)\n"
    with caplog.at_level(logging.INFO, logger="cni_e2e.progress"):
        run_logged(
            [sys.executable, "-c", script], "building x", tmp_path / "x.log", heartbeat_seconds=0.1
        )
    beats = [r.getMessage() for r in caplog.records if "still running" in r.getMessage()]
    assert beats and "building x" in beats[0] and "phase one" in beats[-1]
    assert "phase one" in (tmp_path / "x.log").read_text()


def test_a_failing_step_names_the_step_the_command_and_the_log(tmp_path):
    with pytest.raises(StepError, match=r"building y: .* failed \(exit 3\); full log .*y\.log"):
        run_logged(
            [sys.executable, "-c", "import sys; print('boom'); sys.exit(3)"],
            "building y",
            tmp_path / "y.log",
        )


def test_a_step_over_its_time_limit_is_stopped(tmp_path):
    with pytest.raises(StepError, match="did not finish within 0s"):
        run_logged(
            [sys.executable, "-c", "import time; time.sleep(5)"],
            "slow",
            tmp_path / "z.log",
            timeout=0.3,
        )
