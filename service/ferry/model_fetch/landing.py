"""Files arriving in the output directory: written under a hidden temporary name while hashed, and
renamed to their final name only once verified, so a failed fetch leaves nothing a service could load.

Everything is written inside the output directory (the pod's emptyDir): the root filesystem may be
read-only, and a rename is only atomic within one filesystem.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ferry.model_fetch.failures import CannotWrite, VerificationFailed

if TYPE_CHECKING:
    from typing_extensions import Buffer  # collections.abc.Buffer from Python 3.12 on

PARTIAL_SUFFIX = ".part"
FILE_MODE = 0o444  # read-only: nothing in the pod has a reason to change a verified model


@dataclass(frozen=True)
class Landed:
    sha256: str
    size: int


class Landing:
    """One file being written into ``directory`` under a temporary name, hashed as it is written.

    ``restart()`` before each attempt (a retry starts over), ``write()`` the chunks, ``finish()``
    for the hash and size; ``commit()`` renames it into place; ``discard()`` removes it (idempotent).
    """

    def __init__(self, directory: Path, final_name: str, *, max_bytes: int | None, what: str) -> None:
        self.directory = directory
        self.final_path = directory / final_name
        self.max_bytes = max_bytes
        self.what = what  # the redacted source URL, for messages
        self._fd: int | None = None
        self._temp: Path | None = None
        self._hash = hashlib.sha256()
        self._size = 0

    @property
    def temp_path(self) -> Path | None:
        return self._temp

    def restart(self) -> None:
        try:
            if self._fd is None:
                fd, name = tempfile.mkstemp(
                    prefix=partial_prefix(self.final_path.name), suffix=PARTIAL_SUFFIX, dir=self.directory
                )
                self._fd, self._temp = fd, Path(name)
            else:
                os.lseek(self._fd, 0, os.SEEK_SET)
                os.ftruncate(self._fd, 0)
        except OSError as exc:
            raise CannotWrite(f"cannot write into {self.directory}: {exc.strerror or exc}") from exc
        self._hash = hashlib.sha256()
        self._size = 0

    def expect_size(self, size: int | None) -> None:
        """Refuse at once a source announcing more than ``max_bytes``, before reading any of it."""
        if size is not None and self.max_bytes is not None and size > self.max_bytes:
            raise VerificationFailed(f"{self.what} is {size} bytes, more than the {self.max_bytes} allowed")

    def write(self, chunk: Buffer) -> None:
        data = memoryview(chunk).cast("B")
        self._size += len(data)
        if self.max_bytes is not None and self._size > self.max_bytes:
            raise VerificationFailed(f"{self.what} sent more than the {self.max_bytes} bytes allowed")
        self._hash.update(data)
        assert self._fd is not None, "restart() opens the file"
        try:
            while data:
                data = data[os.write(self._fd, data) :]
        except OSError as exc:
            raise CannotWrite(f"cannot write {self._temp}: {exc.strerror or exc}") from exc

    def finish(self) -> Landed:
        """The file's hash and size, its bytes flushed to disk (a rename must never publish a hole)."""
        assert self._fd is not None, "restart() opens the file"
        try:
            os.fsync(self._fd)
        except OSError as exc:
            raise CannotWrite(f"cannot write {self._temp}: {exc.strerror or exc}") from exc
        return Landed(sha256=self._hash.hexdigest(), size=self._size)

    def read(self) -> bytes:
        """The written bytes (for a small file such as the card)."""
        assert self._temp is not None, "restart() opens the file"
        return self._temp.read_bytes()

    def commit(self) -> Path:
        """Rename into place (atomic, replacing a previous file of that name). Call ``sync_directory`` after."""
        assert self._fd is not None and self._temp is not None, "restart() opens the file"
        try:
            os.fchmod(self._fd, FILE_MODE)
            os.close(self._fd)
            self._fd = None
            os.replace(self._temp, self.final_path)
        except OSError as exc:
            raise CannotWrite(f"cannot move {self._temp} to {self.final_path}: {exc.strerror or exc}") from exc
        self._temp = None
        return self.final_path

    def discard(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None
        if self._temp is not None:
            with contextlib.suppress(FileNotFoundError):
                self._temp.unlink()
            self._temp = None


def partial_prefix(final_name: str) -> str:
    return f".{final_name}."


def remove_leftovers(directory: Path, final_names: list[str]) -> list[Path]:
    """Delete the temporary files a killed earlier run left (SIGKILL, OOM): an init container is
    restarted into the same emptyDir, which may be memory-backed."""
    removed = []
    for name in final_names:
        for path in directory.glob(f"{partial_prefix(name)}*{PARTIAL_SUFFIX}"):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
                removed.append(path)
    return removed


def sync_directory(directory: Path) -> None:
    """Make the renames durable: a crash after this cannot bring back the old directory entries."""
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    except OSError as exc:
        raise CannotWrite(f"cannot open {directory}: {exc.strerror or exc}") from exc
    try:
        os.fsync(fd)
    except OSError as exc:
        raise CannotWrite(f"cannot sync {directory}: {exc.strerror or exc}") from exc
    finally:
        os.close(fd)
