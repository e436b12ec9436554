"""Abuse limits kept in Redis (keys: ``schemas.queue``), so that every gateway process shares them: a token
bucket per client (``rate_limit_rps``, ``rate_limit_burst``), the jobs a client may have queued or running
at once (``max_jobs_per_key``), and the lockout of an address after ``auth_failures_per_min`` wrong keys.
Each answers 429 + Retry-After. A client is its API key's hash, or its address when no keys are
configured (docs/robustness.md)."""

from __future__ import annotations

import math
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import Request

from schemas import queue as q
from schemas.problems import TooManyRequests
from schemas.status import JobStatus
from service.state import Gateway

CLIENT = "whitebox.client"  # scope key: the client the auth check identified
FAILURE_WINDOW_S = 60
RESERVATION = "r:"  # quota members that hold room for jobs being enqueued
RESERVATION_TTL_S = 60  # a reservation older than this belongs to a gateway that died mid-submit

# KEYS[1] bucket; ARGV: rate (tokens/s), burst, now (s). Returns {1, 0} or {0, seconds until a token}.
TOKEN_BUCKET = """
local rate, burst, now = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local b = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens, ts = tonumber(b[1]) or burst, tonumber(b[2]) or now
tokens = math.min(burst, tokens + math.max(0, now - ts) * rate)
local allowed, wait = 0, 0
if tokens >= 1 then tokens = tokens - 1; allowed = 1 else wait = (1 - tokens) / rate end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'ts', tostring(now))
redis.call('EXPIRE', KEYS[1], math.ceil(burst / rate) + 1)
return {allowed, tostring(wait)}
"""

# KEYS[1] the address' count; ARGV[1] the window (s), which starts with the first failure
COUNT_FAILURE = """
local n = redis.call('INCR', KEYS[1])
if redis.call('TTL', KEYS[1]) < 0 then redis.call('EXPIRE', KEYS[1], tonumber(ARGV[1])) end
return n
"""

# KEYS[1] the client's job set; ARGV: max, n, job key prefix, now, reservation ttl, reservation id, ttl,
# then the finished statuses. Drops finished or vanished jobs and stale reservations; when n more fit,
# adds n reservations and returns -1, else returns the number of live jobs.
ADMIT = """
local max, n, prefix, now = tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[3], tonumber(ARGV[4])
local finished = {}
for i = 8, #ARGV do finished[ARGV[i]] = true end
local live = 0
local members = redis.call('ZRANGE', KEYS[1], 0, -1, 'WITHSCORES')
for i = 1, #members, 2 do
  local id, score = members[i], tonumber(members[i + 1])
  local gone
  if string.sub(id, 1, 2) == 'r:' then
    gone = now - score > tonumber(ARGV[5])
  else
    local st = redis.call('HGET', prefix .. id, 'status')
    gone = (not st) or finished[st]
  end
  if gone then redis.call('ZREM', KEYS[1], id) else live = live + 1 end
end
if live + n > max then return live end
for i = 1, n do redis.call('ZADD', KEYS[1], now, 'r:' .. ARGV[6] .. ':' .. i) end
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[7]))
return -1
"""


def client_address(request: Request) -> str:
    return request.client.host if request.client is not None else "unknown"


def client_of(request: Request) -> str:
    """The client the auth check noted (``key-<hash>``), else the request's address."""
    return str(request.scope.get(CLIENT) or "addr-" + client_address(request))


def _retry(seconds: float) -> dict[str, str]:
    return {"Retry-After": str(max(1, math.ceil(seconds)))}


async def take_token(gw: Gateway, request: Request) -> None:
    """One request of the client's token bucket; 429 + Retry-After when it is empty."""
    s = gw.settings
    if s.rate_limit_rps <= 0:
        return
    script = gw.queue.redis.register_script(TOKEN_BUCKET)
    allowed, wait = await script(
        keys=[q.rate_key(client_of(request))], args=[s.rate_limit_rps, s.rate_limit_burst, time.time()]
    )
    if int(allowed) != 1:
        raise TooManyRequests(
            f"over the rate limit of {s.rate_limit_rps:g} requests/s (burst {s.rate_limit_burst})",
            headers=_retry(float(wait)),
        )


async def check_lockout(gw: Gateway, address: str) -> None:
    """429 while the address has sent ``auth_failures_per_min`` wrong keys within the last minute."""
    key = q.auth_failures_key(address)
    failures = await gw.queue.redis.get(key)
    if failures is not None and int(failures) >= gw.settings.auth_failures_per_min:
        ttl = await gw.queue.redis.ttl(key)
        raise TooManyRequests(
            f"too many wrong API keys from this address (limit {gw.settings.auth_failures_per_min} a minute)",
            headers=_retry(ttl if ttl > 0 else FAILURE_WINDOW_S),
        )


async def note_failure(gw: Gateway, address: str) -> None:
    """Count a wrong key of the address; the window starts with the first failure."""
    await gw.queue.redis.register_script(COUNT_FAILURE)(keys=[q.auth_failures_key(address)], args=[FAILURE_WINDOW_S])


@asynccontextmanager
async def job_slots(gw: Gateway, request: Request, n: int) -> AsyncIterator[list[str]]:
    """Room for ``n`` jobs of the request's client (429 + Retry-After when its queued or running jobs
    would exceed ``max_jobs_per_key``). The caller appends the ids it enqueued to the yielded list;
    they replace the reservations, which are dropped whatever happens."""
    ids: list[str] = []
    s = gw.settings
    if s.max_jobs_per_key <= 0:
        yield ids
        return
    r = gw.queue.redis
    key, token = q.quota_key(client_of(request)), uuid.uuid4().hex
    finished = [st.value for st in JobStatus if st.finished]
    args: list[str | int | float] = [s.max_jobs_per_key, n, q.job_key(""), time.time(), RESERVATION_TTL_S, token]
    args += [s.result_ttl_s, *finished]
    live = int(await r.register_script(ADMIT)(keys=[key], args=args))
    if live >= 0:
        raise TooManyRequests(
            f"{live} jobs of this client are queued or running; the quota is {s.max_jobs_per_key}"
            + (f" (this request has {n})" if n > 1 else ""),
            headers=_retry(gw.settings.retry_after_s),
        )
    try:
        yield ids
    finally:
        async with r.pipeline(transaction=True) as p:
            p.zrem(key, *[f"{RESERVATION}{token}:{i}" for i in range(1, n + 1)])
            if ids:
                p.zadd(key, {job_id: time.time() for job_id in ids})
            await p.execute()
