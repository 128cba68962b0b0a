"""The Redis quota store: counters shared by every gateway replica, one atomic Lua script per decision."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import redis.asyncio as aioredis
import structlog
from redis.exceptions import RedisError

from gateway.quotas import (
    CONCURRENCY_RETRY_SECONDS,
    DEFAULT_LEASE_SECONDS,
    WINDOW_BUCKETS,
    Decision,
    Lease,
    QuotaStoreUnavailable,
    RuleUsage,
    Violation,
)
from gateway.redis_client import connect
from gateway.tenants import QuotaRule

log = structlog.get_logger("gateway.quotas.redis")

# Every script reads the clock with TIME, so replicas on machines whose clocks disagree still
# agree on windows, buckets and lease expiry. Times are milliseconds since the epoch.
_NOW = f"""
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
local BUCKETS = {WINDOW_BUCKETS}
"""

# A sliding window is a hash of bucket index -> amount (WINDOW_BUCKETS buckets per window); the counted
# buckets are all those the last window-length touches (see gateway/quotas/__init__.py). Held slots and
# reservations are a zset of member -> expiry; a reservation's member is "<lease id>:<tokens>".
_WINDOW = """
local function counted(key, window, drop)
  local b = window / BUCKETS
  local oldest = math.floor((now - window) / b)
  local raw = redis.call('HGETALL', key)
  local used, buckets, stale = 0, {}, {}
  for j = 1, #raw, 2 do
    local index, amount = tonumber(raw[j]), tonumber(raw[j + 1])
    if index == nil or amount == nil or index < oldest then  -- nil: a fixed window's w/n of an older gateway
      stale[#stale + 1] = raw[j]
    else
      used = used + amount
      buckets[#buckets + 1] = {index, amount}
    end
  end
  if drop and #stale > 0 then redis.call('HDEL', key, unpack(stale)) end
  table.sort(buckets, function(x, y) return x[1] < y[1] end)
  return used, buckets, b
end
local function add(key, window, amount)
  local b = window / BUCKETS
  redis.call('HINCRBY', key, string.format('%d', math.floor(now / b)), amount)
  redis.call('PEXPIRE', key, math.ceil(window + 2 * b) + 1000)
end
local function reserved(key)
  redis.call('ZREMRANGEBYSCORE', key, '-inf', now)
  local held = 0
  for _, member in ipairs(redis.call('ZRANGE', key, 0, -1)) do
    held = held + tonumber(string.match(member, ':(%d+)$'))
  end
  return held
end
"""

# KEYS: two per rule (its counter; its reservations, for tokens rules). ARGV: lease id, lease ms, concurrency
# retry ms, then per rule: kind, limit, window ms, burst, tokens to reserve.
# Checks every rule first and writes only when all admit, so a denied call consumes nothing.
# Returns {1} when admitted, else {0, rule index, retry ms, rule index, retry ms, ...} for each denying rule.
ADMIT = (
    _NOW
    + _WINDOW
    + """
local lease_id = ARGV[1]
local lease_ms = tonumber(ARGV[2])
local concurrency_retry_ms = tonumber(ARGV[3])
local denied = {}
local state = {}
local n = #KEYS / 2
for i = 1, n do
  local base = 3 + (i - 1) * 5
  local kind, limit, window, burst, reserve = ARGV[base + 1], tonumber(ARGV[base + 2]), tonumber(ARGV[base + 3]), tonumber(ARGV[base + 4]), tonumber(ARGV[base + 5])
  local key = KEYS[2 * i - 1]
  if kind == 'rate' then
    local v = redis.call('HMGET', key, 't', 'ts')
    local tokens = tonumber(v[1]) or burst
    local elapsed = now - (tonumber(v[2]) or now)
    if elapsed < 0 then elapsed = 0 end
    tokens = math.min(burst, tokens + elapsed * limit / window)
    state[i] = tokens
    if tokens < 1 then
      denied[#denied + 1] = i
      denied[#denied + 1] = math.ceil((1 - tokens) * window / limit)
    end
  elseif kind == 'concurrency' then
    -- A holder that stopped renewing (a gateway that died) loses its slot here.
    redis.call('ZREMRANGEBYSCORE', key, '-inf', now)
    if redis.call('ZCARD', key) >= limit then
      denied[#denied + 1] = i
      denied[#denied + 1] = concurrency_retry_ms
    end
  else
    local used, buckets, b = counted(key, window, true)
    local excess = used + 1 - limit
    if kind == 'tokens' and reserve > 0 then
      -- A reservation of a gateway that died expires with its lease, like a concurrency slot.
      excess = used + reserved(KEYS[2 * i]) + reserve - limit
    end
    if excess > 0 then
      local wait = concurrency_retry_ms
      local freed = 0
      for _, bucket in ipairs(buckets) do
        freed = freed + bucket[2]
        if freed >= excess then
          wait = math.max(concurrency_retry_ms, math.ceil((bucket[1] + 1) * b + window - now))
          break
        end
      end
      denied[#denied + 1] = i
      denied[#denied + 1] = wait
    end
  end
end
if #denied > 0 then
  table.insert(denied, 1, 0)
  return denied
end
for i = 1, n do
  local base = 3 + (i - 1) * 5
  local kind, limit, window, burst, reserve = ARGV[base + 1], tonumber(ARGV[base + 2]), tonumber(ARGV[base + 3]), tonumber(ARGV[base + 4]), tonumber(ARGV[base + 5])
  local key = KEYS[2 * i - 1]
  if kind == 'rate' then
    redis.call('HSET', key, 't', string.format('%.17g', state[i] - 1), 'ts', string.format('%.17g', now))
    redis.call('PEXPIRE', key, math.ceil(burst * window / limit) + 1000)
  elseif kind == 'concurrency' then
    redis.call('ZADD', key, now + lease_ms, lease_id)
    redis.call('PEXPIRE', key, math.ceil(lease_ms) + 1000)
  elseif kind == 'calls' then
    add(key, window, 1)
  elseif reserve > 0 then
    redis.call('ZADD', KEYS[2 * i], now + lease_ms, lease_id .. ':' .. reserve)
    redis.call('PEXPIRE', KEYS[2 * i], math.ceil(lease_ms) + 1000)
  end
end
return {1}
"""
)

# KEYS: the zsets of held slots and reservations. ARGV: lease ms, then the member for each key.
# Returns how many were still held.
RENEW = (
    _NOW
    + """
local lease_ms = tonumber(ARGV[1])
local renewed = 0
for i = 1, #KEYS do
  if redis.call('ZSCORE', KEYS[i], ARGV[i + 1]) then
    redis.call('ZADD', KEYS[i], 'XX', now + lease_ms, ARGV[i + 1])
    redis.call('PEXPIRE', KEYS[i], math.ceil(lease_ms) + 1000)
    renewed = renewed + 1
  end
end
return renewed
"""
)

# KEYS: token rules' counters, then the reservation zsets to settle. ARGV: tokens, the number of counters,
# the window ms of each counter, then the reservation member for each zset.
# One script, so the reservation leaves exactly when the real usage arrives.
CHARGE = (
    _NOW
    + _WINDOW
    + """
local tokens = tonumber(ARGV[1])
local n = tonumber(ARGV[2])
for i = n + 1, #KEYS do
  redis.call('ZREM', KEYS[i], ARGV[2 + i])
end
if tokens > 0 then
  for i = 1, n do
    add(KEYS[i], tonumber(ARGV[2 + i]), tokens)
  end
end
return n
"""
)

# KEYS: two per rule, as for ADMIT. ARGV: per rule kind, limit, window ms, burst. Reads only.
# Returns per rule {used as a string, resets in ms}.
USAGE = (
    _NOW
    + _WINDOW
    + """
local out = {}
for i = 1, #KEYS / 2 do
  local base = (i - 1) * 5
  local kind, limit, window, burst = ARGV[base + 1], tonumber(ARGV[base + 2]), tonumber(ARGV[base + 3]), tonumber(ARGV[base + 4])
  local key = KEYS[2 * i - 1]
  local used, resets = 0, 0
  if kind == 'rate' then
    local v = redis.call('HMGET', key, 't', 'ts')
    local tokens = tonumber(v[1]) or burst
    local elapsed = now - (tonumber(v[2]) or now)
    if elapsed < 0 then elapsed = 0 end
    tokens = math.min(burst, tokens + elapsed * limit / window)
    used = burst - tokens
    resets = math.ceil(used * window / limit)
  elseif kind == 'concurrency' then
    used = redis.call('ZCOUNT', key, '(' .. string.format('%.17g', now), '+inf')
  else
    local buckets, b
    used, buckets, b = counted(key, window, false)
    if #buckets > 0 then
      resets = math.max(0, math.ceil((buckets[#buckets][1] + 1) * b + window - now))
    end
  end
  out[#out + 1] = string.format('%.17g', used)
  out[#out + 1] = resets
end
return out
"""
)


class RedisQuotaStore:
    """Quota counters in Redis, shared by every replica; the store's errors become QuotaStoreUnavailable."""

    def __init__(
        self,
        client: aioredis.Redis,
        *,
        lease_seconds: float = DEFAULT_LEASE_SECONDS,
        prefix: str = "brainhands:quota",
    ):
        self.lease_seconds = lease_seconds
        self._redis = client
        self._prefix = prefix
        self._admit = client.register_script(ADMIT)
        self._renew = client.register_script(RENEW)
        self._charge = client.register_script(CHARGE)
        self._usage = client.register_script(USAGE)

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        lease_seconds: float = DEFAULT_LEASE_SECONDS,
        prefix: str = "brainhands:quota",
        timeout: float = 1.0,
        max_connections: int = 32,
    ) -> RedisQuotaStore:
        client = connect(url, timeout=timeout, max_connections=max_connections)
        return cls(client, lease_seconds=lease_seconds, prefix=prefix)

    def key(self, rule: QuotaRule) -> str:
        # The {tenant} hash tag puts all keys of one call in one Redis Cluster slot, as a script needs.
        return f"{self._prefix}:{{{rule.tenant}}}:{rule.id}"

    def _keys(self, rules: Sequence[QuotaRule]) -> list[str]:
        return [k for rule in rules for k in (self.key(rule), self.key(rule) + ":reserved")]

    def _held(self, lease: Lease) -> tuple[str, str]:
        """The zset and member that hold a lease: a concurrency slot, or a token reservation."""
        if lease.tokens > 0:
            return self.key(lease.rule) + ":reserved", f"{lease.id}:{lease.tokens}"
        return self.key(lease.rule), lease.id

    async def admit(
        self, rules: Sequence[QuotaRule], lease_id: str, reserve: Mapping[str, int] | None = None
    ) -> Decision:
        if not rules:
            return Decision(admitted=True)
        reserve = reserve or {}
        args: list[object] = [lease_id, self._lease_ms, math.ceil(CONCURRENCY_RETRY_SECONDS * 1000)]
        for rule in rules:
            args.extend([*_rule_args(rule), reserve.get(rule.id, 0) if rule.kind == "tokens" else 0])
        reply = await self._call(self._admit, self._keys(rules), args)
        if int(reply[0]) == 1:
            leases = tuple(
                Lease(rule, lease_id, reserve.get(rule.id, 0) if rule.kind == "tokens" else 0)
                for rule in rules
                if rule.kind == "concurrency" or (rule.kind == "tokens" and reserve.get(rule.id, 0) > 0)
            )
            return Decision(admitted=True, leases=leases)
        violations = tuple(
            Violation(rules[int(reply[j]) - 1], int(reply[j + 1]) / 1000) for j in range(1, len(reply), 2)
        )
        return Decision(admitted=False, violations=violations)

    async def renew(self, leases: Sequence[Lease]) -> None:
        if not leases:
            return
        held = [self._held(lease) for lease in leases]
        renewed = await self._call(self._renew, [key for key, _ in held], [self._lease_ms, *(m for _, m in held)])
        if int(renewed) < len(leases):
            # The slot expired before we renewed it (the store was away longer than a lease).
            log.warning("quota_lease_lost", leases=len(leases) - int(renewed))

    async def release(self, leases: Sequence[Lease]) -> None:
        if not leases:
            return
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                for lease in leases:
                    pipe.zrem(*self._held(lease))
                await pipe.execute()
        except (RedisError, OSError) as exc:
            raise QuotaStoreUnavailable(_describe(exc)) from exc

    async def charge_tokens(self, rules: Sequence[QuotaRule], tokens: int, leases: Sequence[Lease] = ()) -> None:
        token_rules = [rule for rule in rules if rule.kind == "tokens"] if tokens > 0 else []
        reservations = [self._held(lease) for lease in leases if lease.tokens > 0]
        if not token_rules and not reservations:
            return
        await self._call(
            self._charge,
            [*(self.key(rule) for rule in token_rules), *(key for key, _ in reservations)],
            [
                tokens,
                len(token_rules),
                *(math.ceil(rule.window * 1000) for rule in token_rules),
                *(member for _, member in reservations),
            ],
        )

    async def usage(self, rules: Sequence[QuotaRule]) -> list[RuleUsage]:
        if not rules:
            return []
        args: list[object] = []
        for rule in rules:
            args.extend([*_rule_args(rule), 0])
        reply = await self._call(self._usage, self._keys(rules), args)
        out = []
        for i, rule in enumerate(rules):
            used = float(reply[2 * i])
            limit = rule.burst if rule.kind == "rate" else rule.limit
            out.append(RuleUsage(rule, used, limit, int(reply[2 * i + 1]) / 1000))
        return out

    async def ping(self) -> None:
        """Raise when Redis does not answer (the gateway checks once at start)."""
        await self._redis.ping()

    async def close(self) -> None:
        await self._redis.aclose(close_connection_pool=True)

    @property
    def _lease_ms(self) -> int:
        return math.ceil(self.lease_seconds * 1000)

    async def _call(self, script, keys, args):
        try:
            return await script(keys=keys, args=args)
        except (RedisError, OSError) as exc:
            raise QuotaStoreUnavailable(_describe(exc)) from exc


def _rule_args(rule: QuotaRule) -> list[object]:
    return [rule.kind, rule.limit, math.ceil(rule.window * 1000), rule.burst]


def _describe(exc: BaseException) -> str:
    return f"quota store (redis) is unreachable: {type(exc).__name__}: {exc}"
