"""The release job of .github/workflows/release-gate.yml and CHANGELOG.md. The job cannot run here
(GHCR, OIDC for cosign): its shape is asserted, its changelog extraction runs for real, and it calls
the same script as `make release-local` (tests/image/test_release.py runs that one end to end)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
WORKFLOW = ROOT / ".github/workflows/release-gate.yml"
CHANGELOG = ROOT / "CHANGELOG.md"
KINDS = ("Added", "Changed", "Deprecated", "Removed", "Fixed", "Security")  # Keep a Changelog's


@pytest.fixture(scope="module")
def workflow() -> dict:
    loaded: dict = yaml.safe_load(WORKFLOW.read_text())
    return loaded


def steps(workflow: dict) -> str:
    return "\n".join(step.get("run", "") + " " + step.get("uses", "") for step in workflow["jobs"]["release"]["steps"])


def test_the_release_job_runs_on_tags_after_the_gate(workflow: dict) -> None:
    triggers = workflow[True]  # PyYAML reads the key `on` as a boolean
    assert "v*" in triggers["push"]["tags"]
    job = workflow["jobs"]["release"]
    assert job["if"] == "startsWith(github.ref, 'refs/tags/v')"
    assert set(job["needs"]) >= {"test", "slo-gate"}
    assert job["permissions"] == {"contents": "write", "packages": "write", "id-token": "write"}


def test_the_release_job_publishes_with_the_local_script_then_signs_attests_and_notes(workflow: dict) -> None:
    run = steps(workflow)
    assert 'make release RELEASE_REGISTRY="$REGISTRY"' in run
    makefile = (ROOT / "Makefile").read_text()
    for target in ("release-local", "release"):
        recipe = re.search(rf"^{target}:.*\n\t(.*)", makefile, re.M)
        assert recipe and "scripts/release.py" in recipe.group(1), target
    assert re.search(r"jq -r '\.artifacts\[\] \|[^']*\.digest'[^|]*\|\s*while read -r ref; do cosign sign --yes", run)
    assert "sigstore/cosign-installer" in run and "syft scan" in run and "cosign attest --yes --type spdxjson" in run
    assert 'gh release create "$GITHUB_REF_NAME"' in run and '--notes-file "$OUT/release-notes.md"' in run
    assert 'cat "$OUT/notes.md"' in run  # the digests scripts/release.py writes


def changelog_section(workflow: dict, text: str, version: str, tmp_path: Path) -> str:
    """The release step's own awk, run on TEXT for VERSION."""
    (awk,) = re.findall(r"awk -v v=\"\$version\" ('.*?') CHANGELOG\.md", steps(workflow))
    (tmp_path / "CHANGELOG.md").write_text(text)
    command = f"awk -v v={version} {awk} CHANGELOG.md"
    return subprocess.run(["bash", "-c", command], cwd=tmp_path, capture_output=True, text=True, check=True).stdout


def test_the_release_notes_take_the_tags_changelog_section(workflow: dict, tmp_path: Path) -> None:
    text = CHANGELOG.read_text()
    chart = yaml.safe_load((ROOT / "deploy/helm/ferry/Chart.yaml").read_text())["version"]
    tagged = text.replace("## [Unreleased]", f"## [{chart}] - 2026-12-31", 1)
    section = changelog_section(workflow, tagged, chart, tmp_path)
    assert "### Added" in section and "## [0.1.0]" not in section
    assert "The first release" in changelog_section(workflow, text, "0.1.0", tmp_path)
    assert changelog_section(workflow, text, "9.9.9", tmp_path) == ""  # the step then fails the release


def test_changelog_keeps_a_changelog() -> None:
    text = CHANGELOG.read_text()
    versions = re.findall(r"^## \[([^\]]+)\](?: - (\d{4}-\d{2}-\d{2}))?$", text, re.M)
    assert versions[0] == ("Unreleased", "") and ("0.1.0", "2026-11-27") in versions
    assert all(date for name, date in versions[1:]), versions
    for name, _ in versions:
        assert re.search(rf"^\[{re.escape(name)}\]: https://", text, re.M), f"no link for [{name}]"
    assert set(re.findall(r"^### (\w+)$", text, re.M)) <= set(KINDS)
