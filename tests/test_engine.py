"""The Docker engine helpers and the runc wrapper that drops capabilities the VM cannot grant."""

from __future__ import annotations

import ctypes
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from fixtures import engine
from fixtures.engine import (
    EngineState,
    daemon_config,
    engine_answers,
    install_runtime_wrapper,
    missing_capabilities,
)
from fixtures.runtime_wrapper import (
    CAPABILITY_NAMES,
    CAPABILITY_SETS,
    RuncCall,
    bounding_set_names,
    capability_name,
    capability_numbers,
    filter_bundle_config,
    filter_capability_sets,
    filter_process_spec,
    filter_spec_file,
    parse_runc_argv,
    parse_status_mask,
)

# /proc/self/status of the VM in kind-offline.md: CAP_SYS_RESOURCE (24) is missing.
VM_STATUS = textwrap.dedent(
    """\
    Name:\tpython3
    CapInh:\t0000000000000000
    CapPrm:\t000001fffeffffff
    CapEff:\t000001fffeffffff
    CapBnd:\t000001fffeffffff
    CapAmb:\t0000000000000000
    NoNewPrivs:\t0
    """
)
FULL_STATUS = VM_STATUS.replace("CapBnd:\t000001fffeffffff", "CapBnd:\t000001ffffffffff")
ALL_CAPS = list(CAPABILITY_NAMES)
PR_CAPBSET_DROP = 24


def caps_object(names: list[str]) -> dict[str, list[str]]:
    return {key: list(names) for key in CAPABILITY_SETS}


# --- capability names and masks ---------------------------------------------------------


def test_capability_table_matches_the_kernel_numbers():
    assert len(CAPABILITY_NAMES) == 41
    assert capability_name(0) == "CAP_CHOWN"
    assert capability_name(21) == "CAP_SYS_ADMIN"
    assert capability_name(24) == "CAP_SYS_RESOURCE"
    assert capability_name(37) == "CAP_AUDIT_READ"
    assert capability_name(40) == "CAP_CHECKPOINT_RESTORE"
    assert capability_name(41) == "CAP_41"
    assert len(set(CAPABILITY_NAMES)) == 41


def test_status_mask_parses_the_named_field_as_hex():
    assert parse_status_mask(VM_STATUS) == 0x1FFFEFFFFFF
    assert parse_status_mask(VM_STATUS, "CapAmb") == 0
    with pytest.raises(ValueError, match="CapBnd"):
        parse_status_mask("Name:\tx\n")


def test_capability_numbers_lists_set_bits():
    assert capability_numbers(0) == frozenset()
    assert capability_numbers(0b1011) == {0, 1, 3}
    assert 24 not in capability_numbers(0x1FFFEFFFFFF)
    assert capability_numbers(0x1FFFEFFFFFF) == set(range(41)) - {24}


def test_bounding_set_names_of_the_vm_lack_sys_resource():
    names = bounding_set_names(VM_STATUS)
    assert "CAP_SYS_RESOURCE" not in names
    assert {"CAP_SYS_ADMIN", "CAP_NET_ADMIN", "CAP_BPF", "CAP_CHECKPOINT_RESTORE"} <= names


def test_missing_capabilities_are_known_to_the_kernel_but_not_bounded():
    assert missing_capabilities(VM_STATUS, cap_last_cap=40) == ["CAP_SYS_RESOURCE"]
    assert missing_capabilities(FULL_STATUS, cap_last_cap=40) == []


def test_missing_capabilities_ignores_bits_past_cap_last_cap_and_names_unknown_numbers():
    # an older kernel (cap_last_cap 37) does not know CAP_PERFMON..CAP_CHECKPOINT_RESTORE
    status = VM_STATUS.replace("000001fffeffffff", "0000003ffeffffff")
    assert missing_capabilities(status, cap_last_cap=37) == ["CAP_SYS_RESOURCE"]
    # a newer kernel than our table: cap 41 is named by number
    assert missing_capabilities(FULL_STATUS, cap_last_cap=41) == ["CAP_41"]


def test_missing_capabilities_reads_this_process_by_default():
    text = Path("/proc/self/status").read_text()
    last = int(Path("/proc/sys/kernel/cap_last_cap").read_text())
    assert missing_capabilities() == missing_capabilities(text, last)


# --- filtering config.json and --process JSON -------------------------------------------


def test_filter_drops_unbounded_caps_from_every_set():
    allowed = bounding_set_names(VM_STATUS)
    kept, dropped = filter_capability_sets(caps_object(ALL_CAPS), allowed)
    assert dropped == ["CAP_SYS_RESOURCE"]
    for key in CAPABILITY_SETS:
        assert kept[key] == [c for c in ALL_CAPS if c != "CAP_SYS_RESOURCE"], key


def test_filter_drops_names_it_cannot_recognise_and_keeps_case_insensitive_matches():
    caps = {"bounding": ["CAP_CHOWN", "CAP_NOT_A_THING", "cap_kill"], "effective": ["CAP_41"]}
    kept, dropped = filter_capability_sets(caps, bounding_set_names(FULL_STATUS))
    assert kept == {"bounding": ["CAP_CHOWN", "cap_kill"], "effective": []}
    assert dropped == ["CAP_NOT_A_THING", "CAP_41"]


def test_filter_leaves_missing_sets_other_keys_and_odd_values_alone():
    caps = {"bounding": ["CAP_SYS_RESOURCE"], "permitted": "not-a-list", "x-extra": [1]}
    kept, dropped = filter_capability_sets(caps, {"CAP_CHOWN"})
    assert kept == {"bounding": [], "permitted": "not-a-list", "x-extra": [1]}
    assert dropped == ["CAP_SYS_RESOURCE"]
    assert caps["bounding"] == ["CAP_SYS_RESOURCE"], "the input is not modified"


def test_bundle_config_filters_process_capabilities_and_keeps_the_rest():
    config: dict[str, Any] = {
        "ociVersion": "1.0.2",
        "process": {
            "args": ["true"],
            "capabilities": caps_object(["CAP_SYS_RESOURCE", "CAP_KILL"]),
        },
        "root": {"path": "rootfs"},
    }
    filtered, dropped = filter_bundle_config(config, {"CAP_KILL"})
    assert dropped == ["CAP_SYS_RESOURCE"]
    assert filtered["process"]["capabilities"] == caps_object(["CAP_KILL"])
    assert filtered["process"]["args"] == ["true"]
    assert filtered["root"] == {"path": "rootfs"}
    assert config["process"]["capabilities"]["bounding"] == ["CAP_SYS_RESOURCE", "CAP_KILL"]


@pytest.mark.parametrize(
    "config",
    [{}, {"process": {}}, {"process": {"capabilities": None}}, {"process": "x"}, [], "text", None],
)
def test_bundle_config_without_capabilities_is_unchanged(config):
    assert filter_bundle_config(config, {"CAP_KILL"}) == (config, [])


def test_process_spec_filters_top_level_capabilities():
    process = {"args": ["sh"], "capabilities": {"bounding": ["CAP_SYS_RESOURCE", "CAP_KILL"]}}
    filtered, dropped = filter_process_spec(process, {"CAP_KILL"})
    assert filtered == {"args": ["sh"], "capabilities": {"bounding": ["CAP_KILL"]}}
    assert dropped == ["CAP_SYS_RESOURCE"]
    assert filter_process_spec({"args": ["sh"]}, {"CAP_KILL"}) == ({"args": ["sh"]}, [])


def test_spec_file_is_rewritten_only_when_something_is_dropped(tmp_path):
    config = tmp_path / "config.json"
    config.write_text('{"process": {"capabilities": {"bounding": ["CAP_KILL"]}}}')
    config.chmod(0o600)
    call = RuncCall("create", bundle=tmp_path)
    assert filter_spec_file(call, {"CAP_KILL"}) == []
    assert config.read_text() == '{"process": {"capabilities": {"bounding": ["CAP_KILL"]}}}'
    assert filter_spec_file(call, set()) == ["CAP_KILL"]
    assert json.loads(config.read_text()) == {"process": {"capabilities": {"bounding": []}}}
    assert config.stat().st_mode & 0o777 == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["config.json"], "no temporary file left"


# --- runc's command line ----------------------------------------------------------------

GLOBALS = [
    "--root", "/run/containerd/runc/moby",
    "--log", "/run/containerd/io.containerd.runtime.v2.task/moby/ID/log.json",
    "--log-format", "json",
    "--systemd-cgroup",
]  # fmt: skip


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        ([*GLOBALS, "create", "--bundle", "/b", "--pid-file", "/p", "ID"], Path("/b")),
        ([*GLOBALS, "create", "-b", "/b", "ID"], Path("/b")),
        (["create", "--bundle=/b", "ID"], Path("/b")),
        (["create", "-bundle", "/b", "ID"], Path("/b")),
        (["--debug", "--root=/r", "run", "-d", "--bundle", "/b", "ID"], Path("/b")),
        (["create", "--pid-file", "--bundle", "ID"], Path("/cwd")),  # a value, not a flag
        (["create", "ID"], Path("/cwd")),
        (["create", "--bundle", "rel", "ID"], Path("/cwd/rel")),
        (["create", "--", "--bundle", "/b"], Path("/cwd")),
    ],
)
def test_create_and_run_find_the_bundle(argv, expected):
    call = parse_runc_argv(argv, cwd=Path("/cwd"))
    assert call.command in ("create", "run")
    assert call.bundle == expected
    assert call.spec_file() == expected / "config.json"


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        ([*GLOBALS, "exec", "--process", "/tmp/p.json", "--detach", "ID"], Path("/tmp/p.json")),
        (["exec", "-p", "/tmp/p.json", "ID"], Path("/tmp/p.json")),
        (["exec", "--process=/tmp/p.json", "ID"], Path("/tmp/p.json")),
        (["exec", "--env", "-p", "ID", "sh"], None),
        (["exec", "-p", "p.json", "ID"], Path("/cwd/p.json")),
        (["exec", "ID", "sh"], None),
    ],
)
def test_exec_finds_the_process_file(argv, expected):
    call = parse_runc_argv(argv, cwd=Path("/cwd"))
    assert call.command == "exec"
    assert call.process_file == expected
    assert call.spec_file() == expected


@pytest.mark.parametrize(
    ("argv", "command"),
    [
        ([*GLOBALS, "start", "ID"], "start"),
        ([*GLOBALS, "kill", "ID", "9"], "kill"),
        (["--root", "/r", "delete", "--force", "ID"], "delete"),
        (["state", "ID"], "state"),
        (["features"], "features"),
        (["--version"], None),
        ([*GLOBALS], None),
        ([], None),
    ],
)
def test_other_subcommands_touch_no_file(argv, command):
    call = parse_runc_argv(argv, cwd=Path("/cwd"))
    assert call.command == command
    assert call.spec_file() is None


# --- the installed wrapper, end to end --------------------------------------------------

RECORDER = """#!{python}
import json, os, sys
from pathlib import Path
def load(path):
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except ValueError:
        return path.read_text()
record = {{"argv": sys.argv[1:], "cwd": os.getcwd()}}
record["config"] = load(Path({bundle!r}) / "config.json")
record["process"] = load(Path({bundle!r}) / "process.json")
with open({out!r}, "a") as out:
    out.write(json.dumps(record) + "\\n")
sys.exit(int(os.environ.get("RECORDER_EXIT", "0")))
"""


@pytest.fixture
def wrapper_setup(tmp_path):
    """The wrapper as start_engine installs it, with a recording stand-in for runc."""
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    out = tmp_path / "calls.jsonl"
    recorder = tmp_path / "fake-runc"
    recorder.write_text(RECORDER.format(python=sys.executable, bundle=str(bundle), out=str(out)))
    recorder.chmod(0o755)
    state_dir = tmp_path / "state"
    state_dir.mkdir()
    wrapper = install_runtime_wrapper(state_dir, sys.executable)
    env = {**os.environ, "CNI_E2E_REAL_RUNC": str(recorder)}
    return wrapper, bundle, out, env


def run_wrapper(wrapper: Path, args: list[str], env: dict[str, str], cwd: Path | None = None):
    return subprocess.run(
        [str(wrapper), *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=30
    )


def records(out: Path) -> list[dict]:
    return [json.loads(line) for line in out.read_text().splitlines()]


def test_installed_wrapper_is_an_executable_with_its_own_interpreter(tmp_path):
    wrapper = install_runtime_wrapper(tmp_path, "/usr/bin/python3")
    assert wrapper.name == "cni-e2e-runc"
    assert os.access(wrapper, os.X_OK)
    assert wrapper.read_text().splitlines()[0] == "#!/usr/bin/python3 -I"
    assert "def main(" in wrapper.read_text()


def test_wrapper_filters_config_json_and_execs_runc_with_the_same_argv(wrapper_setup):
    """The real runc is replaced by a recording script at the exec boundary."""
    wrapper, bundle, out, env = wrapper_setup
    requested = [*ALL_CAPS, "CAP_NOT_A_THING"]
    (bundle / "config.json").write_text(
        json.dumps({"ociVersion": "1.0.2", "process": {"capabilities": caps_object(requested)}})
    )
    args = [*GLOBALS, "create", "--bundle", str(bundle), "--pid-file", "/x/pid", "ID1"]
    result = run_wrapper(wrapper, args, env)
    assert result.returncode == 0, result.stderr
    [record] = records(out)
    assert record["argv"] == args
    expected = [c for c in ALL_CAPS if c not in missing_capabilities()]
    assert record["config"]["process"]["capabilities"] == caps_object(expected)
    assert record["config"]["ociVersion"] == "1.0.2"


def test_wrapper_uses_the_working_directory_as_bundle_and_passes_exit_codes(wrapper_setup):
    wrapper, bundle, out, env = wrapper_setup
    (bundle / "config.json").write_text(
        json.dumps({"process": {"capabilities": {"bounding": ["CAP_NOT_A_THING", "CAP_KILL"]}}})
    )
    result = run_wrapper(wrapper, ["run", "ID2"], {**env, "RECORDER_EXIT": "3"}, cwd=bundle)
    assert result.returncode == 3
    [record] = records(out)
    assert record["argv"] == ["run", "ID2"]
    assert record["config"]["process"]["capabilities"] == {"bounding": ["CAP_KILL"]}


def test_wrapper_filters_the_exec_process_file(wrapper_setup):
    wrapper, bundle, out, env = wrapper_setup
    process = {"args": ["sh"], "capabilities": {"effective": ["CAP_KILL", "CAP_NOT_A_THING"]}}
    (bundle / "process.json").write_text(json.dumps(process))
    args = ["--root", "/r", "exec", "--process", str(bundle / "process.json"), "-d", "ID"]
    assert run_wrapper(wrapper, args, env).returncode == 0
    [record] = records(out)
    assert record["argv"] == args
    assert record["process"] == {"args": ["sh"], "capabilities": {"effective": ["CAP_KILL"]}}


def test_wrapper_passes_unreadable_json_and_other_commands_through_unchanged(wrapper_setup):
    wrapper, bundle, out, env = wrapper_setup
    (bundle / "config.json").write_text("{not json")
    assert run_wrapper(wrapper, ["create", "-b", str(bundle), "ID"], env).returncode == 0
    assert (bundle / "config.json").read_text() == "{not json"
    assert run_wrapper(wrapper, ["create", "-b", str(bundle / "absent"), "ID"], env).returncode == 0
    assert run_wrapper(wrapper, [*GLOBALS, "kill", "ID", "9"], env).returncode == 0
    assert run_wrapper(wrapper, ["features"], env).returncode == 0
    assert [r["argv"][-1] for r in records(out)] == ["ID", "ID", "9", "features"]
    assert records(out)[0]["config"] == "{not json", "runc got the file as it was"


def _drop_sys_nice_from_bounding_set() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_CAPBSET_DROP, CAPABILITY_NAMES.index("CAP_SYS_NICE"), 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


@pytest.mark.skipif(os.geteuid() != 0, reason="dropping from the bounding set needs CAP_SETPCAP")
def test_wrapper_filters_by_its_own_bounding_set(wrapper_setup):
    """The wrapper runs with CAP_SYS_NICE dropped from its bounding set, as a VM would lack it."""
    wrapper, bundle, out, env = wrapper_setup
    (bundle / "config.json").write_text(
        json.dumps({"process": {"capabilities": {"bounding": ["CAP_SYS_NICE", "CAP_KILL"]}}})
    )
    result = subprocess.run(
        [str(wrapper), "create", "--bundle", str(bundle), "ID"],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        preexec_fn=_drop_sys_nice_from_bounding_set,
    )
    assert result.returncode == 0, result.stderr
    [record] = records(out)
    assert record["config"]["process"]["capabilities"] == {"bounding": ["CAP_KILL"]}


def test_wrapper_reports_a_missing_real_runc(wrapper_setup):
    wrapper, _, _, env = wrapper_setup
    result = run_wrapper(wrapper, ["state", "ID"], {**env, "CNI_E2E_REAL_RUNC": "/nonexistent"})
    assert result.returncode == 127
    assert "/nonexistent" in result.stderr


# --- daemon config and state ------------------------------------------------------------


def test_daemon_config_keeps_every_address_in_the_benchmark_range():
    config = daemon_config(None)
    assert config["bip"] == "198.19.250.1/24"
    assert config["default-address-pools"] == [{"base": "198.19.192.0/19", "size": 24}]
    assert config["dns"] == ["198.19.250.1"]
    assert config["storage-driver"] == "overlay2"
    assert "runtimes" not in config and "default-runtime" not in config


def test_daemon_config_registers_the_wrapper_as_default_runtime():
    config = daemon_config(Path("/state/cni-e2e-runc"))
    assert config["runtimes"] == {"cni-e2e-runc": {"path": "/state/cni-e2e-runc"}}
    assert config["default-runtime"] == "cni-e2e-runc"


def test_engine_state_round_trips_through_its_state_file_form():
    state = EngineState(
        ours=True,
        pid=42,
        config_path=Path("/s/daemon.json"),
        log_path=Path("/s/dockerd.log"),
        wrapper_path=Path("/s/cni-e2e-runc"),
        missing_capabilities=("CAP_SYS_RESOURCE",),
        started_at=1.5,
    )
    again = EngineState.from_json(json.loads(json.dumps(state.to_json())))
    assert again == EngineState(**{**state.__dict__, "reused": True})
    assert "wrapper on" in state.describe() and "CAP_SYS_RESOURCE" in state.describe()
    assert "not started by cni-e2e" in EngineState(ours=False).describe()


def test_stop_engine_never_touches_a_pid_that_is_not_our_dockerd(tmp_path):
    """The recorded pid is this pytest process: alive, but not dockerd."""
    (tmp_path / engine.STATE_FILE).write_text(
        json.dumps({"pid": os.getpid(), "config": str(tmp_path / "daemon.json")})
    )
    stop = engine.stop_engine(tmp_path)
    assert not stop.stopped and stop.pid == os.getpid()
    assert not (tmp_path / engine.STATE_FILE).exists()
    assert engine.stop_engine(tmp_path).reason.startswith("no dockerd started by cni-e2e")


def test_engine_answers_is_false_without_a_docker_cli():
    assert engine_answers("/nonexistent/docker") is False


# --- the real engine --------------------------------------------------------------------


@pytest.mark.skipif(
    not engine_answers(), reason="no Docker engine answers `docker info` (scripts/install-docker)"
)
def test_privileged_container_without_network_runs_on_the_local_engine():
    image = engine.ensure_test_image()
    result = subprocess.run(
        ["docker", "run", "--rm", "--privileged", "--network", "none", image, "true"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
