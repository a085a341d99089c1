"""pytest-kind's own fixture is not live in our runs, and a session without xdist is clean.

Each case is a real pytest session (pytester subprocess) configured by this repository's
own pyproject.toml (copied in), so its addopts are the ones scripts/test and scripts/e2e
run with. The session cases provision a real offline control plane (kwok provider).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
pytest_plugins = ["pytester"]

INNER = """
def test_asks_for_pytest_kinds_fixture(kind_cluster):
    pass

def test_uses_the_session_cluster(cluster):
    assert cluster.provider == "kwok"
"""


def _suite(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    shutil.copy(REPO / "pyproject.toml", pytester.path / "pyproject.toml")
    pytester.makeconftest('pytest_plugins = ["fixtures.plugins"]\n')
    (pytester.path / "tests").mkdir()
    (pytester.path / "tests" / "test_inner.py").write_text(INNER)
    monkeypatch.setenv("PYTHONPATH", str(REPO))
    return pytester


def test_kind_cluster_is_not_a_fixture_and_pytest_kinds_options_still_are(pytester, monkeypatch):
    suite = _suite(pytester, monkeypatch)
    listed = suite.runpytest_subprocess("-p", "no:cacheprovider", "--fixtures", "tests")
    assert listed.ret == 0, listed.stderr.str()
    out = listed.stdout.str()
    assert "kind_cluster [session scope]" not in out
    assert "fixtures defined from pytest_kind" not in out
    [plugins] = [line for line in out.splitlines() if line.startswith("plugins:")]
    assert "kind" not in plugins, plugins
    helped = suite.runpytest_subprocess("--help")
    for flag in ("--cluster-name", "--keep-cluster", "--kubeconfig", "--kind-image",
                 "--kind-bin", "--kind-kubectl-bin"):  # fmt: skip
        assert flag in helped.stdout.str()


@pytest.mark.parametrize("flag", ["--kubeconfig", "--kind-bin"])
def test_a_path_given_to_a_pytest_kind_option_is_not_taken_for_a_test_path(
    pytester, monkeypatch, tmp_path, flag
):
    """The options are known before any conftest loads (an entry point registers them)."""
    suite = _suite(pytester, monkeypatch)
    elsewhere = tmp_path / "elsewhere" / "file"
    elsewhere.parent.mkdir()
    elsewhere.write_text("")
    result = suite.runpytest_subprocess(
        "-p", "no:cacheprovider", "--collect-only", "-q", flag, str(elsewhere)
    )
    assert result.ret == 0, result.stdout.str()[-2000:] + result.stderr.str()[-2000:]
    result.stdout.fnmatch_lines(["*tests/test_inner.py::test_uses_the_session_cluster"])


@pytest.fixture(scope="module")
def kwok_session(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, SessionRun]:
    """One session that provisions a kwok cluster with -p no:xdist; the tests below read it."""
    from fixtures.providers.kwok import KwokProvider

    why = KwokProvider().missing()
    if why:
        pytest.skip(why)
    path = tmp_path_factory.mktemp("kwok-session")
    shutil.copy(REPO / "pyproject.toml", path / "pyproject.toml")
    (path / "conftest.py").write_text('pytest_plugins = ["fixtures.plugins"]\n')
    (path / "tests").mkdir()
    (path / "tests" / "test_inner.py").write_text(INNER)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "CNI_E2E_"))}
    env["PYTHONPATH"] = str(REPO)
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-p", "no:xdist",
         "--provider", "kwok", "--provision", "always", "tests"],
        cwd=path, env=env, capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    return path, SessionRun(proc.returncode, proc.stdout, proc.stderr)


@dataclass(frozen=True)
class SessionRun:
    returncode: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return self.stdout + self.stderr

    def cluster(self) -> str:
        found = re.search(r"cluster: (\S+)  deleted at the end of the session", self.stdout)
        assert found, f"the session did not report a deleted cluster:\n{self.output[-3000:]}"
        return found.group(1)


def test_without_xdist_a_session_that_provisioned_has_no_internal_error(kwok_session):
    _, run = kwok_session
    assert "INTERNALERROR" not in run.output
    assert re.search(r"\b1 passed, 1 error\b", run.stdout), run.output[-3000:]


def test_the_session_deleted_the_cluster_it_provisioned(kwok_session):
    from fixtures.providers.kwok import KwokProvider

    _, run = kwok_session
    assert not KwokProvider().exists(run.cluster())


def test_a_test_asking_for_kind_cluster_errors_with_fixture_not_found(kwok_session):
    _, run = kwok_session
    assert "ERROR at setup of test_asks_for_pytest_kinds_fixture" in run.stdout
    assert "fixture 'kind_cluster' not found" in run.stdout


def test_a_session_leaves_no_cluster_directory_under_dot_pytest_kind(kwok_session):
    path, run = kwok_session
    run.cluster()  # it did provision
    left = sorted(p.name for p in (path / ".pytest-kind").glob("*"))
    assert left == [], f".pytest-kind/ still holds {left}"


def test_a_session_leaves_no_dot_pytest_kind_directory_at_all(kwok_session):
    path, run = kwok_session
    run.cluster()
    assert not (path / ".pytest-kind").exists()
