"""scripts/base_image.py's pure parts: the FROM name podman resolves, what the tag names, which CAs are extra."""

from __future__ import annotations

import base64
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))

import base_image


def pem(der: bytes, width: int = 64) -> str:
    body = base64.b64encode(der).decode()
    lines = [body[i : i + width] for i in range(0, len(body), width)]
    return "\n".join(["-----BEGIN CERTIFICATE-----", *lines, "-----END CERTIFICATE-----"])


@pytest.mark.parametrize(
    ("name", "qualified"),
    [
        ("python:3.11-slim-bookworm", "docker.io/library/python:3.11-slim-bookworm"),
        ("team/python:3.11-slim-bookworm", "docker.io/team/python:3.11-slim-bookworm"),
        ("registry.example/python:3.11-slim-bookworm", "registry.example/python:3.11-slim-bookworm"),
        ("localhost:5000/python:3.11", "localhost:5000/python:3.11"),
        ("localhost/python:3.11", "localhost/python:3.11"),
    ],
)
def test_qualify_as_podman_resolves_docker_hub_short_names(name: str, qualified: str) -> None:
    assert base_image.qualify(name) == qualified


def test_release_of_the_dockerfiles_base() -> None:
    assert base_image.default_image() == "python:3.11-slim-bookworm"
    assert base_image.release_of("docker.io/library/python:3.11-slim-bookworm") == ("3.11", "bookworm")
    assert base_image.release_of("docker.io/library/python:3.12.4-bookworm") == ("3.12", "bookworm")
    with pytest.raises(SystemExit, match="cannot tell"):
        base_image.release_of("docker.io/library/python:latest")


def test_extra_certificates_are_the_hosts_own_additions_whatever_their_line_width() -> None:
    mozilla, removed, proxy = b"mozilla-ca", b"distrusted-ca", b"proxy-ca"
    host = "\n".join([pem(mozilla), pem(removed), pem(proxy, width=76)])
    image = pem(mozilla, width=40)  # same certificate, other formatting
    host_package = pem(mozilla) + pem(removed)  # the host's older package still ships a removed CA
    assert base_image.extra_certificates(host, image, host_package) == [pem(proxy, width=76)]
    assert base_image.extra_certificates(host, image) == [pem(removed), pem(proxy, width=76)]
