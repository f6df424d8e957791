"""docs/deploy.md "Serve your own model", run where it can run here: every `helm install`/`helm upgrade`
command of the section, exactly as written, rendered offline by `helm template` with the same
arguments (no cluster: `--install` is dropped, and the shell values the section computes first, a
sha256 and a pushed digest, get stand-ins). Each must render, serve the team's model under a pin, and
together they must cover every `model.source` and the canary with a model of its own.

The other commands of the section run elsewhere: `make image MODEL=...` and `podman build -f
deploy/model-volume/Dockerfile` in the image tier (tests/image/test_model_image.py, test_kube_play.py),
`ferry model fetch` against real HTTP and S3 servers in tests/integration/test_model_fetch.py.
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
SHA = "3" * 64
# The shell values the section's commands use, as they would be after the commands that set them.
SHELL_VALUES = {
    "$MODEL_SHA256": SHA,
    "$NEW_SHA256": "4" * 64,
    "$(cat fraud.digest)": "sha256:" + "5" * 64,
    "$(cat fraud-volume.digest)": "sha256:" + "6" * 64,
}
NOT_FOR_TEMPLATE = {"--install"}  # cluster state: a release to create


@pytest.fixture(scope="module", autouse=True)
def _tools() -> None:
    kv.ensure_k8s_tools()


def section(text: str, title: str) -> str:
    start = text.index(f"## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end != -1 else None]


def helm_commands() -> list[str]:
    """The `helm install`/`helm upgrade` commands of the section, continuation lines joined."""
    blocks = re.findall(r"```bash\n(.*?)```", section(DOC.read_text(), "Serve your own model"), re.S)
    commands = []
    for block in blocks:
        for command in re.sub(r"\\\n\s*", " ", block).splitlines():
            command = command.split(" #", 1)[0].strip()
            if re.match(r"helm (install|upgrade)\b", command):
                commands.append(command)
    return commands


def arguments(command: str) -> list[str]:
    for expression, value in SHELL_VALUES.items():
        command = command.replace(expression, value)
    assert "$" not in command, f"a shell value this test does not know: {command}"
    return shlex.split(command)[2:]


def render(command: str) -> list[dict]:
    """``helm template`` of the command (an upgrade carries all its values: the doc uses no --reuse-values)."""
    args = [a for a in arguments(command) if a not in NOT_FOR_TEMPLATE]
    result = subprocess.run([kv.HELM, "template", *args], cwd=ROOT, capture_output=True, text=True, check=False)
    assert result.returncode == 0, f"{command}\n{result.stderr}"
    return [d for d in yaml.safe_load_all(result.stdout) if d]


def test_the_section_has_a_helm_command_per_path() -> None:
    assert len(helm_commands()) >= 7, helm_commands()


@pytest.mark.parametrize("command", helm_commands())
def test_helm_command_renders_as_written(command: str) -> None:
    docs = render(command)
    assert any(d["kind"] == "Deployment" for d in docs)


def test_the_commands_cover_every_source_and_the_canary() -> None:
    seen: set[str] = set()
    for command in helm_commands():
        for deployment in (d for d in render(command) if d["kind"] == "Deployment"):
            spec = deployment["spec"]["template"]["spec"]
            env = {e["name"]: e.get("value") for e in spec["containers"][0].get("env", [])}
            volumes = {v["name"]: v for v in spec["volumes"]}
            track = deployment["spec"]["template"]["metadata"]["labels"]["track"]
            if "initContainers" in spec:
                url = spec["initContainers"][0]["args"][1]
                source = "url-s3" if url.startswith("s3://") else "url-https"
            elif "model" in volumes:
                source = "pvc" if "persistentVolumeClaim" in volumes["model"] else "imageVolume"
            else:
                source = "image"
            seen.add(f"{track}:{source}")
            # Every path serves the team's model (name from the values), and pins it: a sha256 or a digest.
            assert env["FERRY_MODEL__NAME"] == "fraud", command
            image = spec["containers"][0]["image"]
            pins = [env.get("FERRY_MODEL__SHA256"), "@sha256:" in str(volumes.get("model")), "@sha256:" in image]
            assert any(pins), f"{track} of {command}: no pin"
    assert {"stable:image", "stable:url-https", "stable:url-s3", "stable:pvc", "stable:imageVolume"} <= seen
    assert "canary:url-https" in seen, seen
