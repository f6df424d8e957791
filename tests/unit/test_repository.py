"""Repository contracts: locked dependencies, generated files, Makefile help."""

from __future__ import annotations

import re
import subprocess
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


def test_the_client_needs_nothing_the_service_lock_lacks() -> None:
    """The service reuses clients/python from the source tree, so the client's dependencies must be
    in the service's lock (the client itself is never resolved from an index)."""
    service = pins(ROOT / "requirements/service.lock")
    client = tomllib.loads((ROOT / "clients/python/pyproject.toml").read_text())["project"]
    assert client["dependencies"], "the client depends on httpx"
    for requirement in client["dependencies"]:
        assert re.split(r"[<>=\[ ;]", requirement)[0].lower() in service, requirement
    assert "ferry-client" not in service


def test_make_help_lists_every_target() -> None:
    """Every phony target (what a person runs) has a `## description`, so `make help` is complete."""
    makefile = (ROOT / "Makefile").read_text()
    phony = {t for line in re.findall(r"^\.PHONY: (.+)$", makefile, re.M) for t in line.split()}
    out = subprocess.run(["make", "-s", "help"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    listed = set(re.findall(r"^\s+(?:\x1b\[\d+m)?([a-zA-Z0-9_-]+)", out, re.M))
    assert {"run", "test"} <= listed
    assert {"image", "model-image", "test-image", "image-tools", "base-image"} <= listed
    assert phony - listed == set(), "targets without a ## description"


# A note that points at a document outside the repository ("see item N of a list kept elsewhere") is
# useless to whoever clones it: the reason must be written where it applies. (Each alternative is
# spelt so that this line does not match itself.)
FOREIGN_REFERENCE = re.compile(r"\btraps? #?\d+|\.\./shared\b|/work/[s]hared\b|TRAPS\.md", re.IGNORECASE)


def test_nothing_refers_to_documents_outside_the_repository() -> None:
    files = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout.split(b"\0")
    found = []
    for name in filter(None, (f.decode() for f in files)):
        path = ROOT / name
        if name.endswith(".lock") or not path.is_file():
            continue
        try:
            text = path.read_text()
        except UnicodeDecodeError:
            continue
        found += [
            f"{name}:{text.count(chr(10), 0, m.start()) + 1}: {m.group()}" for m in FOREIGN_REFERENCE.finditer(text)
        ]
    assert found == [], "write the reason itself instead:\n" + "\n".join(found)
