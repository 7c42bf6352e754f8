"""The Redis store's state changes, each one Lua script so that it is atomic across replicas.

Job hash ``ddpm:job:{id}``: id, owner, status, spec, n, seq, msg (its stream entry), token
(the live claim), consumer, attempts, times, progress, error. ``ddpm:queued`` counts each
owner's queued images (the quota). A job leaves the stream (XACK + XDEL) when it ends, so the
stream's length is the backlog (queued + running) that autoscalers read.
"""

from __future__ import annotations

# KEYS: job, owner zset, stream, queued, seq, idem
# ARGV: id, owner, spec, n, now, expires_at, drop_at_ms, fingerprint, use_idem, quota (-1: none), idem_ttl_ms
CREATE = """
if ARGV[9] == '1' then
  local existing = redis.call('GET', KEYS[6])
  if existing then return {'existing', existing} end
end
local n = tonumber(ARGV[4])
local quota = tonumber(ARGV[10])
if quota >= 0 then
  local queued = tonumber(redis.call('HGET', KEYS[4], ARGV[2]) or '0')
  if queued + n > quota then return {'quota', tostring(queued)} end
end
local seq = redis.call('INCR', KEYS[5])
local msg = redis.call('XADD', KEYS[3], '*', 'id', ARGV[1], 'n', ARGV[4], 'owner', ARGV[2])
redis.call('HSET', KEYS[1], 'id', ARGV[1], 'owner', ARGV[2], 'status', 'queued', 'spec', ARGV[3], 'n', ARGV[4],
           'created_at', ARGV[5], 'expires_at', ARGV[6], 'seq', seq, 'msg', msg, 'attempts', 0,
           'fingerprint', ARGV[8])
redis.call('PEXPIREAT', KEYS[1], ARGV[7])
redis.call('ZADD', KEYS[2], seq, ARGV[1])
redis.call('PEXPIREAT', KEYS[2], ARGV[7])
redis.call('HINCRBY', KEYS[4], ARGV[2], n)
if ARGV[9] == '1' then
  redis.call('SET', KEYS[6], ARGV[1], 'PX', ARGV[11])
  redis.call('HSET', KEYS[1], 'idem', KEYS[6])
end
return {'created', ARGV[1]}
"""

# KEYS: job, queued.  ARGV: token, consumer, now, msg, owner, n, max_attempts
# Returns claimed, gone (the record expired away), or the status that stops the claim.
CLAIM = """
local status = redis.call('HGET', KEYS[1], 'status')
local n = tonumber(ARGV[6])
if not status then
  redis.call('HINCRBY', KEYS[2], ARGV[5], -n)
  return 'gone'
end
if status ~= 'queued' and status ~= 'running' then return status end
if status == 'queued' then redis.call('HINCRBY', KEYS[2], ARGV[5], -n) end
if tonumber(redis.call('HGET', KEYS[1], 'expires_at')) <= tonumber(ARGV[3]) then
  redis.call('HSET', KEYS[1], 'status', 'failed', 'finished_at', ARGV[3],
             'error', '{"status": 504, "message": "the job expired before it could run"}')
  redis.call('HDEL', KEYS[1], 'token')
  return 'expired'
end
local attempts = tonumber(redis.call('HGET', KEYS[1], 'attempts'))
if attempts >= tonumber(ARGV[7]) then
  redis.call('HSET', KEYS[1], 'status', 'failed', 'finished_at', ARGV[3], 'error',
             '{"status": 500, "message": "the replicas running this job died ' .. attempts .. ' times"}')
  redis.call('HDEL', KEYS[1], 'token')
  return 'poison'
end
redis.call('HSET', KEYS[1], 'status', 'running', 'token', ARGV[1], 'consumer', ARGV[2], 'msg', ARGV[4])
redis.call('HINCRBY', KEYS[1], 'attempts', 1)
if not redis.call('HGET', KEYS[1], 'started_at') then redis.call('HSET', KEYS[1], 'started_at', ARGV[3]) end
return 'claimed'
"""

# KEYS: job, queued, stream, images, outbox (zset), deliveries (hash)
# ARGV: 1 allowed statuses (space-separated), 2 token ('' = any holder), 3 now, 4 new status ('' = keep:
# then a held claim's lease is renewed), 5 group, 6 pexpireat of the job ('' = keep), 7 image count k,
# 8 pexpireat of the images, 9 webhook delivery id ('' = none), 10 its due time (ms), 11 its record,
# 12 .. 11+2k (index, PNG) pairs, then field/value pairs to set.
# Returns {outcome, status before}: ok, missing, status, token, expired.
TRANSITION = """
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return {'missing', ''} end
if not string.find(' ' .. ARGV[1] .. ' ', ' ' .. status .. ' ', 1, true) then return {'status', status} end
if ARGV[2] ~= '' and redis.call('HGET', KEYS[1], 'token') ~= ARGV[2] then return {'token', status} end
if tonumber(redis.call('HGET', KEYS[1], 'expires_at')) <= tonumber(ARGV[3]) then return {'expired', status} end
local k = tonumber(ARGV[7])
for i = 1, k do redis.call('HSET', KEYS[4], ARGV[10 + 2 * i], ARGV[11 + 2 * i]) end
if k > 0 then redis.call('PEXPIREAT', KEYS[4], ARGV[8]) end
if #ARGV > 11 + 2 * k then redis.call('HSET', KEYS[1], unpack(ARGV, 12 + 2 * k)) end
if ARGV[9] ~= '' and redis.call('HSETNX', KEYS[6], ARGV[9], ARGV[11]) == 1 then
  redis.call('ZADD', KEYS[5], 'NX', ARGV[10], ARGV[9])
end
local msg = redis.call('HGET', KEYS[1], 'msg')
if ARGV[4] ~= '' then
  redis.call('HSET', KEYS[1], 'status', ARGV[4])
  redis.call('HDEL', KEYS[1], 'token')
  if status == 'queued' then
    redis.call('HINCRBY', KEYS[2], redis.call('HGET', KEYS[1], 'owner'), -tonumber(redis.call('HGET', KEYS[1], 'n')))
  end
  redis.call('XACK', KEYS[3], ARGV[5], msg)
  redis.call('XDEL', KEYS[3], msg)
elseif ARGV[2] ~= '' then
  redis.call('XCLAIM', KEYS[3], ARGV[5], redis.call('HGET', KEYS[1], 'consumer'), 0, msg, 'JUSTID')
end
if ARGV[6] ~= '' then redis.call('PEXPIREAT', KEYS[1], ARGV[6]) end
return {'ok', status}
"""

# KEYS: outbox (zset: delivery id -> due ms), deliveries (hash: id -> record, id:n -> attempts)
# ARGV: now (ms), lease (ms), limit.  Due deliveries, each pushed a lease ahead (taken) and its
# attempt counted; returns id, record, attempt for each.
TAKE_DELIVERIES = """
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[3]))
local out = {}
for _, id in ipairs(ids) do
  local record = redis.call('HGET', KEYS[2], id)
  if record then
    redis.call('ZADD', KEYS[1], tonumber(ARGV[1]) + tonumber(ARGV[2]), id)
    table.insert(out, id)
    table.insert(out, record)
    table.insert(out, redis.call('HINCRBY', KEYS[2], id .. ':n', 1))
  else
    redis.call('ZREM', KEYS[1], id)
  end
end
return out
"""

# KEYS: job, queued, stream.  ARGV: token, group.  A held job back to the queue, as a new stream
# entry (a stream only grows at its end: it queues behind what waits now).
RELEASE = """
if redis.call('HGET', KEYS[1], 'status') ~= 'running' or redis.call('HGET', KEYS[1], 'token') ~= ARGV[1] then
  return 0
end
local msg = redis.call('HGET', KEYS[1], 'msg')
local id, n, owner = unpack(redis.call('HMGET', KEYS[1], 'id', 'n', 'owner'))
redis.call('XACK', KEYS[3], ARGV[2], msg)
redis.call('XDEL', KEYS[3], msg)
local new = redis.call('XADD', KEYS[3], '*', 'id', id, 'n', n, 'owner', owner)
redis.call('HSET', KEYS[1], 'status', 'queued', 'msg', new)
redis.call('HDEL', KEYS[1], 'token')
redis.call('HINCRBY', KEYS[1], 'attempts', -1)
redis.call('HINCRBY', KEYS[2], owner, tonumber(n))
return 1
"""
