"""Redis job store: many replicas and separate ``ferry worker`` processes share one queue.

Each job is a hash (version, doc, records); three sorted sets index it (run, queued, callback)
and finished jobs expire with Redis TTLs. Writes are compare-and-set Lua scripts, so a document and
its indexes always change together, atomically.
"""

from __future__ import annotations

import time
from typing import Any

import redis.asyncio as aioredis

from ferry.jobs.document import Index, Job, decode, encode
from ferry.jobs.store import DueKind, JobStore, QueueStats, Quota, Versioned

# KEYS: job, idem, run, queued, callback, then the owner's queued, held and expiry keys ('' = none / no
# owner). ARGV: id, doc, records, run_at, queued_since, callback_at ('' = not indexed), max queued, max
# queued of the owner, max bytes of the owner ('' = no quota), now in ms, this job's bytes.
# Returns {1} when stored, {0, existing_id} on an idempotent replay, {2, 'all' | 'owner'} when a queue
# is full, {3} when the owner's jobs hold too many bytes.
# An owner's bytes: a hash job id -> bytes and a sorted set job id -> expiry (ms; +inf while the job is
# kept for good), pruned here of jobs whose time has passed (their keys expired with the same time).
INSERT = """
if KEYS[2] ~= '' then
  local existing = redis.call('GET', KEYS[2])
  if existing then return {0, existing} end
end
if KEYS[7] ~= '' then
  local expired = redis.call('ZRANGEBYSCORE', KEYS[8], '-inf', ARGV[10])
  for _, id in ipairs(expired) do redis.call('HDEL', KEYS[7], id) end
  redis.call('ZREMRANGEBYSCORE', KEYS[8], '-inf', ARGV[10])
end
if ARGV[7] ~= '' then
  if redis.call('ZCARD', KEYS[4]) >= tonumber(ARGV[7]) then return {2, 'all'} end
  if KEYS[6] ~= '' and redis.call('ZCARD', KEYS[6]) >= tonumber(ARGV[8]) then return {2, 'owner'} end
  if KEYS[7] ~= '' then
    local held = 0
    for _, bytes in ipairs(redis.call('HVALS', KEYS[7])) do held = held + tonumber(bytes) end
    if held + tonumber(ARGV[11]) > tonumber(ARGV[9]) then return {3} end
  end
end
if KEYS[2] ~= '' then redis.call('SET', KEYS[2], ARGV[1]) end
redis.call('HSET', KEYS[1], 'version', 1, 'doc', ARGV[2], 'records', ARGV[3], 'rsize', #ARGV[3])
local function index(key, score)
  if score == '' then redis.call('ZREM', key, ARGV[1]) else redis.call('ZADD', key, score, ARGV[1]) end
end
index(KEYS[3], ARGV[4]); index(KEYS[4], ARGV[5]); index(KEYS[5], ARGV[6])
if KEYS[6] ~= '' then index(KEYS[6], ARGV[5]) end
if KEYS[7] ~= '' then
  redis.call('HSET', KEYS[7], ARGV[1], ARGV[11])
  redis.call('ZADD', KEYS[8], '+inf', ARGV[1])
end
return {1}
"""

# KEYS: as INSERT's.  ARGV: expected version, doc, id, run_at, queued_since, callback_at,
# expire_at_ms ('' = keep).  Returns the new version, or 0.
SWAP = """
local v = redis.call('HGET', KEYS[1], 'version')
if not v or tonumber(v) ~= tonumber(ARGV[1]) then return 0 end
local version = tonumber(v) + 1
redis.call('HSET', KEYS[1], 'version', version, 'doc', ARGV[2])
local function index(key, score)
  if score == '' then redis.call('ZREM', key, ARGV[3]) else redis.call('ZADD', key, score, ARGV[3]) end
end
index(KEYS[3], ARGV[4]); index(KEYS[4], ARGV[5]); index(KEYS[5], ARGV[6])
if KEYS[6] ~= '' then index(KEYS[6], ARGV[5]) end
if KEYS[7] ~= '' then
  -- input + document, + the input again while the job is kept for good (its result may be to come)
  local rsize = tonumber(redis.call('HGET', KEYS[1], 'rsize') or '0')
  local kept = ARGV[7] == ''
  redis.call('HSET', KEYS[7], ARGV[3], rsize + #ARGV[2] + (kept and rsize or 0))
  redis.call('ZADD', KEYS[8], kept and '+inf' or ARGV[7], ARGV[3])
end
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
        scoped = self.idempotency(job)
        return self._key("idem", scoped) if scoped else ""

    def _index_keys(self, job: Job) -> list[str]:
        owned = ["queued-by", "held-by", "expiry-by"]
        owner = [self._key(k, job.owner) for k in owned] if job.owner is not None else ["", "", ""]
        return [self._key("run"), self._key("queued"), self._key("callback"), *owner]

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

    async def insert(self, job: Job, records: bytes, quota: Quota | None = None) -> Versioned:
        index = self.index(job)
        doc = encode(job)
        if quota is not None:
            # Not atomic with the insert (INFO is not for scripts): concurrent submissions may pass the
            # limit by their own size. Redis' maxmemory is the hard limit; this keeps jobs well below it.
            used = int((await self.redis.info("memory"))["used_memory"])
            if used + len(doc) + len(records) > quota.max_bytes:
                raise quota.store_full()
        # A replay whose job was purged between the two calls below inserts anew: at most twice.
        for _ in range(2):
            reply = await self._insert(
                keys=[self._key("job", job.id), self._idem(job), *self._index_keys(job)],
                args=[
                    job.id,
                    doc,
                    records,
                    _score(index.run_at),
                    _score(index.queued_since),
                    _score(index.callback_at),
                    "" if quota is None else quota.max_queued,
                    "" if quota is None else quota.max_queued_owner,
                    "" if quota is None else quota.max_bytes_owner,
                    int(time.time() * 1000),
                    2 * len(records) + len(doc),
                ],
            )
            if int(reply[0]) == 1:
                return Versioned(job, 1)
            if int(reply[0]) == 2:
                assert quota is not None
                raise quota.queue_full(owned=reply[1] in (b"owner", "owner"))
            if int(reply[0]) == 3:
                assert quota is not None
                raise quota.store_full(owned=True)
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
            keys=[self._key("job", new.id), self._idem(new), *self._index_keys(new)],
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
            for key in (self._key("run"), self._key("queued"), self._key("callback")):
                pipe.zrem(key, job_id)
            await pipe.execute()
