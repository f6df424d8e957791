"""The lock files agree: the load-test image's lock pins the dev lock's versions (`make lock` resolves
requirements/loadtest.in with requirements/dev.lock as constraints), so the gate image runs the
Locust that `make slo-gate` runs."""

from __future__ import annotations

import re
from pathlib import Path

REQUIREMENTS = Path(__file__).resolve().parents[2] / "requirements"


def pins(name: str) -> dict[str, str]:
    text = (REQUIREMENTS / name).read_text()
    return {package.lower(): version for package, version in re.findall(r"^([A-Za-z0-9_.-]+)==(\S+)", text, re.M)}


def test_loadtest_lock_pins_the_dev_locks_versions() -> None:
    loadtest, dev = pins("loadtest.lock"), pins("dev.lock")
    assert {"locust", "pyyaml"} <= set(loadtest)
    assert {name: (version, dev.get(name)) for name, version in loadtest.items() if dev.get(name) != version} == {}
