"""``helm template`` runs the deploy tests share."""

from __future__ import annotations

import subprocess
from pathlib import Path


def refusal(helm: str, chart: Path, *args: str) -> str:
    """The error output of a ``helm template`` that must refuse ``args``; the test fails if it renders."""
    result = subprocess.run([helm, "template", "ferry", str(chart), *args], capture_output=True, text=True, check=False)
    assert result.returncode != 0, f"rendered without complaint: {' '.join(args)}"
    return result.stderr
