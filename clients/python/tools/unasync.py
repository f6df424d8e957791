"""Generate the synchronous client (``src/ferry_client/sync.py``) from the asynchronous one (``aio.py``).

The rules are textual, as in httpcore's and urllib3's unasync scripts: ``async def``/``with``/``for``
lose ``async``, ``await`` goes, and the asynchronous names of httpx, of the standard library and of
this package become their synchronous twins (``AsyncClient`` -> ``Client``, ``aiter_lines`` ->
``iter_lines``, ``_aio_runtime`` -> ``_sync_runtime``, ...). The result is sorted and formatted by
ruff (the repository's settings) so it stays lint-clean. A word of asynchronous code the rules do not
know (``asyncio``, ``async``, ``await``, ``Async...``) left in the output is an error: extend the
rules, or move that code into ``_aio_runtime`` and ``_sync_runtime``.

``python clients/python/tools/unasync.py [--check]`` writes (or checks) the file; the repository's
``make generate`` / ``make check-generated`` run it through ``scripts/generate.py``.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

CLIENT = Path(__file__).resolve().parent.parent  # clients/python
ROOT = CLIENT.parent.parent  # the repository: ruff's settings
PACKAGE = CLIENT / "src" / "ferry_client"
SOURCE = PACKAGE / "aio.py"
TARGET = PACKAGE / "sync.py"

HEADER = "# GENERATED from ferry_client/aio.py by clients/python/tools/unasync.py (`make generate`). Do not edit.\n"
DOCSTRING = '''"""The synchronous client, generated from the asynchronous one (``aio.py``): same methods, same
parameters, same retries. Edit ``aio.py``, then run ``make generate``."""'''

# (pattern, replacement), applied in order; names only as whole words.
RULES: list[tuple[str, str]] = [
    (r"\basync (def|with|for)\b", r"\1"),
    (r"\bawait ", ""),
    *(
        (rf"\b{name}\b", twin)
        for name, twin in {
            "AsyncClient": "Client",
            "AsyncBaseTransport": "BaseTransport",
            "AsyncIterator": "Iterator",
            "asynccontextmanager": "contextmanager",
            "aiter_events": "iter_events",
            "aiter_lines": "iter_lines",
            "aread": "read",
            "aclose": "close",
            "__aenter__": "__enter__",
            "__aexit__": "__exit__",
            "_aio_runtime": "_sync_runtime",
            "Asynchronous": "Synchronous",
        }.items()
    ),
]
LEFTOVER = re.compile(r"\b(async|await|asyncio|Async\w*|aiter\w*|_aio\w*)\b")


def unasync(source: str) -> str:
    """The synchronous twin of ``source`` (unformatted)."""
    docstring = re.match(r'\s*(""".*?""")', source, re.S)
    if docstring is None:
        raise ValueError("aio.py must start with a module docstring")
    text = DOCSTRING + source[docstring.end() :]
    for pattern, replacement in RULES:
        text = re.sub(pattern, replacement, text)
    leftover = sorted({m.group(0) for m in LEFTOVER.finditer(text)})
    if leftover:
        raise ValueError(f"asynchronous code the rules do not translate: {', '.join(leftover)}")
    return HEADER + text


def ruff(text: str, filename: Path) -> str:
    """``text`` with its imports sorted and formatted by ruff, as ``make lint`` expects."""
    for args in (["check", "--fix", "--select", "I", "--quiet"], ["format", "--quiet"]):
        text = subprocess.run(
            [sys.executable, "-m", "ruff", *args, "--stdin-filename", str(filename), "-"],
            input=text,
            capture_output=True,
            text=True,
            check=True,
            cwd=ROOT,
        ).stdout
    return text


def generate() -> str:
    """The full text of ``sync.py``."""
    return ruff(unasync(SOURCE.read_text()), TARGET)


def main() -> int:
    text = generate()
    if "--check" in sys.argv[1:]:
        if TARGET.read_text() != text:
            print(f"{TARGET} is stale: run `make generate`", file=sys.stderr)
            return 1
        return 0
    TARGET.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
