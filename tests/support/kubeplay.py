"""A rendered release run with ``podman kube play``: its Deployments (with the ConfigMaps and Secrets
they read) become pods of containers, on a network of the test's own, and are stopped with the
pods' grace period and removed with ``podman kube down``.

    with Release(docs, network, tmp_path) as release:
        stable = release.pod("kp1-ferry")      # the pod of Deployment kp1-ferry
        stable.wait_ready()                    # the rendered readiness probe, at the pod's IP
        httpx.get(stable.url("/api/v1/models"))
        codes = release.stop()                 # SIGTERM, SIGKILL after terminationGracePeriodSeconds
    # leaving the block: podman kube down

What podman 4.3 does with what the chart renders was found by trying it (and from podman-kube-play(1)
of that version). Every pod and container field is either played as Kubernetes would apply it, or
stripped or rewritten below with the reason; a field in none of these lists raises, so a chart change
is never dropped silently. ``Release.changes`` lists what was changed (``str(release)`` prints them).

- Kinds: podman 4.3 plays Pod, Deployment, PersistentVolumeClaim and ConfigMap (the ConfigMaps of
  the same file feed ``envFrom``), and a Secret too, though in a form its own ``secretKeyRef`` cannot
  read, so ``Release.play`` makes the podman secrets itself; Services, NetworkPolicies, HPAs, PDBs,
  ServiceAccounts and custom resources are not played. Pods are reached at their IPs, as a Service
  reaches its endpoints; one pod per Deployment.
- Names: the release name of the rendering names every pod (``<deployment>-pod-0``) and container
  (``<pod>-<container>``); a unique release name keeps tests apart on a shared machine. Each pod
  template gets the label ``io.ferry.test.session`` so leftovers of a crashed test can be removed.
"""

from __future__ import annotations

import base64
import copy
import json
import subprocess
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import httpx
import yaml

from support.podman import SESSION, SESSION_LABEL, podman

PLAYED_KINDS = ("ConfigMap", "Secret", "Deployment")

# Pod fields podman 4.3 applies as a kubelet would (checked by the tests on the running containers).
POD_PLAYED = {"containers", "initContainers", "securityContext", "volumes"}
# Pod fields removed before playing, and why.
POD_STRIPPED = {
    "serviceAccountName": "no API server, no ServiceAccount (podman ignores it)",
    "automountServiceAccountToken": "no API server: there is no token to mount (false in the chart anyway)",
    "enableServiceLinks": "no Services, so no service environment variables (false in the chart anyway)",
    "topologySpreadConstraints": "scheduling over zones and nodes: one host here (podman ignores it)",
    "nodeSelector": "scheduling: one host here",
    "tolerations": "scheduling: one host here",
    "affinity": "scheduling: one host here",
    "priorityClassName": "scheduling: one host here",
    "imagePullSecrets": "the images are local (pullPolicy Never)",
    "terminationGracePeriodSeconds": (
        "podman 4.3 ignores it (every container gets podman's 10 s stop timeout): Release.stop() stops each "
        "pod's containers with this grace period instead"
    ),
}
# Pod fields rewritten, and why.
POD_REWRITTEN = {
    "restartPolicy": (
        "Always (the only policy a Deployment allows) becomes Never: podman 4.3 gives the init containers the "
        "pod's policy, so Always restarts a model-fetch that succeeded instead of starting the serving "
        "container, and restarts a failing one in a tight loop with none of the kubelet's backoff. With Never "
        "each container runs once and the test sees every exit"
    ),
    "volumes[].name": (
        "podman 4.3 plays an emptyDir as a named volume called after the pod's volume (tmp, metrics), which two "
        "pods of one release would share (and with it the prometheus multiprocess files); each volume is "
        "renamed <pod>-<volume>. Its sizeLimit and medium: Memory are not applied (a directory on disk). A "
        "persistentVolumeClaim is played as the podman volume named after its claimName (the test creates it)"
    ),
}
# Container fields podman 4.3 applies as a kubelet would.
CONTAINER_PLAYED = {
    "name",
    "image",
    "imagePullPolicy",
    "command",
    "args",
    "env",
    "envFrom",
    "resources",  # limits: cgroup memory and CPU; requests only schedule
    "securityContext",  # runAsUser/Group, readOnlyRootFilesystem, capabilities, allowPrivilegeEscalation
    "volumeMounts",
}
# Container fields removed before playing, and why.
CONTAINER_STRIPPED = {
    "ports": (
        "podman 4.3 publishes every containerPort on the host at the same number (a missing hostPort defaults "
        "to containerPort): two pods of one release collide on :8000, and so would anything else of the "
        "machine's; in Kubernetes a containerPort publishes nothing. The pods are reached at their IPs"
    ),
    "startupProbe": "podman 4.3 ignores it: the test polls the rendered probe at the pod's IP, as a kubelet would",
    "readinessProbe": "podman 4.3 ignores it: the test polls the rendered probe at the pod's IP, as a kubelet would",
    "livenessProbe": (
        "podman 4.3 turns it into a HEALTHCHECK that runs curl (not in the image) against port 0 (a named port "
        "is not resolved), which could never pass: the test polls the rendered probe itself"
    ),
    "lifecycle": (
        "podman 4.3 has no preStop hook; the sleep exists to let endpoints drop the pod before SIGTERM, and "
        "there are no endpoints here (the drain is tested without it: the stricter case)"
    ),
    "terminationMessagePolicy": (
        "podman keeps a container's whole log (podman logs), which holds the line FallbackToLogsOnError shows"
    ),
}


def playable(docs: Iterable[dict]) -> tuple[list[dict], list[str]]:
    """The documents ``podman kube play`` gets, and every change made to them (``kind/name: field: why``)."""
    played, changes = [], []
    for doc in docs:
        if doc["kind"] not in PLAYED_KINDS:
            continue
        doc = copy.deepcopy(doc)
        played.append(doc)
        if doc["kind"] != "Deployment":
            continue
        where = f"Deployment/{doc['metadata']['name']}"
        template = doc["spec"]["template"]
        template["metadata"].setdefault("labels", {})[SESSION_LABEL] = SESSION
        spec = template["spec"]
        unknown = set(spec) - POD_PLAYED - set(POD_STRIPPED) - {"restartPolicy"}
        if unknown:
            raise ValueError(f"{where}: pod fields not handled by tests/support/kubeplay.py: {sorted(unknown)}")
        for field in sorted(set(spec) & set(POD_STRIPPED)):
            del spec[field]
            changes.append(f"{where}: {field} stripped: {POD_STRIPPED[field]}")
        spec["restartPolicy"] = "Never"
        changes.append(f"{where}: restartPolicy Never: {POD_REWRITTEN['restartPolicy']}")
        prefix = f"{doc['metadata']['name']}-"
        for volume in spec.get("volumes", []):
            volume["name"] = prefix + volume["name"]
        containers = [*spec.get("initContainers", []), *spec["containers"]]
        for container in containers:
            unknown = set(container) - CONTAINER_PLAYED - set(CONTAINER_STRIPPED)
            if unknown:
                raise ValueError(f"{where}: container fields not handled by kubeplay.py: {sorted(unknown)}")
            for field in sorted(set(container) & set(CONTAINER_STRIPPED)):
                del container[field]
                changes.append(f"{where}/{container['name']}: {field} stripped: {CONTAINER_STRIPPED[field]}")
            for mount in container.get("volumeMounts", []):
                if mount.get("subPath"):  # a model.pvc.subPath or model.imageVolume.subPath
                    raise ValueError(f"{where}: podman 4.3 ignores a volumeMount's subPath; render without one")
                mount["name"] = prefix + mount["name"]
        changes.append(f"{where}: volumes renamed {prefix}*: {POD_REWRITTEN['volumes[].name']}")
    return played, changes


@dataclass
class Pod:
    """One played pod: its rendered template (before the changes) and podman's names for it."""

    name: str
    template: dict
    network: str

    def container(self, name: str) -> str:
        return f"{self.name}-{name}"

    @property
    def ip(self) -> str:
        infra = json.loads(podman("pod", "inspect", self.name).stdout)["InfraContainerID"]
        networks = json.loads(podman("container", "inspect", infra).stdout)[0]["NetworkSettings"]["Networks"]
        return networks[self.network]["IPAddress"]

    def port(self, name: int | str, container: str = "ferry") -> int:
        """A named (or numbered) port of a container, resolved against its rendered ports."""
        (rendered,) = [c for c in self.template["spec"]["containers"] if c["name"] == container]
        for declared in rendered["ports"]:
            if name in (declared["name"], declared["containerPort"]):
                return int(declared["containerPort"])
        raise KeyError(f"{container} declares no port {name!r}")

    def url(self, path: str = "", port: int | str = "http") -> str:
        return f"http://{self.ip}:{self.port(port)}{path}"

    def probe(self, kind: str, container: str = "ferry") -> str:
        """The URL of a rendered probe (startupProbe, readinessProbe, livenessProbe) of a container."""
        (rendered,) = [c for c in self.template["spec"]["containers"] if c["name"] == container]
        get = rendered[kind]["httpGet"]
        return self.url(get["path"], get["port"])

    def state(self, container: str = "ferry") -> dict:
        return json.loads(podman("container", "inspect", self.container(container)).stdout)[0]["State"]

    def logs(self, container: str = "ferry") -> str:
        result = podman("logs", self.container(container), check=False)
        return result.stdout + result.stderr

    def wait_ready(self, timeout: float = 120) -> None:
        """Poll the rendered readiness probe until it answers 200; fail early, with the logs, on an exit."""
        url, deadline, last = self.probe("readinessProbe"), time.monotonic() + timeout, None
        while time.monotonic() < deadline:
            try:
                last = httpx.get(url, timeout=2).status_code
                if last == 200:
                    return
            except httpx.HTTPError as exc:
                last = exc
            state = self.state()
            if state["Status"] == "exited":
                raise RuntimeError(f"{self.name}: ferry exited with {state['ExitCode']}:\n{self.logs()[-3000:]}")
            time.sleep(0.3)
        raise TimeoutError(f"{self.name}: {url} never answered 200 (last: {last!r}):\n{self.logs()[-3000:]}")


class Release:
    """The played objects of one rendering (``docs``, as ``helm template`` printed them) on ``network``."""

    def __init__(self, docs: Iterable[dict], network: str, scratch: Path) -> None:
        self.rendered = [d for d in docs if d]
        self.network = network
        self.played, self.changes = playable(self.rendered)
        self.file = scratch / f"kube-play-{uuid.uuid4().hex[:8]}.yaml"
        self.file.write_text(yaml.safe_dump_all([d for d in self.played if d["kind"] != "Secret"], sort_keys=False))
        self.secrets = [d for d in self.played if d["kind"] == "Secret"]
        self.play_result: subprocess.CompletedProcess[str] | None = None

    def play(self) -> subprocess.CompletedProcess[str]:
        """``podman kube play``; its result (it fails when an init container fails, and the pod stays).

        Secrets first, made by the test: podman 4.3 plays a Secret document, but stores it as YAML, while
        its secretKeyRef reads a podman secret as a JSON map of key to base64 value (a played Secret
        fails with "is not valid JSON"); the test creates that map from the Secret's data and stringData."""
        for secret in self.secrets:
            data = {k: base64.b64encode(v.encode()).decode() for k, v in secret.get("stringData", {}).items()}
            podman(
                "secret",
                "create",
                secret["metadata"]["name"],
                "-",
                input=json.dumps({**secret.get("data", {}), **data}),
            )
        self.play_result = podman("kube", "play", "--network", self.network, str(self.file), check=False, timeout=300)
        return self.play_result

    def pod(self, deployment: str) -> Pod:
        (rendered,) = [d for d in self.rendered if d["kind"] == "Deployment" and d["metadata"]["name"] == deployment]
        return Pod(f"{deployment}-pod-0", rendered["spec"]["template"], self.network)

    @property
    def pods(self) -> list[Pod]:
        return [self.pod(d["metadata"]["name"]) for d in self.rendered if d["kind"] == "Deployment"]

    def stop(self) -> dict[str, int]:
        """Stop every pod's containers at once, each with its rendered terminationGracePeriodSeconds
        (SIGTERM, then SIGKILL when it runs out), as a kubelet does; the serving containers' exit codes.

        The containers, not the pods: ``podman pod stop`` of 4.3 stops the pod's infra container at the
        same moment, which takes the network namespace away while the server still drains (the answers
        to requests in flight are lost). A kubelet removes the sandbox only after its containers exited."""
        stopping = []
        for pod in self.pods:
            grace = int(pod.template["spec"].get("terminationGracePeriodSeconds", 30))
            names = [pod.container(c["name"]) for c in pod.template["spec"]["containers"]]
            argv = ["podman", "stop", "--time", str(grace), *names]
            stopping.append((pod, grace, subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)))
        for _, grace, process in stopping:
            process.wait(timeout=grace + 60)
        return {pod.name: int(pod.state()["ExitCode"]) for pod, _, _ in stopping}

    def down(self) -> None:
        """``podman kube down``: the pods and their (emptyDir) volumes removed. Safe to call twice; a pod
        that a failed play left half made is removed by name."""
        podman("kube", "down", str(self.file), check=False, timeout=180)
        names = [pod.name for pod in self.pods]
        podman("pod", "rm", "--force", "--ignore", "--time", "0", *names, check=False)
        for secret in self.secrets:
            podman("secret", "rm", secret["metadata"]["name"], check=False)

    def __str__(self) -> str:
        return f"{self.file.name}, changed before playing:\n" + "\n".join(f"  {c}" for c in self.changes)

    def __enter__(self) -> Release:
        self.play()
        return self

    def __exit__(self, *exc: object) -> None:
        self.down()


def remove_session_pods() -> list[str]:
    """Remove every pod this test process played and left behind (a crashed test); their names."""
    listed = podman("pod", "ps", "--filter", f"label={SESSION_LABEL}={SESSION}", "--format", "{{.Name}}")
    names = listed.stdout.split()
    if names:
        podman("pod", "rm", "--force", "--time", "0", *names, check=False)
    return names
