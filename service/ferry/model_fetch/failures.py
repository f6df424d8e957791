"""How ``ferry model fetch`` fails: one exception per exit code, each with a message fit for one log line."""

from __future__ import annotations

import enum
from typing import ClassVar


class ExitCode(enum.IntEnum):
    """The command's exit status. An init container's orchestrator only sees this and the last line."""

    OK = 0
    VERIFICATION_FAILED = 1  # wrong hash, a card describing another file, more bytes than --max-bytes
    USAGE = 2  # bad flags or environment (argparse uses 2 too)
    UNAVAILABLE = 3  # unreachable, not found or failing after every retry
    REFUSED = 4  # the source said no in a way retrying cannot fix (401, 403, other 4xx, bad TLS certificate)
    CANNOT_WRITE = 5  # the output directory cannot be written
    INTERNAL = 70  # a bug (EX_SOFTWARE)
    INTERRUPTED = 130  # SIGINT (128 + 2)
    TERMINATED = 143  # SIGTERM (128 + 15); the temporary file is removed first


class FetchError(Exception):
    """The fetch stopped; nothing was left under a final name in the output directory."""

    exit_code: ClassVar[ExitCode] = ExitCode.INTERNAL


class UsageError(FetchError):
    exit_code = ExitCode.USAGE


class VerificationFailed(FetchError):
    exit_code = ExitCode.VERIFICATION_FAILED


class SourceUnavailable(FetchError):
    exit_code = ExitCode.UNAVAILABLE


class SourceRefused(FetchError):
    exit_code = ExitCode.REFUSED


class CannotWrite(FetchError):
    exit_code = ExitCode.CANNOT_WRITE


class Terminated(FetchError):
    exit_code = ExitCode.TERMINATED
