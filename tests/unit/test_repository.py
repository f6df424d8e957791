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
    # The service runs with exactly the versions the tests ran with; so does the load-test image
    # (`make lock` resolves requirements/loadtest.in with the dev lock as constraints).
    assert {k: dev[k] for k in service} == service
    loadtest = pins(ROOT / "requirements/loadtest.lock")
    assert {"locust", "pyyaml"} <= set(loadtest)
    assert {k: dev.get(k) for k in loadtest} == loadtest
    for lock in ("service.lock", "dev.lock", "loadtest.lock"):
        text = (ROOT / "requirements" / lock).read_text()
        hashed = re.findall(r"^[a-z0-9][a-z0-9._-]*==\S+ \\\n\s+--hash=sha256:[0-9a-f]{64}", text, re.M)
        assert len(hashed) == len(pins(ROOT / "requirements" / lock)), lock


def test_generated_files_are_current() -> None:
    result = subprocess.run(
        [sys.executable, "scripts/generate.py", "--check"], cwd=ROOT, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_make_help_lists_the_two_commands() -> None:
    out = subprocess.run(["make", "-s", "help"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert re.search(r"\brun\b", out) and re.search(r"\btest\b", out)
    listed = re.findall(r"^\s+(?:\x1b\[\d+m)?([\w-]+)", out, re.M)  # the target column, colour codes aside
    assert {"image", "model-image", "test-image", "image-tools", "base-image"} <= set(listed), listed
