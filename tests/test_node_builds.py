"""Node-image builds: pins, generated wrapper modules, static checks and stamps that skip work."""

from __future__ import annotations

import dataclasses
import json
import re
import struct
import sys
import textwrap
from pathlib import Path

import pytest

from fixtures.node_builds import (
    CNI_PLUGINS,
    COREDNS_DIRECTIVES,
    NODE_PINS,
    build_node_binaries,
    coredns_main_go,
    flanneld_go_mod,
    is_static_elf,
    node_bin_dir,
    node_units,
)
from fixtures.toolchain import ToolchainError

SDK = "github.com/tencentcloud/tencentcloud-sdk-go"


def elf(interpreter: bool) -> bytes:
    """A minimal ELF64 header and program header table, with or without PT_INTERP."""
    phoff, phentsize = 64, 56
    ptypes = [6, 3, 1] if interpreter else [1, 4]  # PHDR, INTERP, LOAD / LOAD, NOTE
    header = bytearray(64)
    header[:6] = b"\x7fELF\x02\x01"
    struct.pack_into("<Q", header, 0x20, phoff)
    struct.pack_into("<HH", header, 0x36, phentsize, len(ptypes))
    table = b"".join(struct.pack("<I", t) + bytes(phentsize - 4) for t in ptypes)
    return bytes(header) + table


def test_pins_are_exact_versions():
    for field in dataclasses.fields(NODE_PINS):
        value = getattr(NODE_PINS, field.name)
        assert re.fullmatch(r"v?\d+\.\d+\.\d+(-\d+)?", value), field.name


def test_units_are_unique_and_the_long_builds_come_last():
    names = [u.name for u in node_units()]
    assert len(names) == len(set(names))
    assert names[:2] == ["cni-flannel", "cni-plugins"]
    assert names[-2:] == ["coredns", "containerd"]
    assert names.index("cilium-operator") < names.index("cilium")  # 40 s before 6+ min
    by_name = {u.name: u for u in node_units()}
    assert by_name["cni-plugins"].binaries == CNI_PLUGINS
    assert set(by_name["containerd"].binaries) == {"containerd", "ctr", "containerd-shim-runc-v2"}


def test_every_build_is_static_and_stamped_with_its_version():
    for unit in node_units():
        builds = [c for c in unit.commands if c.args[0] in ("install", "build")]
        assert builds, unit.name
        for cmd in builds:
            ldflags = cmd.args[cmd.args.index("-ldflags") + 1]
            if unit.name == "flanneld":  # cgo on amd64 as upstream, linked statically
                assert ("CGO_ENABLED", "1") in cmd.env and "-extldflags -static" in ldflags
            else:
                assert ("CGO_ENABLED", "0") in cmd.env, unit.name
            assert unit.version.removeprefix("v") in ldflags, unit.name


def test_go_install_packages_carry_the_pinned_version():
    for unit in node_units():
        for cmd in unit.commands:
            if cmd.args[0] == "install":
                packages = [a for a in cmd.args if "@" in a]
                assert packages and all(p.endswith(f"@{unit.version}") for p in packages)


def test_stamp_follows_pins_and_holds_no_machine_paths():
    before = {u.name: u.stamp for u in node_units()}
    bumped = dataclasses.replace(NODE_PINS, flannel="v0.28.11")
    after = {u.name: u.stamp for u in node_units(bumped)}
    assert [n for n in before if before[n] != after[n]] == ["flanneld"]
    for stamp in before.values():
        assert "{out}" in stamp and str(Path.home()) not in stamp


def test_flanneld_wrapper_stands_in_the_served_monolithic_sdk_for_the_split_modules():
    text = flanneld_go_mod(NODE_PINS, "1.26.0")
    assert "\ngo 1.26.0\n" in text
    assert f"\tgithub.com/flannel-io/flannel {NODE_PINS.flannel}\n" in text
    assert f"\t{SDK} {NODE_PINS.tencentcloud_sdk}\n" in text
    assert f"\t{SDK}/tencentcloud/common => ./sdk-split/common\n" in text
    assert f"\t{SDK}/tencentcloud/vpc => ./sdk-split/vpc\n" in text
    files = dict(next(u for u in node_units() if u.name == "flanneld").wrapper_files)
    assert f"module {SDK}/tencentcloud/vpc\n" in files["sdk-split/vpc/go.mod"]
    assert "require" not in files["sdk-split/common/go.mod"]


def test_coredns_main_registers_only_the_given_plugins_in_the_given_order():
    text = coredns_main_go()
    order = re.search(r"var directives = \[\]string\{\n(.*?)\n\}", text, re.S)
    assert order is not None
    assert re.findall(r'"(\w+)"', order.group(1)) == list(COREDNS_DIRECTIVES)
    imports = re.findall(r'_ "github.com/coredns/coredns/plugin/(\w+)"', text)
    assert "metrics" in imports and "prometheus" not in imports  # prometheus lives in metrics
    assert len(imports) == len(COREDNS_DIRECTIVES)
    assert "dnsserver.Directives = directives" in text and "coremain.Run()" in text
    assert "whoami" not in coredns_main_go(("cache", "forward"))


def test_is_static_elf_tells_static_from_dynamic(tmp_path):
    static, dynamic, script = tmp_path / "s", tmp_path / "d", tmp_path / "sh"
    static.write_bytes(elf(interpreter=False))
    dynamic.write_bytes(elf(interpreter=True))
    script.write_text("#!/bin/sh\n")
    assert is_static_elf(static)
    assert not is_static_elf(dynamic)
    assert not is_static_elf(script)


def test_is_static_elf_on_this_python_is_false():
    """The running interpreter is a dynamically linked ELF on every supported platform."""
    if not sys.platform.startswith("linux"):
        pytest.skip("ELF only")
    assert not is_static_elf(Path(sys.executable).resolve())


# A stand-in for the go command: it records each call and writes the ELF files a real
# build would (in GOBIN or at -o), without compiling anything.
FAKE_GO = textwrap.dedent(
    """\
    #!{python}
    import json, os, sys
    from pathlib import Path
    args = sys.argv[1:]
    with open(os.environ["FAKE_GO_LOG"], "a") as fh:
        fh.write(json.dumps([args, os.getcwd(), os.environ.get("CGO_ENABLED")]) + "\\n")
    binary = Path(os.environ["FAKE_GO_ELF"]).read_bytes()

    def write(dest):
        dest.write_bytes(binary)
        dest.chmod(0o755)
    if args[:2] == ["env", "GOVERSION"]:
        print("go1.26.8")
    elif args[:3] == ["mod", "download", "-json"]:
        print(json.dumps({{"GoMod": os.environ["FAKE_GO_MOD"]}}))
    elif args[:2] == ["mod", "tidy"]:
        Path("go.sum").write_text("")
    elif args[0] == "install":
        for pkg in (a for a in args if "@" in a):
            write(Path(os.environ["GOBIN"], pkg.split("@")[0].split("/")[-1]))
    elif args[0] == "build":
        write(Path(args[args.index("-o") + 1]))
    """
)


@pytest.fixture
def fake_go(tmp_path, monkeypatch):
    go = tmp_path / "go"
    go.write_text(FAKE_GO.format(python=sys.executable))
    go.chmod(0o755)
    binary = tmp_path / "static.elf"
    binary.write_bytes(elf(interpreter=False))
    upstream = tmp_path / "upstream.mod"
    upstream.write_text("module example.com/upstream\n\ngo 1.26.0\n")
    calls = tmp_path / "go-calls.jsonl"
    monkeypatch.setenv("FAKE_GO_LOG", str(calls))
    monkeypatch.setenv("FAKE_GO_ELF", str(binary))
    monkeypatch.setenv("FAKE_GO_MOD", str(upstream))

    def recorded() -> list[list]:
        return [json.loads(x) for x in calls.read_text().splitlines()] if calls.exists() else []

    return go, binary, recorded


def test_builder_installs_per_unit_then_a_warm_run_runs_no_go(tmp_path, fake_go):
    """Replaces the go command with a recording stand-in (process boundary): no compiling."""
    go, _, calls = fake_go
    cache = tmp_path / "cache"
    first = build_node_binaries(cache, go=str(go))
    assert [r.action for r in first] == ["built"] * len(node_units())
    for unit in node_units():
        for name in unit.binaries:
            assert (node_bin_dir(unit.name, cache) / name).is_file()
    assert not (cache / "bin").exists(), "node binaries must stay off the user's PATH dir"
    builds = [(args, cgo) for args, _, cgo in calls() if args[0] in ("install", "build")]
    with_cgo = [(Path(args[args.index("-o") + 1]).name, cgo) for args, cgo in builds if cgo != "0"]
    assert with_cgo == [("flanneld", "1")]  # the one upstream builds with cgo on amd64
    wrapper = cache / "node" / "src" / f"flanneld-{NODE_PINS.flannel}"
    assert "\ngo 1.26.0\n" in (wrapper / "go.mod").read_text()  # upstream's go directive
    assert (wrapper / "sdk-split" / "vpc" / "go.mod").is_file()
    assert [a for a, cwd, _ in calls() if a[0] == "build" and cwd == str(wrapper)]

    before = len(calls())
    second = build_node_binaries(cache, go=str(go))
    assert [r.action for r in second] == ["skipped"] * len(node_units())
    assert len(calls()) == before, "a warm run must not run go at all"


def test_builder_rebuilds_only_a_unit_whose_stamp_or_binary_is_stale(tmp_path, fake_go):
    """Replaces the go command with a recording stand-in (process boundary): no compiling."""
    go, _, _ = fake_go
    cache = tmp_path / "cache"
    build_node_binaries(cache, go=str(go))
    (cache / "node" / ".stamps" / "crictl").write_text("crictl v1.0.0 crictl recipe 0\n")
    (node_bin_dir("metallb", cache) / "speaker").unlink()
    rebuilt = [r.name for r in build_node_binaries(cache, go=str(go)) if r.action == "built"]
    assert rebuilt == ["crictl", "metallb"]
    forced = build_node_binaries(cache, only=["coredns"], force=True, go=str(go))
    assert [(r.name, r.action) for r in forced] == [("coredns", "built")]


def test_builder_refuses_a_dynamically_linked_binary(tmp_path, fake_go):
    """Replaces the go command with a stand-in that 'builds' an ELF with an interpreter."""
    go, binary, _ = fake_go
    binary.write_bytes(elf(interpreter=True))
    with pytest.raises(ToolchainError, match="crictl.*dynamically linked"):
        build_node_binaries(tmp_path / "cache", only=["crictl"], go=str(go))
    assert not (tmp_path / "cache" / "node" / ".stamps" / "crictl").exists()


def test_builder_names_unknown_units(tmp_path):
    with pytest.raises(ToolchainError, match="unknown node build unit.*kindnetd.*known: cni-"):
        build_node_binaries(tmp_path, only=["kindnetd"], go="/bin/true")
