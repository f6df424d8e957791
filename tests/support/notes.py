"""NOTES.txt as helm renders it, offline: ``helm template`` skips NOTES and ``helm install --dry-run``
takes no ``--api-versions``, so a copy of the chart renders its NOTES.txt into a ConfigMap."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import yaml

NOTES_TEMPLATE = (
    "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: notes\ndata:\n"
    '  notes: {{ tpl (.Files.Get "files/NOTES.txt") . | quote }}\n'
)


def render_notes(helm: str, chart: Path, scratch: Path, *extra: str) -> str:
    """NOTES.txt of release ``ferry`` in namespace ``ferry`` with ``extra`` helm arguments (values, API versions)."""
    copy = scratch / "ferry"
    if not copy.exists():
        shutil.copytree(chart, copy)
        shutil.copy(copy / "templates/NOTES.txt", copy / "files/NOTES.txt")
        (copy / "templates/notes-under-test.yaml").write_text(NOTES_TEMPLATE)
    result = subprocess.run(
        [helm, "template", "ferry", str(copy), "-n", "ferry", "-s", "templates/notes-under-test.yaml", *extra],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return yaml.safe_load(result.stdout)["data"]["notes"]
