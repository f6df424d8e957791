"""Publish a release: both images, the packaged chart, then install it from the registry by digest.

    python scripts/release.py --local                                   # make release-local
    python scripts/release.py --registry ghcr.io/OWNER --app-version 0.2.0 --notes notes.md

Steps, the same against a local registry and against GHCR (.github/workflows/release-gate.yml):

1. ``podman push`` of the service and load-test images ``make image`` built, to
   ``REGISTRY/ferry:VERSION`` and ``REGISTRY/ferry-loadtest:VERSION``; the digest is the one podman
   wrote (``--digestfile``), i.e. of the manifest the registry stored;
2. ``helm package`` of deploy/helm/ferry (``--app-version`` when given, so the chart's default tag is
   the pushed one) and ``helm push`` to ``oci://REGISTRY/charts``; its digest from helm's output;
3. ``helm template`` of the chart pulled back from the registry **by its digest**, with
   ``image.digest`` = the pushed service digest and the gate image the pushed load-test image (the
   SLO gate Job and the ``helm test`` pod on, so every pod the chart makes is rendered);
4. every image reference of that rendering must be in REGISTRY and resolve there: a manifest request
   by digest (or by tag) through the registry's HTTP API answers 200 with the expected
   ``Docker-Content-Digest``. A reference outside REGISTRY (a default that bypassed the values) fails.

The digests are printed, written to ``OUT/release.json`` and, with ``--notes``, as a Markdown
section for the release notes. ``--local`` starts Debian's docker-registry on a free port of
127.0.0.1 with a temporary storage directory (scripts/local_registry.py) and stops it at the end.
For a registry that asks for a token (GHCR), ``REGISTRY_USERNAME``/``REGISTRY_PASSWORD`` are used
for the manifest requests; podman and helm use their own logins.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx
import yaml
from local_registry import LocalRegistry

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "deploy/helm/ferry"
HELM = os.environ.get("HELM", str(ROOT / ".tools/bin/helm"))
SERVICE_IMAGE = os.environ.get("SERVICE_IMAGE", "localhost/ferry:dev")
GATE_IMAGE = os.environ.get("GATE_IMAGE", "localhost/ferry-loadtest:dev")
DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
MANIFEST_TYPES = ", ".join(
    (
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.oci.image.index.v1+json",
        "application/vnd.docker.distribution.manifest.v2+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
    )
)


class ReleaseError(RuntimeError):
    pass


@dataclass(frozen=True)
class Artifact:
    """One pushed artifact: where it is and the digest that pins it."""

    name: str  # ferry | ferry-loadtest | chart
    reference: str  # REGISTRY/ferry:0.1.0, REGISTRY/charts/ferry:0.2.0
    digest: str

    @property
    def pinned(self) -> str:
        return f"{self.reference.rsplit(':', 1)[0]}@{self.digest}"


@dataclass(frozen=True)
class Release:
    registry: str
    chart_version: str
    app_version: str
    artifacts: tuple[Artifact, ...]
    rendered_images: tuple[str, ...]

    def artifact(self, name: str) -> Artifact:
        (found,) = [a for a in self.artifacts if a.name == name]
        return found

    def notes(self) -> str:
        chart = self.artifact("chart")
        lines = [
            "## Digests",
            "",
            "| Artifact | Reference | Digest |",
            "|---|---|---|",
            *(f"| {a.name} | `{a.reference}` | `{a.digest}` |" for a in self.artifacts),
            "",
            "Install by digest (docs/deploy.md):",
            "",
            "```bash",
            f"helm upgrade --install ferry oci://{chart.pinned} -n ferry --create-namespace \\",
            f"  -f prod.yaml --set image.digest={self.artifact('ferry').digest}  # prod.yaml: the environment's",
            "```",
        ]
        return "\n".join(lines) + "\n"


def run(argv: list[str], *, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    if result.returncode != 0:
        raise ReleaseError(f"{' '.join(argv)} -> exit {result.returncode}:\n{result.stderr.strip()[-3000:]}")
    return result


def chart_metadata() -> dict[str, Any]:
    meta: dict[str, Any] = yaml.safe_load((CHART / "Chart.yaml").read_text())
    return meta


def push_image(source: str, target: str, *, plain_http: bool, workdir: Path) -> str:
    """``podman push`` SOURCE to TARGET; the digest of the manifest the registry stored."""
    digestfile = workdir / (target.rsplit("/", 1)[-1].replace(":", "_") + ".digest")
    tls = ["--tls-verify=false"] if plain_http else []
    run(["podman", "push", *tls, "--digestfile", str(digestfile), source, target])
    digest = digestfile.read_text().strip()
    if not DIGEST.fullmatch(digest):
        raise ReleaseError(f"podman push {target}: no digest in {digestfile} ({digest!r})")
    return digest


def push_chart(registry: str, *, app_version: str | None, plain_http: bool, workdir: Path) -> tuple[str, str]:
    """``helm package`` + ``helm push``: (oci reference with its version tag, digest)."""
    package = run(
        [HELM, "package", str(CHART), "-d", str(workdir), *(["--app-version", app_version] if app_version else [])]
    )
    tgz = package.stdout.strip().rsplit(": ", 1)[-1]
    pushed = run([HELM, "push", tgz, f"oci://{registry}/charts", *(["--plain-http"] if plain_http else [])])
    output = pushed.stdout + pushed.stderr
    ref = re.search(r"Pushed: (\S+)", output)
    digest = DIGEST.search(output.split("Digest:", 1)[-1])
    if ref is None or digest is None:
        raise ReleaseError(f"helm push: no reference or digest in its output:\n{output}")
    return ref.group(1), digest.group(0)


def image_values(prefix: str, name: str, values: dict[str, Any]) -> list[str]:
    """``--set`` arguments pointing ``image`` at REGISTRY/NAME, in the shape the chart's values have:
    a separate ``image.registry`` when the chart declares one, else the full repository."""
    host, _, namespace = prefix.partition("/")
    if "registry" in values.get("image", {}):
        return ["--set", f"image.registry={host}", "--set", f"image.repository={namespace}/{name}".replace("=/", "=")]
    return ["--set", f"image.repository={prefix}/{name}"]


def render_from_registry(
    chart: Artifact, service: Artifact, gate: Artifact, *, registry: str, plain_http: bool
) -> list[dict[str, Any]]:
    """``helm template`` of the chart pulled from the registry by digest, images by the pushed digests."""
    values: dict[str, Any] = yaml.safe_load((CHART / "values.yaml").read_text())
    gate_image = values["rollout"]["analysis"]["gate"]["image"]
    args = [
        HELM,
        "template",
        "ferry",
        f"oci://{chart.pinned}",
        "--namespace",
        "ferry",
        *(["--plain-http"] if plain_http else []),
        *image_values(registry, "ferry", values),
        "--set",
        f"image.digest={service.digest}",
        "--set",
        "loadtest.enabled=true",
        "--set",
        f"rollout.analysis.gate.image.repository={gate.reference.rsplit(':', 1)[0]}",
    ]
    if "digest" in gate_image:  # pin the gate too when the chart takes a digest for it
        args += ["--set", f"rollout.analysis.gate.image.digest={gate.digest}"]
    else:
        args += ["--set", f"rollout.analysis.gate.image.tag={gate.reference.rsplit(':', 1)[1]}"]
    return [d for d in yaml.safe_load_all(run(args).stdout) if d]


def image_references(docs: list[dict[str, Any]]) -> list[str]:
    """Every ``image:`` of every container and init container, wherever it is nested."""
    found: list[str] = []

    def walk(node: Any) -> Iterator[str]:
        if isinstance(node, dict):
            for key, value in node.items():
                if key in ("containers", "initContainers", "ephemeralContainers") and isinstance(value, list):
                    yield from (c["image"] for c in value if isinstance(c, dict) and "image" in c)
                yield from walk(value)
        elif isinstance(node, list):
            for item in node:
                yield from walk(item)

    for doc in docs:
        found.extend(walk(doc))
    return sorted(set(found))


def split_reference(ref: str) -> tuple[str, str, str]:
    """REGISTRY/REPO@DIGEST or REGISTRY/REPO:TAG -> (registry host, repository, digest or tag)."""
    if "@" in ref:
        name, reference = ref.split("@", 1)
    else:
        name, _, reference = ref.rpartition(":")
        if not name or "/" in reference:
            raise ReleaseError(f"{ref}: neither a digest nor a tag")
    host, _, repository = name.partition("/")
    return host, repository, reference


def manifest_digest(ref: str, *, plain_http: bool) -> str | None:
    """The digest the registry answers for REF's manifest (HEAD /v2/<repo>/manifests/<digest|tag>),
    or None when it does not know it. Follows a Bearer challenge (GHCR) for a pull token."""
    host, repository, reference = split_reference(ref)
    url = f"{'http' if plain_http else 'https'}://{host}/v2/{repository}/manifests/{reference}"
    headers = {"Accept": MANIFEST_TYPES}
    with httpx.Client(timeout=30) as client:
        response = client.head(url, headers=headers)
        challenge = response.headers.get("www-authenticate", "")
        if response.status_code == 401 and challenge.lower().startswith("bearer "):
            params = dict(re.findall(r'(\w+)="([^"]*)"', challenge))
            user, password = os.environ.get("REGISTRY_USERNAME"), os.environ.get("REGISTRY_PASSWORD")
            token = client.get(
                params.pop("realm"),
                params={**params, "scope": f"repository:{repository}:pull"},
                auth=(user, password) if user and password else None,
            ).json()
            headers["Authorization"] = f"Bearer {token.get('token') or token.get('access_token')}"
            response = client.head(url, headers=headers)
    if response.status_code == 404:
        return None
    if response.status_code != 200:
        raise ReleaseError(f"HEAD {url} -> {response.status_code}")
    return response.headers.get("docker-content-digest")


def verify(images: list[str], artifacts: tuple[Artifact, ...], *, registry: str, plain_http: bool) -> list[str]:
    """Problems with the rendered image references: outside the registry, unknown to it, or resolving
    to another digest than the one pushed."""
    pushed = {a.reference.rsplit(":", 1)[0]: a.digest for a in artifacts}
    problems = []
    for ref in images:
        if not ref.startswith(registry + "/"):
            problems.append(f"{ref}: not in {registry} (a value the release did not set)")
            continue
        name = ref.split("@", 1)[0] if "@" in ref else ref.rpartition(":")[0]
        answered = manifest_digest(ref, plain_http=plain_http)
        if answered is None:
            problems.append(f"{ref}: the registry has no such manifest")
        elif answered != pushed.get(name):
            problems.append(f"{ref}: resolves to {answered}, but {pushed.get(name)} was pushed")
    return problems


def publish(registry: str, *, app_version: str | None = None, plain_http: bool = False, workdir: Path) -> Release:
    meta = chart_metadata()
    version = app_version or str(meta["appVersion"])
    service = Artifact(
        "ferry",
        f"{registry}/ferry:{version}",
        push_image(SERVICE_IMAGE, f"{registry}/ferry:{version}", plain_http=plain_http, workdir=workdir),
    )
    gate = Artifact(
        "ferry-loadtest",
        f"{registry}/ferry-loadtest:{version}",
        push_image(GATE_IMAGE, f"{registry}/ferry-loadtest:{version}", plain_http=plain_http, workdir=workdir),
    )
    chart = Artifact("chart", *push_chart(registry, app_version=app_version, plain_http=plain_http, workdir=workdir))
    docs = render_from_registry(chart, service, gate, registry=registry, plain_http=plain_http)
    images = image_references(docs)
    if service.pinned not in images:
        raise ReleaseError(f"the rendering does not run {service.pinned}: {images}")
    problems = verify(images, (service, gate, chart), registry=registry, plain_http=plain_http)
    if problems:
        raise ReleaseError("rendered image references that do not resolve:\n  " + "\n  ".join(problems))
    return Release(registry, str(meta["version"]), version, (service, gate, chart), tuple(images))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--local", action="store_true", help="start docker-registry on 127.0.0.1 and publish there")
    where.add_argument("--registry", help="REGISTRY/NAMESPACE to publish to, e.g. ghcr.io/ferry-serving")
    parser.add_argument("--plain-http", action="store_true", help="the registry speaks plain HTTP")
    parser.add_argument("--app-version", help="image tag and the packaged chart's appVersion (default: Chart.yaml's)")
    parser.add_argument("--out", type=Path, help="directory for release.json and the chart package")
    parser.add_argument("--notes", type=Path, help="write the digests as a Markdown section here")
    args = parser.parse_args()
    start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="ferry-release-") as tmp:
        workdir = args.out or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        try:
            if args.local:
                with LocalRegistry(Path(tmp) / "registry") as local:
                    print(f"release: docker-registry on {local.host} (storage {local.workdir / 'data'})")
                    release = publish(
                        f"{local.host}/ferry-serving", app_version=args.app_version, plain_http=True, workdir=workdir
                    )
            else:
                release = publish(
                    args.registry, app_version=args.app_version, plain_http=args.plain_http, workdir=workdir
                )
        except ReleaseError as error:
            print(f"release: FAILED: {error}", file=sys.stderr)
            return 1
        (workdir / "release.json").write_text(json.dumps(asdict(release), indent=2) + "\n")
        if args.notes:
            args.notes.write_text(release.notes())
    for artifact in release.artifacts:
        print(f"release: {artifact.name:<15} {artifact.reference}  {artifact.digest}")
    for image in release.rendered_images:
        print(f"release: rendered from oci://{release.artifact('chart').pinned} runs {image}: resolves")
    print(f"release: pushed, installed from the registry by digest and resolved in {time.monotonic() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
