"""The CI matrix comes from clusters/: every profile is a job, with markers that suit it."""

from __future__ import annotations

import configparser
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from fixtures.cli.ci_matrix import build_matrix, marker_expression, tool_versions, tox_sections
from fixtures.profiles import ProfileError, load_profile, profile_names
from fixtures.toolchain import PINS

REPO = Path(__file__).resolve().parent.parent
pytest_plugins = ["pytester"]


def _registered_markers() -> list[str]:
    from fixtures.markers import marker_lines

    return marker_lines()


def _script(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(REPO / "scripts" / "ci-matrix"), *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_matrix_has_exactly_one_job_per_profile():
    proc = _script()
    assert proc.returncode == 0, proc.stderr
    include = json.loads(proc.stdout)["include"]
    assert [e["profile"] for e in include] == profile_names()
    assert all(e["markers"] and e["cni"] for e in include)


def test_matrix_entries_name_the_tools_their_install_plan_runs():
    by_profile = {e.profile: e for e in build_matrix()}
    assert "helm" in by_profile["antrea-encap"].tools
    assert "subctl" in by_profile["submariner-globalnet"].tools
    assert by_profile["submariner-globalnet"].clusters == 2
    assert "helm" not in by_profile["kubeovn-vpc-nat-gw"].tools


def test_tool_versions_are_the_toolchain_pins():
    proc = _script("--tools")
    assert (
        json.loads(proc.stdout)
        == tool_versions()
        == {
            "kind": PINS.kind,
            "kubectl": PINS.kubectl,
            "helm": PINS.helm,
            "subctl": PINS.subctl,
        }
    )


def test_github_output_carries_matrix_and_tools(tmp_path):
    out = tmp_path / "github_output"
    proc = _script("--profiles", "antrea-encap,antrea-ipv6", "--github-output", str(out))
    assert proc.returncode == 0, proc.stderr
    lines = dict(line.split("=", 1) for line in out.read_text().splitlines())
    assert [e["profile"] for e in json.loads(lines["matrix"])["include"]] == [
        "antrea-encap",
        "antrea-ipv6",
    ]
    assert json.loads(lines["tools"])["kind"] == PINS.kind


def test_unknown_profile_is_rejected_naming_the_known_ones():
    proc = _script("--profiles", "antrea-bogus")
    assert proc.returncode == 2
    assert "antrea-bogus" in proc.stderr and "antrea-encap" in proc.stderr


def test_profile_without_markers_is_an_error(tmp_path):
    src = yaml.safe_load((REPO / "clusters" / "antrea-encap.yaml").read_text())
    src.pop("markers")
    (tmp_path / "bare.yaml").write_text(yaml.safe_dump(src))
    with pytest.raises(ProfileError, match="bare declares no markers"):
        build_matrix(directory=tmp_path)


def test_every_profile_marker_is_registered_with_pytest():
    """--strict-markers would reject a scenario using an unregistered name; -m would not."""
    registered = {m.split(":")[0].split("(")[0] for m in _registered_markers()}
    for name in profile_names():
        unknown = set(load_profile(name).markers) - registered
        assert not unknown, f"clusters/{name}.yaml uses unregistered markers {unknown}"


SCENARIOS = """
import pytest

@pytest.mark.antrea
@pytest.mark.egress
@pytest.mark.dataplane
def test_antrea_egress(): pass

@pytest.mark.antrea
@pytest.mark.dsr
@pytest.mark.service_external_ip
def test_antrea_dsr(): pass

@pytest.mark.antrea
@pytest.mark.externalippool
@pytest.mark.controlplane
def test_antrea_pool_webhook(): pass

@pytest.mark.kubeovn
@pytest.mark.dataplane
def test_kubeovn_fip(): pass

@pytest.mark.submariner
@pytest.mark.dataplane
def test_submariner_giip(): pass

def test_unmarked(): pass
"""


def _selected(pytester: pytest.Pytester, expression: str) -> set[str]:
    result = pytester.runpytest("-p", "no:cacheprovider", "--collect-only", "-q", "-m", expression)
    return {line.split("::")[1] for line in result.outlines if "::" in line}


@pytest.mark.parametrize(
    ("profile", "expected"),
    [
        ("antrea-encap", {"test_antrea_egress", "test_antrea_pool_webhook"}),
        (
            "antrea-encap-non-default",
            {"test_antrea_egress", "test_antrea_dsr", "test_antrea_pool_webhook"},
        ),
        ("antrea-ipv6", {"test_antrea_egress", "test_antrea_pool_webhook"}),
        ("kubeovn-vpc-nat-gw", {"test_kubeovn_fip"}),
        ("submariner-globalnet", {"test_submariner_giip"}),
    ],
)
def test_profile_expression_selects_only_scenarios_it_can_serve(pytester, profile, expected):
    """Real pytest -m selection: a scenario runs where all its markers are the profile's."""
    markers = "\n    ".join(_registered_markers())
    pytester.makeini(f"[pytest]\nmarkers =\n    {markers}\n")
    pytester.makepyfile(test_scenarios=SCENARIOS)
    entry = next(e for e in build_matrix() if e.profile == profile)
    assert _selected(pytester, entry.markers) == expected


def test_expression_without_foreign_markers_has_no_exclusion():
    profile = load_profile("antrea-encap")
    assert marker_expression(profile, frozenset(profile.markers)) == (
        "(" + " or ".join(sorted(profile.markers)) + ")"
    )


def test_tox_has_an_e2e_env_per_profile_with_the_matrix_markers():
    """tox.ini's e2e-<profile> sections are `scripts/ci-matrix --tox` output, not drifted copies."""
    text = (REPO / "tox.ini").read_text()
    assert tox_sections(build_matrix()) in text, "regenerate them with scripts/ci-matrix --tox"
    ini = configparser.ConfigParser(interpolation=None)
    ini.read_string(text)
    envs = {s.removeprefix("testenv:e2e-") for s in ini.sections() if s.startswith("testenv:e2e-")}
    assert envs == set(profile_names())
    for entry in build_matrix():
        command = ini[f"testenv:e2e-{entry.profile}"]["commands"]
        assert f"--profile {entry.profile}" in command and f'-m "{entry.markers}"' in command
    for env in ("lint", "unit"):
        assert f"testenv:{env}" in ini.sections()
