"""Profiles load, validate, and reject bad input with errors that name file, field and value."""

from pathlib import Path

import pytest

from fixtures.profiles import CLUSTERS_DIR, Capabilities, ProfileError, load_profile, profile_names

REQUIRED = {
    "antrea-encap",
    "antrea-encap-non-default",
    "antrea-noencap",
    "antrea-hybrid",
    "antrea-ipv6",
    "antrea-dual",
    "kubeovn-vpc-nat-gw",
    "submariner-globalnet",
}


def test_every_required_profile_is_shipped():
    assert REQUIRED <= set(profile_names())


@pytest.mark.parametrize("name", sorted(REQUIRED))
def test_shipped_profile_is_valid_and_declares_capabilities(name):
    profile = load_profile(name)
    caps = profile.capabilities
    assert isinstance(caps, Capabilities)
    assert caps.cni == profile.cni
    assert caps.nodes == profile.nodes.controlPlanes + profile.nodes.workers
    assert caps.clusters == len(profile.clusters)


def test_non_default_profile_capabilities_match_antrea_ci_job():
    caps = load_profile("antrea-encap-non-default").capabilities
    assert caps.proxy_all is True
    assert caps.kube_proxy_mode == "none"
    assert caps.lb_mode == "dsr"
    assert {"LoadBalancerModeDSR", "Egress", "ServiceExternalIP"} <= caps.feature_gates


def test_unmet_names_each_missing_capability():
    caps = load_profile("antrea-encap").capabilities
    assert caps.unmet(cni="antrea", feature_gates=["Egress"]) == []
    missing = caps.unmet(lb_mode="dsr", ip_families=[6], clusters=2)
    assert missing == [
        "lb_mode='dsr' (this session has 'nat')",
        "ip_families=[6] (this session has (4,))",
        "clusters=2 (this session has 1)",
    ]
    with pytest.raises(ProfileError, match="requires\\(colour=...\\) is not a capability"):
        caps.unmet(colour="blue")


def _write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(text)
    return path


BASE = """\
description: test
cni: antrea
networking: {podSubnet: 198.18.0.0/16, serviceSubnet: 198.19.0.0/16}
antrea: {trafficEncapMode: encap}
"""


def test_unknown_profile_lists_the_known_ones():
    with pytest.raises(ProfileError) as err:
        load_profile("no-such-profile")
    assert "unknown profile 'no-such-profile'" in str(err.value)
    assert "antrea-encap" in str(err.value)


def test_bad_enum_value_names_file_field_and_value(tmp_path):
    path = _write(tmp_path, "bad", BASE.replace("encap}", "vxlan}"))
    with pytest.raises(ProfileError) as err:
        load_profile(path)
    msg = str(err.value)
    assert str(path) in msg
    assert "antrea.trafficEncapMode" in msg
    assert "'vxlan'" in msg


def test_subnet_family_mismatch_is_rejected(tmp_path):
    text = BASE.replace("{podSubnet", "{ipFamily: ipv6, podSubnet")
    with pytest.raises(
        ProfileError, match="podSubnet '198.18.0.0/16' does not match ipFamily ipv6"
    ):
        load_profile(_write(tmp_path, "fam", text))


def test_unknown_field_is_rejected_by_name(tmp_path):
    with pytest.raises(ProfileError, match="antrea.trafficEncap: Extra inputs are not permitted"):
        load_profile(_write(tmp_path, "typo", BASE.replace("trafficEncapMode", "trafficEncap")))


def test_missing_required_field_is_named(tmp_path):
    text = "description: x\ncni: antrea\nantrea: {}\n"
    with pytest.raises(ProfileError, match="networking: field required"):
        load_profile(_write(tmp_path, "nonet", text))


@pytest.mark.parametrize(
    ("patch", "message"),
    [
        (
            "networking: {podSubnet: 198.18.0.0/16, serviceSubnet: 198.19.0.0/16,"
            " kubeProxyMode: none}",
            "kubeProxyMode none needs antrea.proxyAll true",
        ),
        (
            "antrea: {defaultLoadBalancerMode: dsr, proxyAll: true}",
            "dsr needs featureGates.LoadBalancerModeDSR true",
        ),
        ("antrea: {trafficEncapMode: hybrid}", "hybrid needs an extraNetwork with moveWorkers"),
        ("antrea: {nodeIPAM: true}", "nodeIPAM needs nodeIPAMClusterCIDRs"),
    ],
)
def test_inconsistent_antrea_settings_are_rejected(tmp_path, patch, message):
    key = patch.split(":")[0]
    lines = [ln for ln in BASE.splitlines() if not ln.startswith(key + ":")]
    with pytest.raises(ProfileError, match=message):
        load_profile(_write(tmp_path, "inc", "\n".join(lines) + "\n" + patch + "\n"))


def test_submariner_needs_two_clusters_and_globalnet_cidrs(tmp_path):
    text = (
        "description: x\ncni: kindnet\n"
        "networking: {podSubnet: 198.18.0.0/16, serviceSubnet: 100.65.0.0/16}\n"
        "clusters: [{id: c1}, {id: c2, globalnetCIDR: 242.254.2.0/24}]\n"
        "submariner: {globalnet: true}\n"
    )
    with pytest.raises(ProfileError, match="globalnet needs a globalnetCIDR on every cluster"):
        load_profile(_write(tmp_path, "sub", text))


def test_name_must_match_file(tmp_path):
    with pytest.raises(ProfileError, match="must match the file name"):
        load_profile(_write(tmp_path, "one", "name: two\n" + BASE))


def test_profiles_dir_is_the_repo_clusters_dir():
    assert CLUSTERS_DIR.name == "clusters"
    assert (CLUSTERS_DIR / "antrea-encap.yaml").is_file()
