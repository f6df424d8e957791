"""README's Interop table is the interop claim: every client version it names is the locked one, every
test file it names exists and runs that client, and every interop test module is in the table."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
# (package in the table, the lock it comes from, the module the tests import it by)
CLIENTS = {
    "tritonclient.http": ("tritonclient", "requirements/dev.lock", "tritonclient.http"),
    "tritonclient.http.aio": ("tritonclient", "requirements/dev.lock", "tritonclient.http.aio"),
    "mlserver": ("mlserver", "requirements/interop-mlserver.lock", "mlserver_cases.py"),
    "kserve": ("kserve", "requirements/interop-kserve.lock", "kserve_cases.py"),
}


def interop_rows() -> list[tuple[str, str, str, str]]:
    """(client, version, mode, test file) of each row of the Interop section's table."""
    section = README.read_text().split("\n## Interop\n", 1)[1].split("\n## ", 1)[0]
    rows = []
    for line in section.splitlines():
        match = re.match(r"\| `([\w.]+)` ([\d.]+)[^|]*\| (.+) \| `(tests/[\w/]+\.py)` \|$", line)
        if match:
            rows.append((match[1], match[2], match[3], match[4]))
    return rows


def locked(package: str, lock: str) -> str:
    found = re.search(rf"^{re.escape(package)}==([^\s\\]+)", (ROOT / lock).read_text(), re.M)
    assert found, f"{package} is not in {lock}"
    return found[1]


def test_every_row_names_the_locked_version_and_a_test_that_runs_it() -> None:
    rows = interop_rows()
    assert {client for client, *_ in rows} == set(CLIENTS)
    for client, version, _, test in rows:
        package, lock, marker = CLIENTS[client]
        assert version == locked(package, lock), (client, version, lock)
        assert marker in (ROOT / test).read_text(), f"{test} does not run {client}"


def test_mlserver_row_names_the_pandas_it_runs_with() -> None:
    mlserver = next(line for line in README.read_text().splitlines() if line.startswith("| `mlserver`"))
    assert f"pandas {locked('pandas', 'requirements/interop-mlserver.lock')}" in mlserver


def test_every_interop_test_module_is_in_the_table() -> None:
    named = {test for *_, test in interop_rows()}
    on_disk = {str(p.relative_to(ROOT)) for p in (ROOT / "tests/integration").glob("test_interop_*.py")}
    assert on_disk == named
