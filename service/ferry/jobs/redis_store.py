"""Redis job store: many replicas and separate ``ferry worker`` processes share one queue.

Each job is a hash (version, doc, records); three sorted sets index it (run, queued, callback)
and finished jobs expire with Redis TTLs. Writes are compare-and-set Lua scripts, so a document and
its indexes always change together, atomically.
"""

from __future__ import annotations

from typing import Any

import redis.asyncio as aioredis

from ferry.jobs.document import Index, Job, decode, encode
from ferry.jobs.store import DueKind, JobStore, QueueStats, Versioned

# KEYS: job, idem ('' if none), run, queued, callback.  ARGV: id, doc, records, run_at, queued_since,
# callback_at ('' = not indexed).  Returns {1} when stored, {0, existing_id} on an idempotent replay.
INSERT = """
if KEYS[2] ~= '' then
  local existing = redis.call('GET', KEYS[2])
  if existing then return {0, existing} end
  redis.call('SET', KEYS[2], ARGV[1])
end
redis.call('HSET', KEYS[1], 'version', 1, 'doc', ARGV[2], 'records', ARGV[3])
local function index(key, score)
  if score == '' then redis.call('ZREM', key, ARGV[1]) else redis.call('ZADD', key, score, ARGV[1]) end
end
index(KEYS[3], ARGV[4]); index(KEYS[4], ARGV[5]); index(KEYS[5], ARGV[6])
return {1}
"""

# KEYS: job, idem ('' if none), run, queued, callback.  ARGV: expected version, doc, id, run_at,
# queued_since, callback_at, expire_at_ms ('' = keep).  Returns the new version, or 0.
SWAP = """
local v = redis.call('HGET', KEYS[1], 'version')
if not v or tonumber(v) ~= tonumber(ARGV[1]) then return 0 end
local version = tonumber(v) + 1
redis.call('HSET', KEYS[1], 'version', version, 'doc', ARGV[2])
local function index(key, score)
  if score == '' then redis.call('ZREM', key, ARGV[3]) else redis.call('ZADD', key, score, ARGV[3]) end
end
index(KEYS[3], ARGV[4]); index(KEYS[4], ARGV[5]); index(KEYS[5], ARGV[6])
if ARGV[7] == '' then
  redis.call('PERSIST', KEYS[1])
  if KEYS[2] ~= '' then redis.call('PERSIST', KEYS[2]) end
else
  redis.call('PEXPIREAT', KEYS[1], ARGV[7])
  if KEYS[2] ~= '' then redis.call('PEXPIREAT', KEYS[2], ARGV[7]) end
end
return version
"""


def _score(value: float | None) -> str:
    return "" if value is None else repr(value)


class RedisJobStore(JobStore):
    def __init__(self, url: str, prefix: str) -> None:
        self.url = url
        self.prefix = prefix
        self._redis: aioredis.Redis | None = None
        self._insert: Any = None
        self._swap: Any = None

    def _key(self, *parts: str) -> str:
        return ":".join((self.prefix, *parts))

    def _idem(self, job: Job) -> str:
        return self._key("idem", job.idempotency_key) if job.idempotency_key else ""

    def _index_keys(self) -> list[str]:
        return [self._key("run"), self._key("queued"), self._key("callback")]

    @property
    def redis(self) -> aioredis.Redis:
        assert self._redis is not None, "store not open"
        return self._redis

    async def open(self) -> None:
        # Connects lazily: with Redis down the API still starts (jobs answer 503) and runners retry.
        self._redis = aioredis.from_url(self.url, socket_timeout=10, socket_connect_timeout=5, retry_on_timeout=True)
        self._insert = self._redis.register_script(INSERT)
        self._swap = self._redis.register_script(SWAP)

    async def close(self) -> None:
        if self._redis is not None:
            client, self._redis = self._redis, None
            await client.aclose()

    async def insert(self, job: Job, records: bytes) -> Versioned:
        index = self.index(job)
        # A replay whose job was purged between the two calls below inserts anew: at most twice.
        for _ in range(2):
            reply = await self._insert(
                keys=[self._key("job", job.id), self._idem(job), *self._index_keys()],
                args=[
                    job.id,
                    encode(job),
                    records,
                    _score(index.run_at),
                    _score(index.queued_since),
                    _score(index.callback_at),
                ],
            )
            if int(reply[0]) == 1:
                return Versioned(job, 1)
            existing = await self.get(reply[1].decode())
            if existing is not None:
                return existing
        raise RuntimeError("idempotency key kept pointing at a purged job")

    async def get(self, job_id: str) -> Versioned | None:
        version, doc = await self.redis.hmget(self._key("job", job_id), ["version", "doc"])
        if version is None or doc is None:
            return None
        return Versioned(decode(doc), int(version))

    async def records(self, job_id: str) -> bytes | None:
        raw = await self.redis.hget(self._key("job", job_id), "records")
        return None if raw is None else bytes(raw, "utf-8") if isinstance(raw, str) else raw

    async def swap(self, old: Versioned, new: Job) -> Versioned | None:
        index: Index = self.index(new)
        expire = "" if index.expires_at is None or index.callback_at is not None else str(int(index.expires_at * 1000))
        version = await self._swap(
            keys=[self._key("job", new.id), self._idem(new), *self._index_keys()],
            args=[
                old.version,
                encode(new),
                new.id,
                _score(index.run_at),
                _score(index.queued_since),
                _score(index.callback_at),
                expire,
            ],
        )
        return Versioned(new, int(version)) if int(version) else None

    async def due(self, kind: DueKind, now: float, limit: int) -> list[str]:
        key = self._key({"run": "run", "callback": "callback"}[kind])
        ids = await self.redis.zrangebyscore(key, "-inf", now, start=0, num=limit)
        return [i.decode() if isinstance(i, bytes) else str(i) for i in ids]

    async def stats(self) -> QueueStats:
        key = self._key("queued")
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.zcard(key)
            pipe.zrange(key, 0, 0, withscores=True)
            count, oldest = await pipe.execute()
        return QueueStats(int(count), oldest[0][1] if oldest else None)

    async def purge(self, now: float) -> int:
        """Nothing to do: finished jobs carry a Redis TTL and vanish on their own."""
        return 0

    async def forget(self, job_id: str) -> None:
        async with self.redis.pipeline(transaction=True) as pipe:
            for key in self._index_keys():
                pipe.zrem(key, job_id)
            await pipe.execute()
