"""A file's records as one or more jobs (``ferry jobs submit --wait --out``): cut to the server's
limits, submitted in order, waited for in order, results joined back in input order.

Limits: a job holds at most ``jobs.max_records`` records (default 10,000) in a body of at most
``api.max_body_bytes`` (default 4 MiB). The records are cut at ``max_records`` records and ``max_bytes``
bytes of compact JSON (the defaults match the server's); a server with lower limits answers 413
``payload_too_large`` or 422 ``batch_too_large``, and that job is cut in two and sent again, so any
limit is found without configuration.

Idempotency: every job carries the Idempotency-Key ``KEY`` (one job) or ``KEY.START-END`` (its records'
positions), so running the same command again with the same ``--idempotency-key`` finds the jobs
already submitted instead of queueing them twice: that is how an interrupted wait is resumed.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import IO, TYPE_CHECKING, Any

from ferry_client._common import Deadline
from ferry_client.errors import FerryClientError
from ferry_client.protocol import TERMINAL_JOB_STATUSES

if TYPE_CHECKING:
    from ferry_client.sync import Client

DEFAULT_MAX_RECORDS = 10_000  # the server's jobs.max_records default
DEFAULT_MAX_BYTES = 4 * 1024 * 1024 - 64 * 1024  # api.max_body_bytes default, less room for metadata
TOO_LARGE = frozenset({"payload_too_large", "batch_too_large"})


def cut(records: Sequence[Any], max_records: int, max_bytes: int) -> list[tuple[int, int]]:
    """``[start, end)`` ranges of ``records``, in order, each at most ``max_records`` records whose
    compact JSON (with the commas between them) takes at most ``max_bytes`` bytes; a record larger than
    that alone is a range of its own (the server will say whether it fits)."""
    if max_records < 1 or max_bytes < 1:
        raise ValueError("max_records and max_bytes must be at least 1")
    ranges: list[tuple[int, int]] = []
    start, size = 0, 0
    for index, record in enumerate(records):
        length = len(json.dumps(record, separators=(",", ":"), allow_nan=False).encode()) + 1
        if index > start and (index - start >= max_records or size + length > max_bytes):
            ranges.append((start, index))
            start, size = index, 0
        size += length
    if start < len(records):
        ranges.append((start, len(records)))
    return ranges


def job_key(base: str, start: int, end: int, total: int) -> str:
    """The Idempotency-Key of the job holding records ``[start, end)`` of ``total``."""
    return base if (start, end) == (0, total) else f"{base}.{start}-{end}"


@dataclass
class Submitted:
    """One job of a file: which records it holds, and its latest document."""

    start: int
    end: int
    job: dict[str, Any]

    @property
    def id(self) -> str:
        return str(self.job["id"])

    @property
    def status(self) -> str:
        return str(self.job.get("status"))


def submit_all(
    client: Client,
    records: Sequence[Any],
    ranges: list[tuple[int, int]],
    *,
    key: str,
    callback_url: str | None = None,
    metadata: dict[str, Any] | None = None,
    submitted: list[Submitted] | None = None,
) -> list[Submitted]:
    """Submit each range as a job, in order; a range the server finds too large is cut in two and sent
    again. A refused job raises FerryClientError naming records by their position in ``records``; the
    jobs submitted before it are in ``submitted`` (pass a list to see them)."""
    done = submitted if submitted is not None else []
    pending = list(reversed(ranges))
    while pending:
        start, end = pending.pop()
        try:
            job = client.submit_job(
                records[start:end],
                callback_url=callback_url,
                metadata=metadata,
                idempotency_key=job_key(key, start, end, len(records)),
            )
        except FerryClientError as exc:
            if exc.code in TOO_LARGE and end - start > 1:
                middle = (start + end) // 2
                pending += [(middle, end), (start, middle)]
                continue
            raise exc.shifted(start) from None
        done.append(Submitted(start, end, job))
    return done


def wait_all(
    client: Client,
    jobs: list[Submitted],
    *,
    timeout: float | None,
    poll_interval: float,
    use_events: bool = False,
    on_update: Callable[[list[Submitted]], None] | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> None:
    """Wait for every job, in order, updating each ``Submitted.job`` (``on_update`` after each look).
    Returns once all have ended, or at the first one that did not succeed; TimeoutError after
    ``timeout`` seconds."""
    deadline = Deadline(timeout)
    for item in jobs:
        while item.status not in TERMINAL_JOB_STATUSES:
            if deadline.expired():
                raise TimeoutError(f"job {item.id} still {item.status} after {timeout} s")
            if use_events:
                left = deadline.remaining()
                item.job = client.wait_job(item.id, timeout=left, use_events=True)
            else:
                item.job = client.get_job(item.id)
            if on_update is not None:
                on_update(jobs)
            if item.status not in TERMINAL_JOB_STATUSES:
                sleep(deadline.cap(poll_interval))
        if item.status != "succeeded":
            return


def predictions_of(jobs: list[Submitted]) -> list[dict[str, Any]]:
    """Every job's predictions, in input order; ValueError when a result does not match its records."""
    predictions: list[dict[str, Any]] = []
    for item in jobs:
        result = (item.job.get("result") or {}).get("predictions") or []
        if len(result) != item.end - item.start:
            raise ValueError(f"job {item.id}: {len(result)} predictions for {item.end - item.start} records")
        predictions.extend(result)
    return predictions


@dataclass
class WaitProgress:
    """While waiting, on stderr: the state of the jobs, rows done (in jobs that have ended), elapsed time.
    On a terminal one line redrawn in place; otherwise a plain line each time the state changes."""

    total_rows: int
    tty: bool
    enabled: bool = True
    stream: IO[str] = field(default_factory=lambda: sys.stderr)
    clock: Callable[[], float] = time.monotonic
    started: float = field(init=False)
    _last: str = field(init=False, default="")
    _width: int = field(init=False, default=0)

    def __post_init__(self) -> None:
        self.started = self.clock()

    def text(self, jobs: list[Submitted]) -> str:
        """``job K/N STATUS; ROWS/TOTAL rows (P%)``: the job being waited for (jobs are waited for in
        order, so the ones after it show the state they were submitted in and are not counted here)."""
        current = next((i for i, item in enumerate(jobs) if item.status not in TERMINAL_JOB_STATUSES), len(jobs) - 1)
        rows = sum(item.end - item.start for item in jobs if item.status == "succeeded")
        percent = 100.0 * rows / self.total_rows if self.total_rows else 100.0
        status = jobs[current].status if jobs else "none"
        return f"job {current + 1}/{len(jobs)} {status}; {rows:,}/{self.total_rows:,} rows ({percent:.0f}%)"

    def __call__(self, jobs: list[Submitted]) -> None:
        if not self.enabled:
            return
        state = self.text(jobs)
        elapsed = self.clock() - self.started
        if self.tty:
            line = f"{state}; {elapsed:.1f} s"
            self.stream.write("\r" + line.ljust(self._width))
            self._width = len(line)
        elif state != self._last:
            self.stream.write(f"{state}; {elapsed:.1f} s\n")
        else:
            return
        self._last = state
        self.stream.flush()

    def close(self) -> None:
        if self.enabled and self.tty and self._width:
            self.stream.write("\n")
            self.stream.flush()
            self._width = 0
