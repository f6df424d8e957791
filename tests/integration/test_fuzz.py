"""The published OpenAPI contract, fuzzed against the real service with every Schemathesis check.

Schemathesis' own runner (the `schemathesis run` command, as a user would call it) reads /openapi.json
of a real gunicorn server (2 workers) and runs all its phases (examples, coverage, fuzzing, stateful)
with ``--checks all`` (all but use_after_free, see below): no 5xx; every status, content type, header
and body (error bodies and each Server-Sent Event's payload included) as documented; schema-valid
requests accepted and schema-invalid ones refused; 405 with ``Allow`` for every method a path does not
serve. Where a check's expected statuses differ from Schemathesis' defaults,
tests/integration/schemathesis.toml says why. The run is deterministic (the same cases every time) and
must find zero failures over at least MIN_CASES cases.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from support.server import Server

CONFIG = Path(__file__).with_name("schemathesis.toml")
# Per operation and phase; 22 operations through the four phases make well over MIN_CASES cases.
MAX_EXAMPLES = 20
MIN_CASES = 1000


@pytest.fixture(scope="module")
def report(server: Server, tmp_path_factory: pytest.TempPathFactory) -> dict:
    out = tmp_path_factory.mktemp("schemathesis")
    command = [
        str(Path(sys.executable).with_name("schemathesis")),
        "--config-file",
        str(CONFIG),
        "run",
        server.url + "/openapi.json",
        "--checks",
        "all",
        # use_after_free, the one check left out: DELETE /api/v1/jobs/{job_id} cancels a job, which stays
        # readable (status canceled, with its history) until its result TTL like every finished job, so
        # "deleted resource still available" does not apply. It is the API's only DELETE: the check has
        # nothing else to look at. (Left out here: --checks all overrides the config file's switches.)
        "--exclude-checks",
        "use_after_free",
        "--max-examples",
        str(MAX_EXAMPLES),
        "--generation-deterministic",  # the same cases every run, and no example database
        "--request-timeout",
        "10",
        "--no-color",
        "--report",
        "json",
        "--report-json-path",
        str(out / "report.json"),
    ]
    run = subprocess.run(command, cwd=out, capture_output=True, text=True, timeout=600, check=False)
    path = out / "report.json"
    assert path.exists(), run.stdout[-3000:] + run.stderr[-3000:]
    result = json.loads(path.read_text())
    result["output"] = run.stdout
    return result


def test_all_checks_find_nothing(report: dict) -> None:
    """Zero failures of any check, no errored operation, every operation tested, >= MIN_CASES cases."""
    failures = report["output"][report["output"].find("FAILURES") :][:6000]
    assert report["failures"] == [] and report["errors"] == [], failures
    assert report["exit_code"] == 0, report["output"][-3000:]
    assert report["operations"]["tested"] == report["operations"]["total"] >= 22
    assert report["test_cases"]["generated"] >= MIN_CASES, report["test_cases"]
    assert report["test_cases"]["errored"] == 0
