"""Recording stand-ins for kind, docker, kubectl and helm at the process boundary.

kind cannot run on machines without a Docker engine, so lifecycle tests put
these executables first on PATH. Each appends its argv to a JSON-lines log and
keeps just enough state (which clusters exist) to behave like the real tool.
Environment knobs: CNI_E2E_FAKE_KIND_FAIL=create makes `kind create` fail;
CNI_E2E_FAKE_KUBECTL_FAIL=WORD makes any kubectl call containing WORD fail (a gate);
CNI_E2E_FAKE_DOCKER_DOWN=1 makes `docker info` fail like a stopped engine.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

SCRIPT = r"""#!{python}
import json, os, sys
from pathlib import Path
state = Path({state!r})
tool = {tool!r}
argv = sys.argv[1:]
with open(state / "calls.jsonl", "a") as log:
    log.write(json.dumps({{"tool": tool, "argv": argv, "pid": os.getppid()}}) + "\n")
clusters_file = state / "clusters.json"
clusters = json.loads(clusters_file.read_text()) if clusters_file.exists() else []

def opt(name):
    for i, a in enumerate(argv):
        if a.startswith(name + "="):
            return a.split("=", 1)[1]
        if a == name and i + 1 < len(argv):
            return argv[i + 1]
    return None

KUBECONFIG = (
    "apiVersion: v1\nkind: Config\ncurrent-context: kind-%s\n"
    "clusters: [{{name: kind, cluster: {{server: 'https://127.0.0.1:6443'}}}}]\n"
    "users: [{{name: kind, user: {{}}}}]\n"
    "contexts: [{{name: kind-%s, context: {{cluster: kind, user: kind}}}}]\n"
)
if tool == "kind":
    if argv[:2] == ["get", "clusters"]:
        print("\n".join(clusters))
    elif argv[:2] == ["create", "cluster"]:
        name = opt("--name")
        if os.environ.get("CNI_E2E_FAKE_KIND_FAIL") == "create":
            print("ERROR: failed to create cluster: node(s) already exist for a cluster "
                  f"with the name \"{{name}}\"", file=sys.stderr)
            sys.exit(1)
        cfg = opt("--config")
        (state / f"config-{{name}}.yaml").write_text(Path(cfg).read_text())
        clusters.append(name)
        clusters_file.write_text(json.dumps(clusters))
        Path(opt("--kubeconfig")).write_text(KUBECONFIG % (name, name))
    elif argv[:2] == ["export", "kubeconfig"]:
        name = opt("--name")
        if name not in clusters:
            print(f"ERROR: unknown cluster {{name}}", file=sys.stderr); sys.exit(1)
        Path(opt("--kubeconfig")).write_text(KUBECONFIG % (name, name))
    elif argv[:2] == ["delete", "cluster"]:
        name = opt("--name")
        clusters = [c for c in clusters if c != name]
        clusters_file.write_text(json.dumps(clusters))
elif tool == "docker":
    if argv[:1] == ["info"] and os.environ.get("CNI_E2E_FAKE_DOCKER_DOWN"):
        print("Cannot connect to the Docker daemon at unix:///var/run/docker.sock", file=sys.stderr)
        sys.exit(1)
    if argv[:1] == ["info"]:
        print("28.2.2")
    elif argv[:1] == ["inspect"]:
        print("192.0.2.10")
elif tool == "kubectl":
    fail = os.environ.get("CNI_E2E_FAKE_KUBECTL_FAIL")
    if fail and fail in argv:
        print(f"error: timed out waiting for the condition on {{argv[-2]}}", file=sys.stderr)
        sys.exit(1)
    if "-o" in argv and argv[argv.index("-o") + 1] == "yaml":
        print("kind: DaemonSet\nmetadata: {{name: antrea-agent}}\nstatus: {{numberUnavailable: 2}}")
elif tool == "helm":
    print("apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: rendered}}")
"""


def install(
    bin_dir: Path, state: Path, tools: tuple[str, ...] = ("kind", "docker", "kubectl", "helm")
) -> None:
    """Write recording executables for `tools` into bin_dir; their log goes to state."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    state.mkdir(parents=True, exist_ok=True)
    for tool in tools:
        path = bin_dir / tool
        path.write_text(SCRIPT.format(python=sys.executable, state=str(state), tool=tool))
        path.chmod(0o755)


def calls(state: Path, tool: str | None = None) -> list[list[str]]:
    """The recorded argument lists, optionally for one tool."""
    log = state / "calls.jsonl"
    if not log.exists():
        return []
    rows = [json.loads(line) for line in log.read_text().splitlines()]
    return [r["argv"] for r in rows if tool is None or r["tool"] == tool]


def existing_clusters(state: Path) -> list[str]:
    f = state / "clusters.json"
    return json.loads(f.read_text()) if f.exists() else []


def preexisting(state: Path, names: list[str]) -> None:
    (state / "clusters.json").write_text(json.dumps(names))
