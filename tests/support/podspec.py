"""One container of a rendered pod template, as ``podman run`` options: what a kubelet would apply.

Used to run a built image the way the chart's pod spec runs it, with the values taken from
``helm template`` output rather than copied into tests. Every field of the pod spec and of the
container is either applied, or named below as not applicable to one container under podman (with
the reason); a field in neither list raises, so a chart change is never dropped silently.

Applied: the pod's runAsUser/runAsGroup (``--user``), seccompProfile RuntimeDefault (podman's
default profile), the container's command (``--entrypoint``) and args, envFrom ConfigMaps and
literal env, the securityContext (readOnlyRootFilesystem -> ``--read-only`` without podman's
extra tmpfs mounts, allowPrivilegeEscalation false -> ``no-new-privileges``, capabilities), resource
limits (``--cpus``, ``--memory``; listed in ``skipped`` instead where podman has no such cgroup
controller), each emptyDir volume mount as a tmpfs of its sizeLimit, and each image volume
(model.source imageVolume) as podman's read-only image mount. Probes, the preStop hook
and terminationGracePeriodSeconds are returned for the test to act on.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from support.podman import Container, cgroup_controllers

# Pod fields with no meaning for a single container under podman, and why.
POD_NOT_APPLICABLE = {
    "serviceAccountName": "no API server",
    "automountServiceAccountToken": "no API server (and false: nothing to mount)",
    "enableServiceLinks": "no Services to link",
    "topologySpreadConstraints": "scheduling",
    "nodeSelector": "scheduling",
    "tolerations": "scheduling",
    "affinity": "scheduling",
    "priorityClassName": "scheduling",
    "imagePullSecrets": "the image is local",
    "restartPolicy": "the test decides what an exit means",
}
POD_APPLIED = {"securityContext", "containers", "volumes", "terminationGracePeriodSeconds"}
CONTAINER_NOT_APPLICABLE = {
    "name": "the container is named by the test",
    "image": "replaced by the locally built image",
    "imagePullPolicy": "the image is local",
    "ports": "returned as `ports`; the test publishes the one it needs",
    "startupProbe": "returned; the test polls instead of a kubelet",
    "readinessProbe": "returned; the test polls instead of a kubelet",
    "livenessProbe": "returned; the test polls instead of a kubelet",
    "lifecycle": "returned as `pre_stop_s`; there are no endpoints to leave before SIGTERM",
}
CONTAINER_APPLIED = {"command", "args", "env", "envFrom", "resources", "securityContext", "volumeMounts"}
CONTAINER_SECURITY = {
    "allowPrivilegeEscalation",
    "readOnlyRootFilesystem",
    "runAsNonRoot",
    "runAsUser",
    "runAsGroup",
    "privileged",
    "capabilities",
}
POD_SECURITY = {"runAsNonRoot", "runAsUser", "runAsGroup", "fsGroup", "seccompProfile"}
UNITS = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "k": 10**3, "M": 10**6, "G": 10**9, "": 1}


def quantity_bytes(value: str | int) -> int:
    """A Kubernetes memory quantity (``256Mi``, ``1G``, ``1048576``) in bytes."""
    match = re.fullmatch(r"(\d+)([KMG]i?|k)?", str(value))
    if not match:
        raise ValueError(f"unsupported quantity {value!r}")
    return int(match.group(1)) * UNITS[match.group(2) or ""]


def cpus(value: str | int | float) -> str:
    """A Kubernetes CPU quantity (``2``, ``500m``) as ``--cpus``."""
    text = str(value)
    return str(int(text[:-1]) / 1000) if text.endswith("m") else text


@dataclass
class PodRun:
    """How to run one container of a pod: ``podman run`` options plus what the test acts on itself."""

    entrypoint: list[str] | None
    args: list[str]
    env: dict[str, str]
    options: list[str]
    ports: dict[str, int]
    user: tuple[int, int]
    grace_period_s: int
    pre_stop_s: int
    probes: dict[str, dict[str, Any]] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)  # what could not be applied here, and why


def _unknown(kind: str, keys: set[str], known: set[str]) -> None:
    unknown = sorted(keys - known)
    if unknown:
        raise ValueError(f"{kind} fields not handled by tests/support/podspec.py: {unknown} (apply or list them there)")


def pod_run(template: dict, configmaps: dict[str, dict[str, str]], container: str) -> PodRun:
    """The container ``container`` of a pod ``template`` (``spec.template`` of a Deployment or Job)."""
    spec = template["spec"]
    _unknown("pod", set(spec), POD_APPLIED | set(POD_NOT_APPLICABLE))
    pod_security = spec.get("securityContext", {})
    _unknown("pod securityContext", set(pod_security), POD_SECURITY)
    if pod_security.get("seccompProfile", {"type": "RuntimeDefault"})["type"] != "RuntimeDefault":
        raise ValueError("only the RuntimeDefault seccomp profile (podman's default) is supported")
    (c,) = [c for c in spec["containers"] if c["name"] == container]
    _unknown("container", set(c), CONTAINER_APPLIED | set(CONTAINER_NOT_APPLICABLE))
    security = c.get("securityContext", {})
    _unknown("container securityContext", set(security), CONTAINER_SECURITY)
    user = int(security.get("runAsUser", pod_security.get("runAsUser", 0)))
    group = int(security.get("runAsGroup", pod_security.get("runAsGroup", user)))
    if (security.get("runAsNonRoot") or pod_security.get("runAsNonRoot")) and user == 0:
        raise ValueError("runAsNonRoot without a non-zero runAsUser: the kubelet would refuse to start it")

    options = ["--user", f"{user}:{group}"]
    fs_group = pod_security.get("fsGroup")
    if fs_group is not None and int(fs_group) != group:
        options.append(f"--group-add={fs_group}")  # the kubelet adds fsGroup to the container's groups
    if security.get("readOnlyRootFilesystem"):
        # Kubernetes mounts nothing writable the pod does not declare; podman's --read-only would add
        # tmpfs on /tmp, /run, /var/tmp and /dev/shm unless told not to.
        options += ["--read-only", "--read-only-tmpfs=false"]
    if security.get("allowPrivilegeEscalation") is False:
        options += ["--security-opt", "no-new-privileges"]
    if security.get("privileged"):
        options.append("--privileged")
    capabilities = security.get("capabilities", {})
    options += [f"--cap-drop={cap}" for cap in capabilities.get("drop", [])]
    options += [f"--cap-add={cap}" for cap in capabilities.get("add", [])]
    limits = c.get("resources", {}).get("limits", {})  # requests only schedule
    wanted = {}
    if "cpu" in limits:
        wanted["cpu"] = f"--cpus={cpus(limits['cpu'])}"
    if "memory" in limits:
        wanted["memory"] = f"--memory={quantity_bytes(limits['memory'])}"
    skipped: list[str] = []
    for resource, option in wanted.items():
        if resource in cgroup_controllers():
            options.append(option)
        else:  # rootless podman without the controller delegated (cgroup v2) refuses the option
            skipped.append(f"resources.limits.{resource}: podman has no {resource} cgroup controller here")

    volumes = {v["name"]: v for v in spec.get("volumes", [])}
    for mount in c.get("volumeMounts", []):
        volume = volumes[mount["name"]]
        if set(volume) == {"name", "image"}:
            # A Kubernetes image volume: the image's files, read-only, at the mount. podman mounts an
            # image the same way (--mount type=image is read-only unless rw=true); it must be local.
            if mount.get("subPath"):
                raise ValueError(f"volume {mount['name']}: podman's image mount has no subPath")
            reference = volume["image"]["reference"]
            options += ["--mount", f"type=image,source={reference},destination={mount['mountPath']}"]
            continue
        if set(volume) != {"name", "emptyDir"}:
            raise ValueError(
                f"volume {mount['name']}: only emptyDir and image volumes are supported, not {sorted(volume)}"
            )
        size = volume["emptyDir"].get("sizeLimit")
        # An emptyDir is writable by the pod's users (mode 0777 + fsGroup); a tmpfs with the sticky bit
        # is the same for one container. medium: Memory is a tmpfs in Kubernetes too.
        tmpfs = "rw,mode=1777" + (f",size={quantity_bytes(size)}" if size else "")
        options += ["--tmpfs", f"{mount['mountPath']}:{tmpfs}"]

    env: dict[str, str] = {}
    for source in c.get("envFrom", []):
        if set(source) != {"configMapRef"}:
            raise ValueError(f"envFrom {source}: only configMapRef is supported")
        env.update(configmaps[source["configMapRef"]["name"]])
    for item in c.get("env", []):
        if "value" not in item:
            raise ValueError(f"env {item['name']}: only literal values are supported")
        env[item["name"]] = str(item["value"])

    pre_stop = c.get("lifecycle", {}).get("preStop", {})
    if "sleep" in pre_stop:
        pre_stop_s = int(pre_stop["sleep"]["seconds"])
    elif "exec" in pre_stop and pre_stop["exec"]["command"][0] == "sleep":
        pre_stop_s = int(pre_stop["exec"]["command"][1])
    elif not pre_stop:
        pre_stop_s = 0
    else:
        raise ValueError(f"preStop {pre_stop}: only a sleep is supported")
    return PodRun(
        entrypoint=c.get("command"),
        args=[str(a) for a in c.get("args", [])],
        env=env,
        options=options,
        ports={p.get("name", str(p["containerPort"])): int(p["containerPort"]) for p in c.get("ports", [])},
        user=(user, group),
        grace_period_s=int(spec.get("terminationGracePeriodSeconds", 30)),
        pre_stop_s=pre_stop_s,
        probes={k: c[k] for k in ("startupProbe", "readinessProbe", "livenessProbe") if k in c},
        skipped=skipped,
    )


def container(
    pod: PodRun,
    image: str,
    *,
    prefix: str,
    env: Mapping[str, str] | None = None,
    args: Sequence[str] | None = None,
    publish: str | None = "http",
) -> Container:
    """A Container (not started) of ``image`` run as ``pod`` says; ``env`` adds to or overrides the pod's,
    ``args`` replace its args, ``publish`` names the container port to reach from the host."""
    return Container(
        image,
        pod.args if args is None else args,
        prefix=prefix,
        entrypoint=pod.entrypoint,
        env={**pod.env, **(env or {})},
        publish=pod.ports[publish] if publish else None,
        options=pod.options,
    )
