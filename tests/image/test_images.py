"""What `make image` built: sizes within budget, the base's Debian release and Python minor, and
(where no registry was reachable) a stand-in base that says what it is and trusts the host's CAs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from support.podman import GATE_IMAGE, SERVICE_IMAGE, image_inspect, podman, run_once
from support.registry import Registry

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))

import base_image  # noqa: E402

MB = 10**6
# Budgets, from `make image` on the stand-in base (README, "Container image"): service 474 MB
# (base 130 + virtualenv 344, about 94 of it the .pyc files pip compiles, which a read-only root
# filesystem could not write later), load test 532 MB (the same plus Locust's lock). About 15 %
# headroom: lock updates fit; a leaked pip cache, build tree, second virtualenv or the whole dev lock
# (the load-test image carried it before requirements/loadtest.lock: 927 MB) does not.
BUDGET_MB = {SERVICE_IMAGE: 550, GATE_IMAGE: 620}
BASE = base_image.qualify(base_image.default_image())


@pytest.mark.parametrize("ref", [SERVICE_IMAGE, GATE_IMAGE])
def test_image_within_its_size_budget(ref: str) -> None:
    size = image_inspect(ref)["Size"]
    assert size < BUDGET_MB[ref] * MB, f"{ref}: {size / MB:.0f} MB, budget {BUDGET_MB[ref]} MB"


def test_images_run_the_base_python_minor_and_debian_release() -> None:
    minor, release = base_image.release_of(BASE)
    for ref in (SERVICE_IMAGE, GATE_IMAGE):
        script = (
            "python -c 'import sys; print(\"%d.%d\" % sys.version_info[:2])'; . /etc/os-release; echo $VERSION_CODENAME"
        )
        out = run_once(ref, "-c", script, entrypoint=["sh"]).split()
        assert out == [minor, release], (ref, out)


def test_a_stand_in_base_says_so_and_trusts_the_hosts_extra_cas() -> None:
    labels = image_inspect(BASE)["Labels"] or {}
    if base_image.STAND_IN_LABEL not in labels:
        pytest.skip(f"{BASE} is the real image (pulled): nothing stood in for it")
    bundle = run_once(BASE, "cat", "/etc/ssl/certs/ca-certificates.crt")
    extra = base_image.extra_certificates(
        Path("/etc/ssl/certs/ca-certificates.crt").read_text(), bundle, base_image.host_distribution_certificates()
    )
    assert extra == [], f"{len(extra)} extra CA certificate(s) of this host are not trusted in the stand-in"
    pip_conf = run_once(BASE, "cat", "/etc/pip.conf")
    assert "cert = /etc/ssl/certs/ca-certificates.crt" in pip_conf
    for ref in (SERVICE_IMAGE, GATE_IMAGE):  # the marker reaches the images built on it
        assert image_inspect(ref)["Labels"][base_image.STAND_IN_LABEL] == labels[base_image.STAND_IN_LABEL]


def test_the_real_base_is_pulled_wherever_a_registry_answers(tmp_path: Path) -> None:
    """scripts/base_image.py against a registry that answers (a local one): it pulls the image and
    replaces a stand-in made earlier, instead of building one."""
    with Registry(tmp_path / "registry") as registry:
        name = f"{registry.host}/library/python:3.11-slim-bookworm"
        context = tmp_path / "context"
        context.mkdir()
        built: list[str] = []
        try:
            for variant, label in (("real", ""), ("stand-in", "made-earlier")):
                (context / "Containerfile").write_text(f'FROM {BASE}\nLABEL {base_image.STAND_IN_LABEL}="{label}"\n')
                podman("build", "--format", "docker", "-t", name, str(context))
                built.append(image_inspect(name)["Id"])
                if variant == "real":
                    podman("push", "--tls-verify=false", name)
            ran = subprocess.run(
                [sys.executable, str(ROOT / "scripts/base_image.py"), "--image", name, "--tls-verify", "false"],
                capture_output=True, text=True, timeout=300, check=False,
            )  # fmt: skip
            assert ran.returncode == 0, ran.stderr
            assert "pulled (the real image)" in ran.stderr and "STAND-IN" not in ran.stderr, ran.stderr
            assert image_inspect(name)["Labels"][base_image.STAND_IN_LABEL] == ""  # the pushed one
        finally:
            podman("rmi", "--force", "--ignore", name, *built, check=False)
