"""The toolchain: pins, wrapper-module generation, and an installer that skips what is current."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from fixtures import toolchain
from fixtures.toolchain import (
    PINS,
    InstallReport,
    ToolchainError,
    find_tool,
    install_control_plane,
    kubernetes_ldflags,
    parse_go_mod,
    staging_version,
    wrapper_go_mod,
)

REPO = Path(__file__).resolve().parent.parent

KUBERNETES_GO_MOD = textwrap.dedent(
    """\
    // This is a generated file. Do not edit directly.
    module k8s.io/kubernetes

    go 1.25.0

    godebug default=go1.25

    require (
    \tk8s.io/api v0.0.0
    \tgithub.com/google/go-cmp v0.7.0
    )

    replace k8s.io/kms => ./staging/src/k8s.io/kms

    replace (
    \tk8s.io/api => ./staging/src/k8s.io/api
    \tk8s.io/client-go => ./staging/src/k8s.io/client-go // a comment
    \tgithub.com/example/fork => github.com/example/fork v1.2.3
    )
    """
)


def test_pins_are_exact_versions_and_kubectl_follows_kubernetes():
    for field in ("kind", "kwok", "kubernetes", "etcd", "helm", "subctl"):
        assert re.fullmatch(r"v\d+\.\d+\.\d+", getattr(PINS, field)), field
    assert PINS.kubectl == PINS.kubernetes


def test_parse_go_mod_keeps_go_directive_godebug_and_only_staging_replaces():
    parsed = parse_go_mod(KUBERNETES_GO_MOD)
    assert parsed.go == "1.25.0"
    assert parsed.godebug == ("default=go1.25",)
    assert parsed.staging == ("k8s.io/kms", "k8s.io/api", "k8s.io/client-go")


def test_parse_go_mod_without_go_directive_is_an_error():
    with pytest.raises(ToolchainError, match="no go directive"):
        parse_go_mod("module example.com/x\n")


def test_staging_modules_are_published_as_v0_minor_patch():
    assert staging_version("v1.35.4") == "v0.35.4"
    with pytest.raises(ToolchainError, match="not a v1.X.Y release"):
        staging_version("v1.35.4-rc.0")


def test_wrapper_go_mod_requires_upstream_and_replaces_each_staging_module():
    text = wrapper_go_mod(
        "cni-e2e.local/build/kubernetes",
        "k8s.io/kubernetes",
        "v1.35.4",
        parse_go_mod(KUBERNETES_GO_MOD),
        ["k8s.io/kubernetes/cmd/kube-apiserver"],
        "v0.35.4",
    )
    assert "go 1.25.0\n" in text
    assert "godebug default=go1.25\n" in text
    assert "require k8s.io/kubernetes v1.35.4\n" in text
    assert "tool k8s.io/kubernetes/cmd/kube-apiserver\n" in text
    for module in ("k8s.io/kms", "k8s.io/api", "k8s.io/client-go"):
        assert f"\t{module} => {module} v0.35.4\n" in text
    assert "./staging" not in text and "example/fork" not in text


def test_kubernetes_ldflags_stamp_the_version_kwokctl_reads_back():
    flags = kubernetes_ldflags("v1.35.4")
    assert "-X k8s.io/component-base/version.gitVersion=v1.35.4" in flags
    assert "-X k8s.io/component-base/version.gitMajor=1" in flags
    assert "-X k8s.io/component-base/version.gitMinor=35" in flags


def test_find_tool_returns_only_executables_in_the_cache_bin(tmp_path, monkeypatch):
    monkeypatch.setenv(toolchain.CACHE_ENV, str(tmp_path))
    assert toolchain.bin_dir() == tmp_path / "bin"
    assert find_tool("kwokctl") is None
    (tmp_path / "bin").mkdir()
    plain = tmp_path / "bin" / "kwokctl"
    plain.write_text("")
    assert find_tool("kwokctl") is None  # not executable
    plain.chmod(0o755)
    assert find_tool("kwokctl") == plain


# A stand-in for the go command: it records each call and produces the files a real go
# would (binaries in GOBIN or -o, go.sum on tidy), without compiling anything.
FAKE_GO = textwrap.dedent(
    """\
    #!{python}
    import json, os, sys
    from pathlib import Path
    args = sys.argv[1:]
    with open(os.environ["FAKE_GO_LOG"], "a") as fh:
        fh.write(json.dumps(args) + "\\n")
    if args[:2] == ["env", "GOVERSION"]:
        print("go1.26.8")
    elif args[:3] == ["mod", "download", "-json"]:
        module = args[3].split("@")[0]
        mod = "kubernetes.mod" if module == "k8s.io/kubernetes" else "other.mod"
        print(json.dumps({{"Path": module, "GoMod": str(Path(os.environ["FAKE_GO_MODS"], mod))}}))
    elif args[:2] == ["mod", "tidy"]:
        Path("go.sum").write_text("")
    elif args[0] == "install":
        for pkg in args[1:]:
            name = pkg.split("@")[0].rstrip("/").split("/")[-1]
            Path(os.environ["GOBIN"], name).write_text("#!/bin/sh\\n")
            Path(os.environ["GOBIN"], name).chmod(0o755)
    elif args[0] == "build":
        out = args[args.index("-o") + 1]
        for pkg in args[args.index("-o") + 2:]:
            dest = Path(out, pkg.split("/")[-1]) if out.endswith("/") else Path(out)
            dest.write_text("#!/bin/sh\\n")
            dest.chmod(0o755)
    """
)


@pytest.fixture
def fake_go(tmp_path, monkeypatch):
    go = tmp_path / "go"
    go.write_text(FAKE_GO.format(python=sys.executable))
    go.chmod(0o755)
    (tmp_path / "kubernetes.mod").write_text(KUBERNETES_GO_MOD)
    (tmp_path / "other.mod").write_text("module go.etcd.io/etcd/server/v3\n\ngo 1.24\n")
    log = tmp_path / "go-calls.jsonl"
    monkeypatch.setenv("FAKE_GO_LOG", str(log))
    monkeypatch.setenv("FAKE_GO_MODS", str(tmp_path))

    def calls() -> list[list[str]]:
        return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []

    return go, calls


def test_installer_builds_every_unit_then_skips_them_when_stamps_match(tmp_path, fake_go):
    """Replaces the go command with a recording stand-in (process boundary): no compiling."""
    go, calls = fake_go
    cache = tmp_path / "cache"
    first = install_control_plane(cache, go=str(go))
    assert isinstance(first, InstallReport)
    assert first.built == ("kind", "kwok", "etcd", "kubernetes")
    for tool in toolchain.ALL_TOOLS:
        assert find_tool(tool, cache) == cache / "bin" / tool
    argv = calls()
    assert ["install", f"sigs.k8s.io/kind@{PINS.kind}"] in argv
    assert [
        "install",
        f"sigs.k8s.io/kwok/cmd/kwok@{PINS.kwok}",
        f"sigs.k8s.io/kwok/cmd/kwokctl@{PINS.kwok}",
    ] in argv
    assert ["mod", "download", "-json", f"k8s.io/kubernetes@{PINS.kubernetes}"] in argv
    assert ["mod", "download", "-json", f"go.etcd.io/etcd/server/v3@{PINS.etcd}"] in argv
    wrapper = (cache / "src" / f"kubernetes-{PINS.kubernetes}" / "go.mod").read_text()
    assert f"k8s.io/api => k8s.io/api {staging_version(PINS.kubernetes)}" in wrapper

    before = len(calls())
    second = install_control_plane(cache, go=str(go))
    assert second.built == ()
    assert second.skipped == ("kind", "kwok", "etcd", "kubernetes")
    assert len(calls()) == before, "a warm install must not run go at all"
    assert "0 built, 4 cached" in second.lines()[-1]


def test_installer_rebuilds_a_unit_whose_stamp_or_binary_is_stale(tmp_path, fake_go):
    """Replaces the go command with a recording stand-in (process boundary): no compiling."""
    go, _ = fake_go
    cache = tmp_path / "cache"
    install_control_plane(cache, go=str(go))
    (cache / "bin" / ".stamps" / "etcd").write_text("etcd v3.5.0 etcd recipe 0\n")
    (cache / "bin" / "kind").unlink()
    report = install_control_plane(cache, go=str(go))
    assert report.built == ("kind", "etcd")
    assert install_control_plane(cache, go=str(go), only=["kwok"], force=True).built == ("kwok",)


def test_installer_names_unknown_units_and_a_missing_go(tmp_path, monkeypatch):
    with pytest.raises(ToolchainError, match="unknown build unit.*nope"):
        install_control_plane(tmp_path, only=["nope"], go="/bin/true")
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(ToolchainError, match="go is not on PATH"):
        install_control_plane(tmp_path)


def test_installer_reports_the_failing_go_command_and_its_output(tmp_path):
    go = tmp_path / "go"
    go.write_text("#!/bin/sh\necho 'go: module lookup disabled' >&2\nexit 1\n")
    go.chmod(0o755)
    with pytest.raises(ToolchainError) as err:
        install_control_plane(tmp_path / "cache", only=["kind"], go=str(go))
    assert f"install sigs.k8s.io/kind@{PINS.kind}" in str(err.value)
    assert "module lookup disabled" in str(err.value)


def test_script_prints_the_bin_dir_for_path(tmp_path):
    env = {**os.environ, toolchain.CACHE_ENV: str(tmp_path)}
    out = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "install-control-plane"), "--print-bin-dir"],
        capture_output=True, text=True, check=True, env=env,
    )
    assert out.stdout.strip() == str(tmp_path / "bin")


def _installed(tool: str) -> Path:
    path = find_tool(tool)
    if path is None:
        pytest.skip(f"{tool} is not installed; run scripts/install-control-plane")
    return path


@pytest.mark.needs_control_plane
@pytest.mark.parametrize(
    ("tool", "args", "expected"),
    [
        ("kube-apiserver", ["--version"], f"Kubernetes {PINS.kubernetes}"),
        ("kube-controller-manager", ["--version"], f"Kubernetes {PINS.kubernetes}"),
        ("kube-scheduler", ["--version"], f"Kubernetes {PINS.kubernetes}"),
        ("kubectl", ["version", "--client"], f"Client Version: {PINS.kubectl}"),
        ("etcd", ["--version"], f"etcd Version: {PINS.etcd.removeprefix('v')}"),
        ("kwokctl", ["--version"], f"kwokctl version {PINS.kwok}"),
        ("kwok", ["--version"], f"kwok version {PINS.kwok}"),
        ("kind", ["version"], f"kind {PINS.kind}"),
    ],
)
def test_installed_binaries_report_the_pinned_versions(tool, args, expected):
    out = subprocess.run(
        [str(_installed(tool)), *args], capture_output=True, text=True, timeout=60, check=False
    )
    assert expected in out.stdout + out.stderr
