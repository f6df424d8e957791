"""Publishing, proven on 127.0.0.1 (`make release-local`, scripts/release.py): both images `make image`
built pushed with podman to Debian's docker-registry, the packaged chart pushed with `helm push`, the
chart pulled back from the registry by its digest and rendered with `image.digest` = the pushed digest,
and every rendered image reference resolving in the registry. One publish per module (about 20 s):
the tests then read what the registry holds through its HTTP API, independently of the script."""

from __future__ import annotations

import subprocess
import sys
import tarfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from support.podman import GATE_IMAGE, SERVICE_IMAGE, image_inspect
from support.registry import Registry

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))

import k8s_validate as kv  # noqa: E402
import release  # noqa: E402

MANIFEST = {"Accept": release.MANIFEST_TYPES}


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    with Registry(tmp_path_factory.mktemp("registry")) as running:
        yield running


@pytest.fixture(scope="module")
def published(registry: Registry, tmp_path_factory: pytest.TempPathFactory) -> release.Release:
    kv.ensure_k8s_tools()
    return release.publish(f"{registry.host}/ferry-serving", plain_http=True, workdir=tmp_path_factory.mktemp("out"))


def manifest(ref: str) -> httpx.Response:
    host, repository, reference = release.split_reference(ref)
    return httpx.get(f"http://{host}/v2/{repository}/manifests/{reference}", headers=MANIFEST, timeout=10)


@pytest.mark.parametrize(("name", "local"), [("ferry", SERVICE_IMAGE), ("ferry-loadtest", GATE_IMAGE)])
def test_the_pushed_image_is_the_one_make_image_built(published: release.Release, name: str, local: str) -> None:
    """The manifest stored under the pushed digest names the local image's config (its image ID)."""
    artifact = published.artifact(name)
    response = manifest(artifact.pinned)
    assert response.status_code == 200, response.text
    assert response.headers["docker-content-digest"] == artifact.digest
    assert response.json()["config"]["digest"] == "sha256:" + image_inspect(local)["Id"]
    assert manifest(artifact.reference).headers["docker-content-digest"] == artifact.digest  # the tag too


def test_the_chart_is_pulled_back_by_its_digest(published: release.Release, tmp_path: Path) -> None:
    chart = published.artifact("chart")
    subprocess.run(
        [kv.HELM, "pull", f"oci://{chart.pinned}", "--plain-http", "-d", str(tmp_path)],
        check=True,
        capture_output=True,
    )
    (package,) = tmp_path.glob("*.tgz")  # helm names it ferry@sha256-<hex>.tgz
    with tarfile.open(package) as tgz:
        meta = yaml.safe_load(tgz.extractfile("ferry/Chart.yaml").read())  # type: ignore[union-attr]
    assert meta["version"] == yaml.safe_load((kv.CHART / "Chart.yaml").read_text())["version"]
    assert chart.reference.endswith(f"/charts/ferry:{meta['version']}")


def test_the_install_from_the_registry_runs_only_pushed_images_that_resolve(published: release.Release) -> None:
    """The chart rendered from oci:// by digest runs the service by the pushed digest and the gate image
    pushed beside it, and every reference answers with the digest that was pushed."""
    service, gate = published.artifact("ferry"), published.artifact("ferry-loadtest")
    assert service.pinned in published.rendered_images

    def repository(ref: str) -> str:
        host, name, _ = release.split_reference(ref)
        return f"{host}/{name}"

    assert {repository(ref) for ref in published.rendered_images} == {
        repository(service.pinned),
        repository(gate.pinned),
    }
    for ref in published.rendered_images:
        response = manifest(ref)
        assert response.status_code == 200, ref
        assert response.headers["docker-content-digest"] in (service.digest, gate.digest)


def test_a_reference_that_does_not_resolve_is_reported(published: release.Release, registry: Registry) -> None:
    service = published.artifact("ferry")
    repository = service.pinned.split("@")[0]
    missing = f"{repository}@sha256:{'0' * 64}"
    outside = "ghcr.io/ferry-serving/ferry:0.1.0"
    moved = f"{registry.host}/ferry-serving/ferry-loadtest:{published.app_version}"  # resolves, but not to ferry's
    problems = release.verify(
        [missing, outside, service.pinned],
        (service,),
        registry=f"{registry.host}/ferry-serving",
        plain_http=True,
    )
    assert len(problems) == 2, problems
    assert "has no such manifest" in problems[0] and "not in" in problems[1]
    wrong = release.verify(
        [moved],
        (release.Artifact("ferry-loadtest", moved, service.digest),),
        registry=f"{registry.host}/ferry-serving",
        plain_http=True,
    )
    assert wrong and "resolves to" in wrong[0]


def test_the_release_notes_carry_every_digest(published: release.Release) -> None:
    notes = published.notes()
    for artifact in published.artifacts:
        assert artifact.digest in notes
    assert f"--set image.digest={published.artifact('ferry').digest}" in notes
