"""Repository contracts: locked dependencies, generated files, Makefile help."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def pins(lock: Path) -> dict[str, str]:
    return dict(re.findall(r"^([a-z0-9][a-z0-9._-]*)==(\S+)", lock.read_text(), re.M))


def test_every_dependency_is_pinned_with_hashes() -> None:
    service, dev = pins(ROOT / "requirements/service.lock"), pins(ROOT / "requirements/dev.lock")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    for requirement in project["dependencies"] + project["optional-dependencies"]["dev"]:
        name = re.split(r"[<>=\[ ]", requirement)[0].lower().replace("_", "-")
        assert name in dev, name
    for name in project["dependencies"]:
        assert re.split(r"[<>=\[ ]", name)[0].lower() in service
    # The service runs with exactly the versions the tests ran with.
    assert {k: dev[k] for k in service} == service
    for lock in ("service.lock", "dev.lock"):
        text = (ROOT / "requirements" / lock).read_text()
        hashed = re.findall(r"^[a-z0-9][a-z0-9._-]*==\S+ \\\n\s+--hash=sha256:[0-9a-f]{64}", text, re.M)
        assert len(hashed) == len(pins(ROOT / "requirements" / lock)), lock


def test_the_client_needs_nothing_the_service_lock_lacks() -> None:
    """The service reuses clients/python from the source tree, so the client's dependencies must be
    in the service's lock (the client itself is never resolved from an index)."""
    service = pins(ROOT / "requirements/service.lock")
    client = tomllib.loads((ROOT / "clients/python/pyproject.toml").read_text())["project"]
    assert client["dependencies"], "the client depends on httpx"
    for requirement in client["dependencies"]:
        assert re.split(r"[<>=\[ ;]", requirement)[0].lower() in service, requirement
    assert "ferry-client" not in service


def test_generated_files_are_current() -> None:
    result = subprocess.run(
        [sys.executable, "scripts/generate.py", "--check"], cwd=ROOT, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_make_help_lists_the_two_commands() -> None:
    out = subprocess.run(["make", "-s", "help"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert re.search(r"\brun\b", out) and re.search(r"\btest\b", out)
