"""`pip install clients/python` into an empty virtualenv installs httpx (with what httpx needs) and
ferry-client, nothing else; the client's own tests pass there, its command runs, and the service is
not importable.

Reproducible and offline once downloaded: the wheels of that closure (plus pytest's, plus setuptools,
the client's build backend) are fetched first with `pip download --require-hashes`, at the versions
and hashes of requirements/dev.lock, from whatever index pip is configured for (PyPI, a proxy). Every
install after that runs with `--no-index` from that wheelhouse and without any pip configuration, so
pip's own resolution of the client's dependencies, not a list written here, decides what is installed.
"""

from __future__ import annotations

import importlib.metadata
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

from packaging.requirements import Requirement

from ferry_client import __version__
from support.server import free_port

ROOT = Path(__file__).resolve().parents[2]
CLIENT = ROOT / "clients" / "python"
DEV_LOCK = ROOT / "requirements" / "dev.lock"


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def closure(*names: str) -> set[str]:
    """The distributions ``names`` need on this interpreter (markers evaluated, no extras), read from
    the metadata of this virtualenv, which holds the dev lock."""
    seen: set[str] = set()
    todo = [canonical(n) for n in names]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        for line in importlib.metadata.requires(name) or []:
            requirement = Requirement(line)
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                todo.append(canonical(requirement.name))
    return seen


def locked(names: set[str]) -> str:
    """Those distributions' pins in the dev lock, with their hashes (a requirements file)."""
    text = DEV_LOCK.read_text()
    blocks = {
        canonical(m.group(1)): m.group(0)
        for m in re.finditer(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==\S+(?: \\\n\s+--hash=sha256:[0-9a-f]{64})+", text, re.M)
    }
    missing = names - blocks.keys()
    assert not missing, f"not in {DEV_LOCK.name}: {sorted(missing)}"
    return "\n".join(blocks[name] for name in sorted(names)) + "\n"


def run(*argv: str | Path, env: dict[str, str] | None = None, cwd: Path | None = None) -> str:
    done = subprocess.run(
        [str(a) for a in argv], env=env, cwd=cwd, capture_output=True, text=True, timeout=240, check=False
    )
    assert done.returncode == 0, f"{' '.join(map(str, argv))}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout


def installed(python: Path) -> set[str]:
    """The distributions in ``python``'s environment, as its own importlib.metadata sees them."""
    names = "import importlib.metadata as m; print(*(d.metadata['Name'] for d in m.distributions()))"
    return {canonical(name) for name in run(python, "-c", names).split()}


def test_pip_install_clients_python_into_an_empty_venv(tmp_path: Path) -> None:
    started = time.monotonic()
    httpx_closure, pytest_closure = closure("httpx"), closure("pytest")
    requirements = tmp_path / "requirements.txt"
    requirements.write_text(locked(httpx_closure | pytest_closure | {"setuptools"}))
    wheels = tmp_path / "wheels"
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check"]
    run(*pip, "download", "--quiet", "--require-hashes", "--no-deps", "--only-binary", ":all:", "-d", wheels,
        "-r", requirements)  # fmt: skip
    downloaded = time.monotonic()

    # Offline from here: no index, no pip configuration, nothing of this repository on the path.
    offline = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "PYTHON", "VIRTUAL_ENV"))}
    offline |= {"PIP_CONFIG_FILE": os.devnull, "PIP_NO_INDEX": "1", "PIP_FIND_LINKS": str(wheels)}
    offline |= {"PYTHONDONTWRITEBYTECODE": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    venv = tmp_path / "venv"
    run(sys.executable, "-m", "venv", "--without-pip", venv)
    python = venv / "bin" / "python"
    assert installed(python) == set(), "the new virtualenv is not empty"
    source = tmp_path / "clients-python"  # a copy: building writes build/ and *.egg-info next to the sources
    shutil.copytree(CLIENT, source, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__", ".*"))

    run(*pip, "--python", python, "install", "--quiet", source, env=offline)
    assert installed(python) == httpx_closure | {"ferry-client"}
    frozen = run(*pip, "--python", python, "list", "--format", "freeze", env=offline)
    print(f"pip install clients/python ->\n{frozen}")

    where = run(python, "-c", "import ferry_client; print(ferry_client.__file__)", env=offline, cwd=tmp_path)
    assert where.startswith(str(venv)), where
    service = subprocess.run(
        [python, "-c", "import ferry"], env=offline, cwd=tmp_path, capture_output=True, check=False
    )
    assert b"No module named 'ferry'" in service.stderr  # the client does not need the server
    assert run(venv / "bin" / "ferry-client", "--version", env=offline).split() == ["ferry-client", __version__]
    nobody = f"http://127.0.0.1:{free_port()}"
    refused = subprocess.run(
        [venv / "bin" / "ferry-client", "jobs", "status", "--url", nobody, "--retries", "0", "0" * 32],
        env=offline, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert refused.returncode == 1 and "ferry-client jobs status: error: transport_error" in refused.stderr

    run(*pip, "--python", python, "install", "--quiet", "pytest", env=offline)
    assert installed(python) == httpx_closure | pytest_closure | {"ferry-client"}
    tests = run(python, "-m", "pytest", "-p", "no:cacheprovider", "-q", env=offline, cwd=source)
    summary = tests.strip().splitlines()[-1]
    assert re.fullmatch(r"\d+ passed in [\d.]+s", summary), tests[-3000:]  # nothing skipped, nothing failed
    print(
        f"client tests in the empty venv: {summary}; download {downloaded - started:.1f} s, "
        f"total {time.monotonic() - started:.1f} s"
    )
