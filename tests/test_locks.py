"""fixtures.locks: the one file lock (filelock), held across real processes."""

from __future__ import annotations

import logging
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from fixtures.locks import LockTimeout, exclusive

REPO = Path(__file__).resolve().parent.parent

# holds the lock until its stdin closes (or it is killed); says "held" once it has it
HOLDER = """
import sys
from fixtures.locks import exclusive
with exclusive(sys.argv[1], what="the test holder"):
    print("held", flush=True)
    sys.stdin.read()
"""


@pytest.fixture
def holder(tmp_path):
    """Start a process holding tmp_path/x.lock; the caller ends it (stdin close or kill)."""
    procs: list[subprocess.Popen[str]] = []

    def start(lock: Path) -> subprocess.Popen[str]:
        proc = subprocess.Popen(
            [sys.executable, "-c", HOLDER, str(lock)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=REPO,
        )
        procs.append(proc)
        assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
        return proc

    yield start
    for proc in procs:
        proc.kill()
        proc.wait(timeout=10)


def test_a_second_process_waits_says_what_for_and_gets_the_lock_once_released(
    tmp_path, holder, caplog
):
    lock = tmp_path / "x.lock"
    proc = holder(lock)
    got = threading.Event()

    def take() -> None:
        with exclusive(lock, what="building the widget", poll=0.01):
            got.set()

    caplog.set_level(logging.INFO, logger="cni_e2e.locks")
    waiter = threading.Thread(target=take)
    waiter.start()
    try:
        assert not got.wait(0.5), "the lock was taken while another process held it"
        assert proc.stdin is not None
        proc.stdin.close()  # the holder leaves its with block
        assert got.wait(30), "the lock was never handed over"
    finally:
        waiter.join(timeout=30)
    waits = [r.getMessage() for r in caplog.records if r.name == "cni_e2e.locks"]
    assert waits == [f"waiting for building the widget: another process holds {lock}"]


def test_a_timeout_names_the_step_and_the_lock_file(tmp_path, holder):
    lock = tmp_path / "x.lock"
    holder(lock)
    with pytest.raises(LockTimeout) as raised:
        with exclusive(lock, what="installing the control plane", timeout=0.2, poll=0.01):
            pytest.fail("acquired a lock another process holds")
    assert str(raised.value).startswith(f"installing the control plane: {lock} was still held")


def test_a_killed_holder_leaves_the_lock_free(tmp_path, holder):
    lock = tmp_path / "sub" / "x.lock"  # the parent directory is made on first use
    proc = holder(lock)
    proc.kill()
    proc.wait(timeout=10)
    with exclusive(lock, what="after a crash", timeout=5):
        pass


def test_an_uncontended_lock_says_nothing(tmp_path, caplog):
    caplog.set_level(logging.DEBUG, logger="cni_e2e.locks")
    with exclusive(tmp_path / "x.lock", what="alone"):
        pass
    assert [r for r in caplog.records if r.name == "cni_e2e.locks"] == []
