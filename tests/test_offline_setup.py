"""Pure parts of the offline set-up: address plans, node-image choice, archive rewriting,
host quirks, kind config patches and the flannel manifest (no Docker needed)."""

from __future__ import annotations

import io
import ipaddress
import json
import tarfile
from pathlib import Path

import pytest
import yaml

from fixtures import flannel
from fixtures.addressing import apply_plan, in_testnet, kind_network_candidates
from fixtures.hostquirks import HostQuirks, _oom_restricted
from fixtures.offline_images import (
    NodeImageError,
    choose_node_image,
    debian_mirror,
    full_name,
    offline_node_image,
    repositories_first,
    unbuildable_images,
)
from fixtures.profiles import load_profile, profile_names
from fixtures.render import HostSetup, render_install_plan, render_kind_config
from fixtures.toolchain import PINS


def _addresses(profile) -> list[str]:
    net = profile.networking
    # pools resolved against the cluster's own kind network at provision time are not CIDRs yet
    pools = [p for p in profile.ipRangePools if not p.startswith("kind-network:")]
    out = [*net.podSubnet.split(","), *net.serviceSubnet.split(","), *pools]
    out += [n.subnet for n in profile.extraNetworks]
    out += [c.globalnetCIDR for c in profile.clusters if c.globalnetCIDR]
    if profile.antrea is not None:
        out += profile.antrea.nodeIPAMClusterCIDRs
    return out


@pytest.mark.parametrize("name", profile_names())
def test_testnet_plan_moves_every_address_of_every_profile_into_the_test_ranges(name):
    original = load_profile(name)
    mapped = apply_plan(original, "testnet")
    assert all(in_testnet(a) for a in _addresses(mapped)), _addresses(mapped)
    assert mapped.networking.ipFamily == original.networking.ipFamily
    assert apply_plan(original, "profile") == original  # users keep their own addresses


def test_testnet_pod_service_and_range_pools_do_not_overlap():
    p = apply_plan(load_profile("antrea-dual"), "testnet")
    nets = [ipaddress.ip_network(c) for c in _addresses(p)]
    for i, a in enumerate(nets):
        for b in nets[i + 1 :]:
            assert a.version != b.version or not a.overlaps(b), (a, b)


def test_kind_network_candidates_are_distinct_testnet_slash_24s():
    cands = kind_network_candidates("dual")
    assert len(set(cands.v4)) == len(cands.v4) == 8
    assert all(in_testnet(c) and c.endswith("/24") for c in cands.v4)
    assert all(in_testnet(c) for c in cands.v6) and len(cands.v6) == len(cands.v4)
    assert kind_network_candidates("ipv4").v6 == ()


def test_in_testnet_rejects_private_and_public_space():
    assert in_testnet("198.19.200.3") and in_testnet("2001:db8::1")
    assert not in_testnet("192.0.2.0/24") and not in_testnet("203.0.113.7")
    assert not in_testnet("fd00:10:244::/56")


def present(*images: str):
    return lambda image: image in images


def test_node_image_offline_is_the_local_build_or_a_clear_error():
    local = offline_node_image()
    choice = choose_node_image("offline", present(local))
    assert (choice.image, choice.offline) == (local, True)
    with pytest.raises(NodeImageError, match="scripts/build-node-image"):
        choose_node_image("offline", present())


def test_node_image_unset_prefers_kindest_then_the_offline_image_then_a_pull():
    local = offline_node_image()
    assert choose_node_image(None, present(PINS.kindest_node, local)).image == PINS.kindest_node
    chosen = choose_node_image(None, present(local))
    assert chosen.offline and "built offline" in chosen.note
    pulled = choose_node_image(None, present())
    assert pulled.image == PINS.kindest_node and not pulled.offline
    assert "sha256:" in PINS.kindest_node  # pinned by digest


def test_an_explicit_node_image_is_used_as_given():
    assert choose_node_image("kindest/node:v1.34.0", present()).image == "kindest/node:v1.34.0"


def test_full_name_spells_out_docker_hub_and_keeps_registries():
    assert full_name("kindest/kindnetd:v1") == "docker.io/kindest/kindnetd:v1"
    assert full_name("busybox:1") == "docker.io/library/busybox:1"
    assert full_name("registry.k8s.io/pause:3.10") == "registry.k8s.io/pause:3.10"
    assert full_name("localhost/cni-e2e/x:1") == "localhost/cni-e2e/x:1"


def _save_like_archive(path: Path, images: dict[str, str]) -> None:
    """An archive shaped like `docker save` output: layers, manifest.json, repositories last."""
    manifest = [
        {"Config": f"{i}.json", "RepoTags": [tag], "Layers": [f"{i}/layer.tar"]}
        for i, tag in enumerate(images)
    ]
    with tarfile.open(path, "w") as tar:
        for i in range(len(images)):
            data = b"layer"
            info = tarfile.TarInfo(f"{i}/layer.tar")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for name, blob in (
            ("manifest.json", json.dumps(manifest).encode()),
            ("repositories", b"{}"),
        ):
            info = tarfile.TarInfo(name)
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))


def test_repositories_first_lists_every_image_with_full_names_before_anything_else(tmp_path):
    archive = tmp_path / "kube-proxy.tar"
    tags = ["registry.k8s.io/kube-proxy:v1.35.4", "kindest/kindnetd:v2", "registry.k8s.io/etcd:3"]
    _save_like_archive(archive, dict.fromkeys(tags, ""))
    repositories_first(archive, tags)
    with tarfile.open(archive) as tar:
        members = tar.getmembers()
        assert members[0].name == "repositories"  # kind reads whichever comes first
        repos = json.loads(tar.extractfile(members[0]).read())
        assert [m.name for m in members].count("repositories") == 1
        assert "0/layer.tar" in [m.name for m in members]
    named = {f"{repo}:{tag}" for repo, tags_ in repos.items() for tag in tags_}
    assert named == {full_name(t) for t in tags}


def test_debian_mirror_is_read_from_deb822_and_one_line_sources(tmp_path):
    deb822 = tmp_path / "debian.sources"
    deb822.write_text(
        "Types: deb\nURIs: http://mirror.example/debian-security\nSuites: bookworm-security\n\n"
        "Types: deb\nURIs: http://mirror.example/debian\nSuites: bookworm bookworm-updates\n"
    )
    assert debian_mirror([deb822]) == "http://mirror.example/debian"
    one_line = tmp_path / "sources.list"
    one_line.write_text("# comment\ndeb http://other.example/debian bookworm main\n")
    assert debian_mirror([one_line]) == "http://other.example/debian"
    with pytest.raises(Exception, match="--mirror"):
        debian_mirror([tmp_path / "missing.list"])


def test_oom_quirk_follows_cap_sys_resource_in_the_bounding_set():
    assert _oom_restricted("CapBnd:\t000001fffeffffff\n")  # bit 24 clear
    assert not _oom_restricted("CapBnd:\t000001ffffffffff\n")


def test_quirk_patches_go_through_kinds_own_hooks_only_when_needed():
    profile = apply_plan(load_profile("kind-flannel"), "testnet")
    plain = render_kind_config(profile, 0, "c")
    assert "containerdConfigPatches" not in plain and "kubeadmConfigPatches" not in plain
    host = HostSetup(HostQuirks(cgroup_v1=True, oom_score_adj_restricted=True), offline=True)
    patched = render_kind_config(profile, 0, "c", host)
    assert any("failCgroupV1: false" in p for p in patched["kubeadmConfigPatches"])
    patches = "\n".join(patched["containerdConfigPatches"])
    assert "restrict_oom_score_adj = true" in patches
    assert 'config_path = "/etc/containerd/certs.d"' in patches


def test_testnet_install_plan_drops_coredns_forwarding_and_side_loads_flannel():
    profile = apply_plan(load_profile("kind-flannel"), "testnet")
    plan = render_install_plan(profile, "c", HostSetup(address_plan="testnet"))
    corefile = yaml.safe_load(plan.files["coredns.yaml"])["data"]["Corefile"]
    assert "forward" not in corefile and "loop" not in corefile
    assert "kubernetes cluster.local" in corefile
    assert [s.name for s in plan.steps] == [
        "coredns-no-forward",
        "coredns-restart",
        "apply-flannel",
    ]
    assert plan.images == ["localhost/cni-e2e/flannel:v0.28.10"]
    docs = list(yaml.safe_load_all(plan.files["flannel.yaml"]))
    cfg = next(d for d in docs if d["kind"] == "ConfigMap")
    assert json.loads(cfg["data"]["net-conf.json"]) == {
        "Backend": {"Type": "host-gw"},
        "Network": "198.18.128.0/17",
    }
    assert "coredns.yaml" not in render_install_plan(profile, "c").files


def test_flannel_net_conf_for_v6_and_dual_stack():
    assert flannel.net_conf("2001:db8:244::/56", "host-gw") == {
        "Backend": {"Type": "host-gw"},
        "EnableIPv6": True,
        "IPv6Network": "2001:db8:244::/56",
        "EnableIPv4": False,
    }
    dual = flannel.net_conf("198.18.128.0/17,2001:db8:244::/56", "vxlan")
    assert dual["Network"] == "198.18.128.0/17" and dual["EnableIPv6"]


def test_profiles_that_cannot_be_built_offline_name_what_is_missing():
    assert unbuildable_images(load_profile("kind-flannel")) == []
    antrea = unbuildable_images(load_profile("antrea-encap"))
    assert any("antrea-agent" in i for i in antrea) and any("chart" in i for i in antrea)
    assert any("subctl" in i for i in unbuildable_images(load_profile("submariner-globalnet")))
