"""Dead consumers leave the consumer group (docs/robustness.md). A worker's consumer stays in
the group after the worker died; the reclaim step removes each one that holds no pending entry, has
no live heartbeat (``schemas.queue.worker_key``) and was idle longer than the claim idle time. One that
still holds entries stays until they were claimed: XGROUP DELCONSUMER would drop them."""

from __future__ import annotations

import logging

import redis

from schemas import queue as q

log = logging.getLogger("whitebox.worker")

# KEYS: stream, heartbeat key. ARGV: group, consumer, min idle ms. The check and the removal are one
# atomic step, so a consumer that reads an entry meanwhile cannot lose it. Returns 1 when removed.
REMOVE_SCRIPT = """
if redis.call('EXISTS', KEYS[2]) == 1 then return 0 end
for _, c in ipairs(redis.call('XINFO', 'CONSUMERS', KEYS[1], ARGV[1])) do
  local f = {}
  for i = 1, #c, 2 do f[c[i]] = c[i + 1] end
  if f['name'] == ARGV[2] then
    if tonumber(f['pending']) > 0 or tonumber(f['idle']) < tonumber(ARGV[3]) then return 0 end
    redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], ARGV[2])
    return 1
  end
end
return 0
"""


def remove_dead_consumers(r: redis.Redis, stream: str, min_idle_ms: int, me: str) -> list[str]:
    """Remove from ``stream``'s group the consumers that are dead (no pending entry, no heartbeat, idle
    at least ``min_idle_ms``), never ``me``; the names removed."""
    script = r.register_script(REMOVE_SCRIPT)
    removed = []
    for c in r.xinfo_consumers(stream, q.GROUP):
        name = c["name"]
        if name == me or c["pending"] > 0 or c["idle"] < min_idle_ms:
            continue
        if script(keys=[stream, q.worker_key(name)], args=[q.GROUP, name, min_idle_ms]):
            removed.append(name)
    if removed:
        log.info("removed %d dead consumers from %s: %s", len(removed), stream, ", ".join(removed))
    return removed
