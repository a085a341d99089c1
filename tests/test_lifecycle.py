"""Session-cluster lifecycle under pytest-xdist, run as real pytest sessions (pytester).

Every test here replaces `kind`, `docker`, `kubectl` and `helm` with recording
executables at the process boundary (tests/recording_tools.py): kind cannot
run on machines without a Docker engine. The plugin, profiles, rendering,
pytest-kind's KindCluster and xdist all run for real.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests import recording_tools as rec

REPO = Path(__file__).resolve().parent.parent
pytest_plugins = ["pytester"]

INNER_E2E = """
import json, os
import pytest

@pytest.mark.parametrize("i", range(6))
def test_sees_the_session_cluster(cluster, i):
    with open(os.environ["CNI_E2E_SEEN"], "a") as f:
        f.write(json.dumps({"name": cluster.name, "kubeconfig": str(cluster.kubeconfig),
                            "worker": os.environ.get("PYTEST_XDIST_WORKER", "main")}) + "\\n")
    assert "kind: Config" in cluster.kubeconfig.read_text()
"""

INNER_HARNESS = """
from fixtures.profiles import load_profile

def test_harness_test_runs_without_a_cluster():
    assert load_profile("antrea-encap").cni == "antrea"
"""


@pytest.fixture
def suite(pytester: pytest.Pytester, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A small suite (e2e/ + tests/) wired to the plugin, with recording tools on PATH."""
    pytester.makeconftest('pytest_plugins = ["fixtures.plugins"]\n')
    pytester.makeini("[pytest]\n")
    (pytester.path / "e2e").mkdir()
    (pytester.path / "e2e" / "test_shared.py").write_text(INNER_E2E)
    (pytester.path / "tests").mkdir()
    (pytester.path / "tests" / "test_harness.py").write_text(INNER_HARNESS)
    bin_dir, state = tmp_path / "bin", tmp_path / "state"
    rec.install(bin_dir, state)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}/usr/bin{os.pathsep}/bin")
    monkeypatch.setenv("PYTHONPATH", str(REPO))
    monkeypatch.setenv("CNI_E2E_SEEN", str(tmp_path / "seen.jsonl"))
    monkeypatch.delenv("CNI_E2E_FAKE_KIND_FAIL", raising=False)
    monkeypatch.delenv("CNI_E2E_FAKE_DOCKER_DOWN", raising=False)
    monkeypatch.delenv("CNI_E2E_FAKE_KUBECTL_FAIL", raising=False)

    class Suite:
        def __init__(self) -> None:
            self.bin_dir, self.state, self.seen = bin_dir, state, tmp_path / "seen.jsonl"

        def run(self, *args: str) -> pytest.RunResult:
            return pytester.runpytest_subprocess(
                "-p", "no:cacheprovider", "--provider", "kind", *args, timeout=240
            )

        def kind(self, *prefix: str) -> list[list[str]]:
            return [a for a in rec.calls(state, "kind") if a[: len(prefix)] == list(prefix)]

        def seen_rows(self) -> list[dict[str, str]]:
            if not self.seen.exists():
                return []
            return [json.loads(x) for x in self.seen.read_text().splitlines()]

    return Suite()


def test_xdist_creates_once_and_deletes_once(suite):
    result = suite.run("-n", "3", "e2e", "tests")
    result.assert_outcomes(passed=7)
    assert len(suite.kind("create", "cluster")) == 1
    assert len(suite.kind("delete", "cluster")) == 1
    rows = suite.seen_rows()
    assert len(rows) == 6
    assert len({r["worker"] for r in rows}) > 1, "the tests should have spread over workers"
    assert {r["name"] for r in rows} == {"cni-e2e-antrea-encap"}
    assert len({r["kubeconfig"] for r in rows}) == 1
    assert rec.existing_clusters(suite.state) == []


def test_creation_uses_the_rendered_profile_config_and_installs_the_cni(suite):
    suite.run("-n", "2", "e2e").assert_outcomes(passed=6)
    (create,) = suite.kind("create", "cluster")
    assert "--name=cni-e2e-antrea-encap" in create
    config = (suite.state / "config-cni-e2e-antrea-encap.yaml").read_text()
    assert "kind: Cluster" in config and "disableDefaultCNI: true" in config
    helm = rec.calls(suite.state, "helm")
    assert len(helm) == 1 and "trafficEncapMode=encap" in helm[0]
    kubectl = rec.calls(suite.state, "kubectl")
    assert any("apply" in a and a[-1].endswith("antrea.yml") for a in kubectl)
    assert any(a[2:5] == ["wait", "--for=condition=Ready", "nodes"] for a in kubectl)
    assert any("rollout" in a and "daemonset/antrea-agent" in a for a in kubectl)


def test_single_process_run_behaves_the_same(suite):
    suite.run("-n", "0", "e2e").assert_outcomes(passed=6)
    assert len(suite.kind("create", "cluster")) == 1
    assert len(suite.kind("delete", "cluster")) == 1


def test_keep_cluster_skips_the_delete(suite):
    result = suite.run("-n", "2", "--keep-cluster", "e2e")
    result.assert_outcomes(passed=6)
    assert len(suite.kind("create", "cluster")) == 1
    assert suite.kind("delete", "cluster") == []
    assert rec.existing_clusters(suite.state) == ["cni-e2e-antrea-encap"]
    result.stdout.fnmatch_lines(["*--keep-cluster: keeping cni-e2e-antrea-encap*"])


def test_existing_cluster_is_reused_with_a_fresh_kubeconfig(suite):
    rec.preexisting(suite.state, ["cni-e2e-antrea-encap"])
    suite.run("-n", "2", "e2e").assert_outcomes(passed=6)
    assert suite.kind("create", "cluster") == []
    exports = suite.kind("export", "kubeconfig")
    assert exports and "cni-e2e-antrea-encap" in exports[0]
    # it existed before the session, so the session leaves it alone
    assert suite.kind("delete", "cluster") == []
    assert rec.calls(suite.state, "helm") == []


def test_kubeconfig_option_uses_that_cluster_and_never_creates_or_deletes(suite, tmp_path):
    kubeconfig = tmp_path / "shared.kubeconfig"
    kubeconfig.write_text("apiVersion: v1\nkind: Config\n")
    suite.run("-n", "2", "--kubeconfig", str(kubeconfig), "e2e").assert_outcomes(passed=6)
    assert suite.kind("create") == [] and suite.kind("delete") == []
    assert {r["kubeconfig"] for r in suite.seen_rows()} == {str(kubeconfig)}


def test_missing_kind_skips_e2e_with_a_reason_and_harness_tests_still_run(suite):
    (suite.bin_dir / "kind").unlink()
    result = suite.run("-n", "2", "-rs", "e2e", "tests")
    result.assert_outcomes(passed=1, skipped=6)
    result.stdout.fnmatch_lines(
        ["*kind is not on PATH; install it with go install sigs.k8s.io/kind@*"]
    )
    assert "error" not in result.stdout.str().lower().split("short test summary")[-1]


def test_no_docker_engine_skips_with_a_reason(suite, monkeypatch):
    monkeypatch.setenv("CNI_E2E_FAKE_DOCKER_DOWN", "1")
    result = suite.run("-n", "2", "-rs", "e2e")
    result.assert_outcomes(skipped=6)
    result.stdout.fnmatch_lines(["*no Docker engine: `docker info` failed (Cannot connect*"])
    assert suite.kind("create") == []


def test_failed_creation_is_one_clear_error(suite, monkeypatch):
    monkeypatch.setenv("CNI_E2E_FAKE_KIND_FAIL", "create")
    result = suite.run("-n", "2", "e2e")
    assert result.ret == 3
    result.stdout.fnmatch_lines(
        [
            "*provisioning profile antrea-encap failed: kind could not create cluster "
            "cni-e2e-antrea-encap (exit 1)*"
        ]
    )
    assert "INTERNALERROR" not in result.stdout.str() + result.stderr.str()
    assert rec.existing_clusters(suite.state) == []


def test_images_are_side_loaded_into_the_cluster(suite):
    suite.run(
        "-n",
        "0",
        "--load-image",
        "antrea/antrea-agent-ubuntu:latest",
        "--load-image",
        "antrea/antrea-controller-ubuntu:latest",
        "e2e",
    ).assert_outcomes(passed=6)
    loads = suite.kind("load", "docker-image")
    assert [a[-1] for a in loads] == [
        "antrea/antrea-agent-ubuntu:latest",
        "antrea/antrea-controller-ubuntu:latest",
    ]
    assert all("cni-e2e-antrea-encap" in a for a in loads)


def test_no_cluster_is_created_when_only_harness_tests_run(suite):
    suite.run("-n", "2", "tests").assert_outcomes(passed=1)
    assert rec.calls(suite.state) == []


def test_unknown_profile_is_a_usage_error(suite):
    result = suite.run("-n", "0", "--profile", "antrea-typo", "e2e")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--profile: unknown profile 'antrea-typo'; known profiles: *"])


def test_teardown_removes_the_session_workdir_with_its_kubeconfig(suite, pytester):
    suite.run("-n", "2", "e2e").assert_outcomes(passed=6)
    workdir = pytester.path / ".pytest-kind" / "cni-e2e-antrea-encap"
    assert not workdir.exists(), "kubeconfig of a deleted cluster left behind"


def test_kept_cluster_keeps_its_kubeconfig(suite, pytester):
    suite.run("-n", "0", "--keep-cluster", "e2e").assert_outcomes(passed=6)
    kubeconfig = pytester.path / ".pytest-kind/cni-e2e-antrea-encap/cni-e2e-antrea-encap.kubeconfig"
    assert "kind: Config" in kubeconfig.read_text()


def test_a_failing_readiness_gate_is_named_and_shows_the_object(suite, monkeypatch):
    monkeypatch.setenv("CNI_E2E_FAKE_KUBECTL_FAIL", "rollout")
    result = suite.run("-n", "2", "--gate-timeout", "5", "e2e")
    assert result.ret == 3
    out = result.stdout.str()
    assert "readiness gate 'rollout deployment/antrea-controller' failed for cluster" in out
    assert "within 5s" in out
    assert "numberUnavailable: 2" in out, "the object that did not get ready is shown"
    # the half-made cluster is not leaked
    assert rec.existing_clusters(suite.state) == []
    assert len(suite.kind("delete", "cluster")) == 1


def test_summary_names_profile_and_cluster_and_says_it_was_deleted(suite):
    result = suite.run("-n", "2", "e2e")
    result.stdout.fnmatch_lines(
        [
            "*cni-e2e session*",
            "profile: antrea-encap  provider: kind",
            "cluster: cni-e2e-antrea-encap  deleted at the end of the session",
        ]
    )
