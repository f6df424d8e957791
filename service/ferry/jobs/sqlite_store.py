"""SQLite job store: one file shared by every process of a pod (the embedded default).

WAL mode lets readers run beside the one writer, and a busy timeout makes concurrent writers
(two workers starting together, runners racing for a job) wait instead of failing with
"database is locked". Calls run in a thread: sqlite3 blocks, the event loop must not.
"""

from __future__ import annotations

import asyncio
import random
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from ferry.jobs.document import Job, decode, encode
from ferry.jobs.store import DueKind, JobStore, QueueStats, Quota, Versioned

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    version INTEGER NOT NULL,
    idempotency_key TEXT UNIQUE,
    owner TEXT,
    doc BLOB NOT NULL,
    records BLOB NOT NULL,
    run_at REAL,
    queued_since REAL,
    callback_at REAL,
    expires_at REAL
);
CREATE INDEX IF NOT EXISTS jobs_run_at ON jobs(run_at) WHERE run_at IS NOT NULL;
CREATE INDEX IF NOT EXISTS jobs_queued_since ON jobs(queued_since) WHERE queued_since IS NOT NULL;
CREATE INDEX IF NOT EXISTS jobs_callback_at ON jobs(callback_at) WHERE callback_at IS NOT NULL;
CREATE INDEX IF NOT EXISTS jobs_expires_at ON jobs(expires_at) WHERE expires_at IS NOT NULL;
"""
# A file from a version without job owners gets the column (NULL: no owner).
OWNER_COLUMN = "ALTER TABLE jobs ADD COLUMN owner TEXT"
OWNER_INDEX = "CREATE INDEX IF NOT EXISTS jobs_owner_queued ON jobs(owner, queued_since) WHERE queued_since IS NOT NULL"
OWNER_ROWS_INDEX = "CREATE INDEX IF NOT EXISTS jobs_owner ON jobs(owner) WHERE owner IS NOT NULL"
# After a checkpoint the write-ahead log is cut back to this size, so a burst of large jobs does not
# leave a large -wal file behind (it counts against jobs.max_store_bytes).
WAL_SIZE_LIMIT = 4 * 1024 * 1024
BUSY_TIMEOUT_MS = 10_000
T = TypeVar("T")


class SqliteJobStore(JobStore):
    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._conn: sqlite3.Connection | None = None
        self._lock = threading.Lock()

    # -- plumbing ----------------------------------------------------------------------------
    def _connect(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None, check_same_thread=False)
        try:
            conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
            conn.execute(f"PRAGMA journal_size_limit={WAL_SIZE_LIMIT}")
            self._setup(conn)
        except BaseException:
            conn.close()
            raise
        self._conn = conn

    @staticmethod
    def _setup(conn: sqlite3.Connection) -> None:
        """WAL mode and the schema. Workers starting together race here, and the switch to WAL can
        answer "database is locked" at once, without waiting on the busy timeout (seen: 8 of 200
        starts of three processes on a fresh file): so each step is retried, for a bounded time."""
        ends = time.monotonic() + BUSY_TIMEOUT_MS / 1000
        while True:
            try:
                conn.execute("PRAGMA journal_mode=WAL")  # persistent; several processes may set it at once
                conn.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: durable across process crashes
                conn.executescript(SCHEMA)
                columns = {row[1] for row in conn.execute("PRAGMA table_info(jobs)")}
                if "owner" not in columns:
                    try:
                        conn.execute(OWNER_COLUMN)
                    except sqlite3.OperationalError as exc:  # another process added it since we looked
                        if "duplicate column" not in str(exc):
                            raise
                conn.execute(OWNER_INDEX)
                conn.execute(OWNER_ROWS_INDEX)
                return
            except sqlite3.OperationalError as exc:
                if ("locked" not in str(exc) and "busy" not in str(exc)) or time.monotonic() > ends:
                    raise
                time.sleep(random.uniform(0.01, 0.05))

    async def _run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        def call() -> T:
            with self._lock:
                assert self._conn is not None, "store not open"
                return fn(self._conn)

        return await asyncio.to_thread(call)

    async def open(self) -> None:
        await asyncio.to_thread(self._connect)

    async def close(self) -> None:
        if self._conn is not None:
            conn, self._conn = self._conn, None
            await asyncio.to_thread(conn.close)

    # -- contract ----------------------------------------------------------------------------
    def _wal_bytes(self) -> int:
        try:
            return self.path.with_name(self.path.name + "-wal").stat().st_size
        except FileNotFoundError:
            return 0

    def _cap_wal(self, conn: sqlite3.Connection) -> None:
        """Large jobs (their inputs, and their documents rewritten with each chunk of results) can
        outgrow the log faster than automatic checkpoints, which never wait for readers, empty it: past
        its size limit, copy it into the database and cut it back, so the log stays within the bound
        ``projected_bytes`` counts on."""
        if self._wal_bytes() > WAL_SIZE_LIMIT:
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    def projected_bytes(self, conn: sqlite3.Connection, incoming: int) -> int:
        """How large the files (database and write-ahead log) may grow once a row of ``incoming`` bytes
        is stored and the jobs not finished yet have written their results.

        New data fills free pages first, then grows the database file. Still to come: the row, and a
        result for each unfinished job, counted as large as its input (a result row is a label and a
        probability per class, smaller than most records). The log holds the row and those results once
        more until the next checkpoint, plus up to its size limit of other writes (lease renewals)."""
        page_size, pages, free = (
            conn.execute(f"PRAGMA {name}").fetchone()[0] for name in ("page_size", "page_count", "freelist_count")
        )
        pending = conn.execute("SELECT coalesce(sum(length(records)), 0) FROM jobs WHERE expires_at IS NULL").fetchone()
        growth = max(0, incoming + int(pending[0]) - free * page_size)
        return int(pages * page_size + growth + self._wal_bytes() + incoming + int(pending[0]) + WAL_SIZE_LIMIT)

    async def insert(self, job: Job, records: bytes, quota: Quota | None = None) -> Versioned:
        index = self.index(job)
        key = self.idempotency(job)
        doc = encode(job)
        row = (job.id, key, job.owner, doc, records, index.run_at, index.queued_since, index.callback_at)

        def insert(conn: sqlite3.Connection) -> Versioned:
            if quota is not None:
                self._cap_wal(conn)  # before counting it
            # One transaction: the existing job of an idempotency key cannot be purged in between, and
            # concurrent submissions from other workers cannot slip past the quota.
            with conn:
                conn.execute("BEGIN IMMEDIATE")
                if key is not None:
                    found = conn.execute("SELECT doc, version FROM jobs WHERE idempotency_key = ?", (key,)).fetchone()
                    if found is not None:
                        return Versioned(decode(found[0]), found[1])
                if quota is not None:
                    self._check(conn, quota, job.owner, len(doc) + len(records), len(records))
                conn.execute(
                    "INSERT INTO jobs (id, version, idempotency_key, owner, doc, records, run_at, queued_since,"
                    " callback_at) VALUES (?, 1, ?, ?, ?, ?, ?, ?, ?)",
                    row,
                )
                return Versioned(job, 1)

        return await self._run(insert)

    def _check(
        self, conn: sqlite3.Connection, quota: Quota, owner: str | None, incoming: int, len_records: int
    ) -> None:
        queued = conn.execute("SELECT count(*) FROM jobs WHERE queued_since IS NOT NULL").fetchone()[0]
        if queued >= quota.max_queued:
            raise quota.queue_full(owned=False)
        if owner is not None:
            mine = conn.execute(
                "SELECT count(*) FROM jobs WHERE owner = ? AND queued_since IS NOT NULL", (owner,)
            ).fetchone()[0]
            if mine >= quota.max_queued_owner:
                raise quota.queue_full(owned=True)
            held = conn.execute(
                "SELECT coalesce(sum(length(records) + length(doc)"
                " + CASE WHEN expires_at IS NULL THEN length(records) ELSE 0 END), 0) FROM jobs WHERE owner = ?",
                (owner,),
            ).fetchone()[0]
            if held + incoming + len_records > quota.max_bytes_owner:
                raise quota.store_full(owned=True)
        if self.projected_bytes(conn, incoming) > quota.max_bytes:
            raise quota.store_full()

    async def get(self, job_id: str) -> Versioned | None:
        def get(conn: sqlite3.Connection) -> Versioned | None:
            row = conn.execute("SELECT doc, version FROM jobs WHERE id = ?", (job_id,)).fetchone()
            return None if row is None else Versioned(decode(row[0]), row[1])

        return await self._run(get)

    async def records(self, job_id: str) -> bytes | None:
        def records(conn: sqlite3.Connection) -> bytes | None:
            row = conn.execute("SELECT records FROM jobs WHERE id = ?", (job_id,)).fetchone()
            return None if row is None else bytes(row[0])

        return await self._run(records)

    async def swap(self, old: Versioned, new: Job) -> Versioned | None:
        index = self.index(new)

        def swap(conn: sqlite3.Connection) -> Versioned | None:
            cursor = conn.execute(
                "UPDATE jobs SET version = version + 1, doc = ?, run_at = ?, queued_since = ?, callback_at = ?,"
                " expires_at = ? WHERE id = ? AND version = ?",
                (
                    encode(new),
                    index.run_at,
                    index.queued_since,
                    index.callback_at,
                    index.expires_at,
                    old.job.id,
                    old.version,
                ),
            )
            if cursor.rowcount != 1:
                return None
            self._cap_wal(conn)
            return Versioned(new, old.version + 1)

        return await self._run(swap)

    async def due(self, kind: DueKind, now: float, limit: int) -> list[str]:
        column = {"run": "run_at", "callback": "callback_at"}[kind]

        def due(conn: sqlite3.Connection) -> list[str]:
            rows = conn.execute(
                f"SELECT id FROM jobs WHERE {column} <= ? ORDER BY {column} LIMIT ?",
                (now, limit),
            ).fetchall()
            return [r[0] for r in rows]

        return await self._run(due)

    async def stats(self) -> QueueStats:
        def stats(conn: sqlite3.Connection) -> QueueStats:
            count, oldest = conn.execute(
                "SELECT count(*), min(queued_since) FROM jobs WHERE queued_since IS NOT NULL"
            ).fetchone()
            return QueueStats(count, oldest)

        return await self._run(stats)

    async def purge(self, now: float) -> int:
        def purge(conn: sqlite3.Connection) -> int:
            # A callback still being delivered keeps its job (and the result it carries) alive.
            return conn.execute("DELETE FROM jobs WHERE expires_at <= ? AND callback_at IS NULL", (now,)).rowcount

        return await self._run(purge)

    async def forget(self, job_id: str) -> None:
        """Nothing to do: a deleted row is in no index."""
