"""A real OCI registry on 127.0.0.1 for a test: scripts/local_registry.py (Debian's docker-registry,
installed by `make image-tools`), which `make release-local` uses too.

Plain HTTP: podman talks to it with ``--tls-verify=false``. Images are stored under the test's
directory and disappear with it.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))

from local_registry import LocalRegistry as Registry

__all__ = ["Registry"]
