"""Session-cluster decisions that need no Docker engine, as real pytest sessions (pytester).

What a real cluster does (one create under xdist, reuse, keep, --kubeconfig, gates,
failed creates, side-loading) is proven on real kind clusters in test_kind_lifecycle.py.
These cover the paths before any cluster exists: nothing is replaced, kind is simply
absent from PATH.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
pytest_plugins = ["pytester"]

INNER_E2E = """
def test_needs_the_session_cluster(cluster):
    assert cluster.name
"""

INNER_HARNESS = """
from fixtures.profiles import load_profile

def test_harness_test_runs_without_a_cluster():
    assert load_profile("antrea-encap").cni == "antrea"
"""


@pytest.fixture
def suite(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch):
    """A small suite (e2e/ + tests/) wired to the plugin, with no kind on PATH."""
    pytester.makeconftest('pytest_plugins = ["fixtures.plugins"]\n')
    pytester.makeini("[pytest]\n")
    (pytester.path / "e2e").mkdir()
    (pytester.path / "e2e" / "test_shared.py").write_text(INNER_E2E)
    (pytester.path / "tests").mkdir()
    (pytester.path / "tests" / "test_harness.py").write_text(INNER_HARNESS)
    monkeypatch.setenv("PATH", os.pathsep.join(["/usr/bin", "/bin"]))
    monkeypatch.setenv("PYTHONPATH", str(REPO))

    class Suite:
        def run(self, *args: str) -> pytest.RunResult:
            return pytester.runpytest_subprocess("-p", "no:cacheprovider", *args, timeout=240)

    return Suite()


def test_provider_kind_without_kind_fails_the_run_with_one_reason(suite):
    result = suite.run("--provider", "kind", "e2e")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--provider kind: kind is not on PATH; install it with *"])


def test_no_cluster_is_wanted_when_only_harness_tests_run(suite):
    # --provider kind with no kind: it would fail at once if it tried to provision
    suite.run("--provider", "kind", "tests").assert_outcomes(passed=1)


def test_unknown_profile_is_a_usage_error(suite):
    result = suite.run("--profile", "antrea-typo", "e2e")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--profile: unknown profile 'antrea-typo'; known profiles: *"])


def test_unknown_address_plan_is_a_usage_error(suite):
    result = suite.run("--address-plan", "lan", "e2e")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert "invalid choice: 'lan'" in result.stderr.str()


@pytest.mark.parametrize(
    "args", [["--collect-only", "-q"], ["--markers"], ["--fixtures"], ["--help"]]
)
def test_collecting_and_listing_never_provision(suite, args):
    """--provider kind with no kind would fail at once if any of these tried to provision."""
    result = suite.run("--provider", "kind", *args, "e2e")
    assert result.ret == 0, result.stdout.str()[-2000:] + result.stderr.str()[-2000:]


def test_without_xdist_there_is_no_internal_error(suite):
    result = suite.run("-p", "no:xdist", "tests")
    result.assert_outcomes(passed=1)
    assert "INTERNALERROR" not in result.stdout.str() + result.stderr.str()


def test_an_external_kubeconfig_names_the_session_after_its_cluster(tmp_path):
    from fixtures.plugins.cluster import kubeconfig_cluster_name

    kc = tmp_path / "kc"
    kc.write_text(
        "apiVersion: v1\nkind: Config\ncurrent-context: kind-blue\n"
        "contexts:\n- name: kind-blue\n  context: {cluster: kind-blue, user: kind-blue}\n"
    )
    assert kubeconfig_cluster_name(kc) == "blue"
    kc.write_text("not: [valid")
    assert kubeconfig_cluster_name(kc) is None
