"""The GitHub workflows are valid (schema, actionlint) and wired to the generated matrix."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from fixtures.toolchain import PINS, find_tool

REPO = Path(__file__).resolve().parent.parent
WORKFLOWS = REPO / ".github" / "workflows"
FILES = sorted(WORKFLOWS.glob("*.yml"))
ACTIONLINT_HINT = (
    'GOBIN="$(scripts/install-control-plane --print-bin-dir)" '
    "go install github.com/rhysd/actionlint/cmd/actionlint@v1.7.12"
)

BROKEN_FOR_SCHEMA = """
name: broken
on: push
jobs:
  build:
    runs-on: ubuntu-24.04
    stepz:
      - run: echo typo in the steps key
"""

BROKEN_FOR_ACTIONLINT = """
name: broken
on: push
jobs:
  build:
    runs-on: ubuntu-24.04
    steps:
      - run: echo "${{ matrix.profile }}"
      - uses: actions/checkout@v5
        with:
          no-such-input: true
"""


def _load(name: str) -> dict[str, Any]:
    doc = yaml.safe_load((WORKFLOWS / name).read_text())
    doc["on"] = doc.pop(True, doc.get("on"))  # YAML 1.1 reads the key `on` as true
    return doc


def _check_jsonschema(*files: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "check_jsonschema",
            "--builtin-schema",
            "vendor.github-workflows",
            *map(str, files),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _actionlint() -> str:
    found = shutil.which("actionlint") or find_tool("actionlint")
    if found is None:
        pytest.skip(f"actionlint is not installed; {ACTIONLINT_HINT}")
    return str(found)


def test_both_workflows_exist():
    assert {f.name for f in FILES} >= {"e2e.yml", "harness.yml"}


def test_workflows_match_the_github_workflow_schema():
    proc = _check_jsonschema(*FILES)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_schema_check_rejects_a_malformed_workflow(tmp_path):
    broken = tmp_path / "broken.yml"
    broken.write_text(BROKEN_FOR_SCHEMA)
    proc = _check_jsonschema(broken)
    assert proc.returncode != 0 and "stepz" in proc.stdout + proc.stderr


def test_workflows_pass_actionlint():
    proc = subprocess.run(
        [_actionlint(), "-no-color", *map(str, FILES)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=REPO,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_actionlint_rejects_undefined_matrix_and_unknown_inputs(tmp_path):
    broken = tmp_path / "broken.yml"
    broken.write_text(BROKEN_FOR_ACTIONLINT)
    proc = subprocess.run(
        [_actionlint(), "-no-color", str(broken)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 1
    assert "matrix" in proc.stdout and "no-such-input" in proc.stdout


def test_e2e_jobs_come_from_the_generated_matrix():
    wf = _load("e2e.yml")
    generate = " ".join(s.get("run", "") for s in wf["jobs"]["matrix"]["steps"])
    assert "scripts/ci-matrix" in generate and '"$GITHUB_OUTPUT"' in generate
    e2e = wf["jobs"]["e2e"]
    assert e2e["strategy"]["matrix"] == "${{ fromJSON(needs.matrix.outputs.matrix) }}"
    assert e2e["strategy"]["fail-fast"] is False
    run = next(s["run"] for s in e2e["steps"] if s.get("name") == "Run the e2e scenarios")
    assert "scripts/e2e" in run and '-m "$MARKERS"' in run and "--junitxml=" in run
    step_env = next(s["env"] for s in e2e["steps"] if s.get("name") == "Run the e2e scenarios")
    assert step_env == {"PROFILE": "${{ matrix.profile }}", "MARKERS": "${{ matrix.markers }}"}


def test_e2e_tool_versions_are_not_hard_coded():
    """Versions reach the job from scripts/ci-matrix --tools (fixtures/toolchain.py) only."""
    text = (WORKFLOWS / "e2e.yml").read_text()
    for version in {PINS.kind, PINS.kubectl, PINS.helm, PINS.subctl}:
        assert version not in text
    env = _load("e2e.yml")["jobs"]["e2e"]["env"]
    for tool in ("kind", "kubectl", "helm", "subctl"):
        expected = "${{ fromJSON(needs.matrix.outputs.tools)." + tool + " }}"
        assert env[f"{tool.upper()}_VERSION"] == expected


def test_diagnostics_are_uploaded_only_on_failure():
    for name, job in (("e2e.yml", "e2e"), ("harness.yml", "test")):
        steps = _load(name)["jobs"][job]["steps"]
        upload = next(s for s in steps if s.get("name") == "Upload diagnostics")
        assert upload["if"] == "failure()" and upload["uses"].startswith("actions/upload-artifact@")


def test_harness_workflow_runs_the_readme_test_command():
    readme = (REPO / "README.md").read_text()
    command = "scripts/test"
    assert re.search(rf"^{re.escape(command)}\b", readme, re.MULTILINE), "README's command moved"
    runs = [s.get("run", "") for s in _load("harness.yml")["jobs"]["test"]["steps"]]
    # as root (sudo with its options first): the data-plane tests need network namespaces
    as_root = re.compile(rf"^(sudo(\s+-\S+)*\s+)?{re.escape(command)}\b")
    assert any(as_root.match(r) for r in runs), runs


def test_harness_workflow_installs_the_actionlint_the_tests_name():
    version = ACTIONLINT_HINT.rsplit("@", 1)[1]
    assert _load("harness.yml")["env"]["ACTIONLINT_VERSION"] == version
