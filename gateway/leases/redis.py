"""The Redis registry store: leases every gateway replica sees, each change one atomic Lua script.

Keys (one hash tag, so a Redis Cluster keeps them in one slot): ``{prefix}:leases`` (hash: lease id -> JSON
record), ``{prefix}:expiry`` (zset: lease id -> expiry in ms), ``{prefix}:addresses`` (hash: address -> lease
id). Scripts read the clock with TIME, so replicas whose clocks disagree still agree on expiry.
"""

from __future__ import annotations

import base64
import dataclasses
import json

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from gateway.leases import Lease, LeaseTaken, RegistryStoreUnavailable
from gateway.redis_client import connect

_NOW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
local function live(id, owner)
  local record = redis.call('HGET', KEYS[1], id)
  local expires = redis.call('ZSCORE', KEYS[2], id)
  if not record or not expires or tonumber(expires) < now then return nil end
  local lease = cjson.decode(record)
  if owner and lease['owner'] ~= owner then return nil end
  return lease
end
local function finish(id, address)
  redis.call('HDEL', KEYS[1], id)
  redis.call('ZREM', KEYS[2], id)
  if address and redis.call('HGET', KEYS[3], address) == id then redis.call('HDEL', KEYS[3], address) end
end
"""

# ARGV: lease id, address, owner, ttl ms, record. Returns 1, or 0 when another owner's live lease holds the address.
_GRANT = _NOW + """
local old = redis.call('HGET', KEYS[3], ARGV[2])
if old then
  local held = live(old)
  if held and held['owner'] ~= ARGV[3] then return 0 end
  finish(old, ARGV[2])
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[5])
redis.call('ZADD', KEYS[2], now + tonumber(ARGV[4]), ARGV[1])
redis.call('HSET', KEYS[3], ARGV[2], ARGV[1])
return 1
"""

# ARGV: lease id, owner. Returns the ttl in ms, or false.
_RENEW = _NOW + """
local lease = live(ARGV[1], ARGV[2])
if not lease then return false end
redis.call('ZADD', KEYS[2], now + lease['ttl_ms'], ARGV[1])
return lease['ttl_ms']
"""

# ARGV: lease id, owner. Returns 1 when released.
_RELEASE = _NOW + """
local record = redis.call('HGET', KEYS[1], ARGV[1])
if not record then return 0 end
local lease = cjson.decode(record)
if lease['owner'] ~= ARGV[2] then return 0 end
finish(ARGV[1], lease['address'])
return 1
"""

# Removes expired leases; returns {id, ms left, id, ms left, ...} of the live ones. Records are read apart, and
# only those of leases the reader has not seen yet: replicas read the leases often, and a record (the hands'
# specs) is far larger than its id.
_SNAPSHOT = _NOW + """
for _, id in ipairs(redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', '(' .. now)) do
  local record = redis.call('HGET', KEYS[1], id)
  finish(id, record and cjson.decode(record)['address'])
end
local out = {}
local entries = redis.call('ZRANGE', KEYS[2], 0, -1, 'WITHSCORES')
for j = 1, #entries, 2 do
  out[#out + 1] = entries[j]
  out[#out + 1] = string.format('%d', tonumber(entries[j + 1]) - now)
end
return out
"""


def _record(lease: Lease) -> str:
    return json.dumps({
        "id": lease.id, "address": lease.address, "owner": lease.owner, "ttl_ms": int(lease.ttl * 1000),
        "allow": list(lease.allow), "specs": base64.b64encode(lease.specs).decode(),
    })  # fmt: skip


def _lease(record: bytes | str) -> Lease:
    raw = json.loads(record)
    return Lease(
        id=raw["id"], address=raw["address"], owner=raw["owner"], ttl=raw["ttl_ms"] / 1000,
        allow=tuple(raw["allow"]), specs=base64.b64decode(raw["specs"]),
    )  # fmt: skip


async def _answer(pending):
    """Redis's reply, or RegistryStoreUnavailable saying why there is none."""
    try:
        return await pending
    except (RedisError, OSError) as exc:
        raise RegistryStoreUnavailable(str(exc).splitlines()[0] if str(exc) else type(exc).__name__) from exc


class RedisRegistryStore:
    """Leases in Redis, shared by every replica; the store's errors become RegistryStoreUnavailable."""

    shared = True

    def __init__(self, client: aioredis.Redis, *, prefix: str = "brainhands:registry"):
        self._redis = client
        self.prefix = prefix
        self._keys = [f"{{{prefix}}}:leases", f"{{{prefix}}}:expiry", f"{{{prefix}}}:addresses"]
        self._grant = client.register_script(_GRANT)
        self._renew = client.register_script(_RENEW)
        self._release = client.register_script(_RELEASE)
        self._snapshot = client.register_script(_SNAPSHOT)
        self._seen: dict[str, Lease] = {}  # lease id -> its record, read once (a lease's record never changes)

    @classmethod
    def from_url(cls, url: str, *, prefix: str = "brainhands:registry", timeout: float = 1.0) -> RedisRegistryStore:
        return cls(connect(url, timeout=timeout, max_connections=8), prefix=prefix)

    async def _run(self, script, *args):
        return await _answer(script(keys=self._keys, args=list(args)))

    async def grant(self, lease: Lease) -> None:
        if not await self._run(self._grant, lease.id, lease.address, lease.owner, int(lease.ttl * 1000), _record(lease)):
            raise LeaseTaken(lease.address)

    async def renew(self, lease_id: str, owner: str) -> float | None:
        ttl_ms = await self._run(self._renew, lease_id, owner)
        return None if ttl_ms is None else int(ttl_ms) / 1000

    async def release(self, lease_id: str, owner: str) -> bool:
        return bool(await self._run(self._release, lease_id, owner))

    async def snapshot(self) -> list[Lease]:
        out = await self._run(self._snapshot)
        left = {out[j].decode(): int(out[j + 1]) / 1000 for j in range(0, len(out), 2)}
        new = [lease_id for lease_id in left if lease_id not in self._seen]
        if new:
            for record in await _answer(self._redis.hmget(self._keys[0], new)):
                if record is not None:  # None: released between the two reads
                    lease = _lease(record)
                    self._seen[lease.id] = lease
        self._seen = {lease_id: lease for lease_id, lease in self._seen.items() if lease_id in left}
        return [dataclasses.replace(self._seen[i], expires_in=left[i]) for i in left if i in self._seen]

    async def ping(self) -> bool:
        return bool(await self._redis.ping())

    async def close(self) -> None:
        await self._redis.aclose(close_connection_pool=True)
