"""docs/deploy.md runs as written: every `helm` and `kubectl kustomize`/`kubectl apply -k` command of
its bash blocks, run here without a cluster, so the doc cannot drift from the chart and the overlays.

- `helm install`/`helm upgrade [--install]` become `helm template` with the same arguments (what
  needs a cluster is dropped: `--install`, `--wait`, `--timeout`, ...), the published chart
  `oci://ghcr.io/ferry-serving/charts/ferry[@digest]` (and its `--version`) becomes deploy/helm/ferry,
  and the shell values the doc computes first (digests, a sha256) get stand-ins of the right shape;
- `kubectl apply -k DIR` and `kubectl kustomize DIR` become `kubectl kustomize DIR`;
- a command that can only run against a cluster or a registry carries the marker `# [cluster]` or
  `# [registry]` in its comment; those are counted, not run. An unmarked helm command this test
  cannot run fails it. Other kubectl commands (rollout status, create secret, ...) talk to a cluster
  by nature and are not collected.

The publishing commands themselves (`make release-local`) run in the image tier (tests/image/test_release.py).
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))

import k8s_validate as kv  # noqa: E402

DOC = ROOT / "docs/deploy.md"
MARKERS = ("[cluster]", "[registry]")
OCI_CHART = re.compile(r"^oci://ghcr\.io/ferry-serving/charts/ferry(@sha256:[0-9a-f]{64}|:[\w.-]+)?$")
# The shell values the doc's commands use, as they are after the lines that set them.
SHELL_VALUES = {
    "$DIGEST": "sha256:" + "1" * 64,
    "$CANARY_DIGEST": "sha256:" + "2" * 64,
    "$CHART_DIGEST": "sha256:" + "7" * 64,
    "$MODEL_SHA256": "3" * 64,
    "$NEW_SHA256": "4" * 64,
    "$(cat fraud.digest)": "sha256:" + "5" * 64,
    "$(cat fraud-volume.digest)": "sha256:" + "6" * 64,
}
# Flags of helm install/upgrade that only mean something against a cluster: (flag, takes a value).
CLUSTER_FLAGS = {"--install": False, "--wait": False, "--atomic": False, "--rollback-on-failure": False}
CLUSTER_FLAGS_WITH_VALUE = {"--timeout", "--version"}


def commands() -> list[tuple[str, str | None]]:
    """(command, marker or None) for every helm/kustomize command of the doc's bash blocks."""
    found = []
    for block in re.findall(r"^ *```bash\n(.*?)^ *```", DOC.read_text(), re.S | re.M):
        for line in re.sub(r"\\\n\s*", " ", block).splitlines():
            command, _, comment = line.strip().partition(" #")
            marker = next((m for m in MARKERS if comment.strip().startswith(m)), None)
            command = command.strip()
            if re.match(r"helm \w", command) or re.match(r"kubectl (kustomize|apply -k)\b", command):
                found.append((command, marker))
    return found


def runnable() -> list[str]:
    return [c for c, marker in commands() if marker is None]


def arguments(command: str) -> list[str]:
    for expression, value in SHELL_VALUES.items():
        command = command.replace(expression, value)
    assert "$" not in command, f"a shell value this test does not know: {command}"
    return shlex.split(command)


def offline(command: str) -> list[str]:
    """The command as it runs here: `helm template ...` or `kubectl kustomize DIR`."""
    argv = arguments(command)
    if argv[:2] == ["kubectl", "kustomize"] or argv[:3] == ["kubectl", "apply", "-k"]:
        (directory,) = [a for a in argv[2:] if not a.startswith("-")]
        return [kv.KUBECTL, "kustomize", directory]
    assert argv[1] in ("install", "upgrade", "template"), f"helm {argv[1]} cannot run here: mark it # [cluster]"
    rest, out = argv[2:], []
    while rest:
        arg = rest.pop(0)
        if arg in CLUSTER_FLAGS:
            continue
        if arg in CLUSTER_FLAGS_WITH_VALUE:
            rest.pop(0)
            continue
        if arg.startswith("--timeout=") or arg.startswith("--version="):
            continue
        out.append(str(kv.CHART) if OCI_CHART.match(arg) else arg)
    assert not any(a.startswith("oci://") for a in out), f"a chart reference this test does not know: {command}"
    return [kv.HELM, "template", *out]


@pytest.fixture(scope="module", autouse=True)
def _tools() -> None:
    kv.ensure_k8s_tools()


def test_the_doc_covers_install_upgrade_canaries_and_kustomize() -> None:
    """What the doc must show runnable: the install from the OCI chart by digest, upgrades with the
    environment's values file, both canary mechanisms' start/promote/abort, kustomize with its namespace;
    and never `--reuse-values`."""
    found = runnable()
    oci = [c for c in found if "oci://" in c]
    assert any("--set image.digest=$DIGEST" in c and "@$CHART_DIGEST" in c for c in oci), oci
    # Every upgrade of the environment gets its file and a digest: a tag would be ignored by a digest install.
    assert all("-f deploy/helm/environments/prod.yaml" in c and "--set image.digest=$" in c for c in oci), oci
    assert sum("environments/canary.yaml" in c for c in oci) >= 1 and sum("canary.image.digest" in c for c in oci) >= 1
    assert sum("environments/rollout.yaml" in c for c in oci) >= 3  # install, a release, finishing an abort
    assert any(c.startswith("kubectl apply -k") for c in found) and any(
        c.startswith("kubectl kustomize") for c in found
    )
    assert not [c for c, _ in commands() if "--reuse-values" in c]
    marked = [c for c, marker in commands() if marker]
    assert {c.split()[1] for c in marked} >= {"test", "history", "rollback"}, marked
    print(f"docs/deploy.md: {len(found)} commands run here, {len(marked)} marked for a cluster or registry")


@pytest.mark.parametrize("command", runnable())
def test_command_runs_as_written(command: str) -> None:
    argv = offline(command)
    result = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, check=False)
    assert result.returncode == 0, f"{command}\n-> {' '.join(argv)}\n{result.stderr}"
    docs = [d for d in yaml.safe_load_all(result.stdout) if d]
    assert any(d["kind"] in ("Deployment", "Rollout") for d in docs)
    wanted = [a.split("=", 1)[1] for a in arguments(command) if a.startswith("image.digest=")]
    if wanted:  # the digest is what the stable pods run
        (stable,) = [d for d in docs if d["kind"] in ("Deployment", "Rollout") and d["metadata"]["name"] == "ferry"]
        assert stable["spec"]["template"]["spec"]["containers"][0]["image"].endswith("@" + wanted[-1])
    if argv[1] == "kustomize":
        assert docs[0]["kind"] == "Namespace"
