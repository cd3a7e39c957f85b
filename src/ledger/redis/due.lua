-- due: one due-index (accounts scored by when background work should look at them) and
-- the lease and repair state of its passes (RedisLedger's sweeper and event claims).
-- Not an account script: its keys share the hash tag `{!due}`, which no account id can
-- be ('!' is not allowed in one), so on Redis Cluster they live in one slot of their own.
-- KEYS[1]: <prefix>:{!due}:<kind>         ZSET account -> when to look (ms)
-- KEYS[2]: <prefix>:{!due}:<kind>:lease   STRING the replica doing a pass (PX)
-- KEYS[3]: <prefix>:{!due}:repair         HASH <kind>_cursor, <kind>_next_at (ms)
-- ARGV[1]: operation: 'take' | 'done'
-- take: ARGV[2] replica ('' for a pass without the lease), ARGV[3] lease, ms,
--       ARGV[4] clock offset, ms, ARGV[5] most accounts, ARGV[6] kind,
--       ARGV[7] ms between two repair steps ('' for no repair step), ARGV[8] most repair
--       steps one pass may take (the steps owed since the last, for a pass that runs less
--       often than one a gap)
-- done: ARGV[2] replica (''), ARGV[3] kind, ARGV[4] new repair cursor ('' for no step),
--       then triples from ARGV[5]: account, score it was taken at ('' for a repair
--       find: the entry is only ever lowered), new score (0: remove)
-- Returns one of:
--   {'idle'}                                 (nothing due, no repair step: no lease taken)
--   {'busy'}                                 (another replica holds the lease)
--   {'due', repair_cursor | '', repair_steps, account, score, account, score, ...}
--   {'done'}

local op = ARGV[1]

local function now_ms(offset)
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) + offset
end

if op == 'take' then
  local replica, lease_ms = ARGV[2], tonumber(ARGV[3])
  local now = now_ms(tonumber(ARGV[4]))
  local limit, kind, gap = tonumber(ARGV[5]), ARGV[6], ARGV[7]
  local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'WITHSCORES', 'LIMIT', 0, limit)
  -- The repair step's clock is Redis's own: a test clock must not make it run more often.
  local real_now = now_ms(0)
  local step = false
  local steps = 0
  if gap ~= '' then
    gap = tonumber(gap)
    local next_at = tonumber(redis.call('HGET', KEYS[3], kind .. '_next_at'))
    if not next_at then
      step, steps = true, 1
    elseif next_at <= real_now then
      step = true
      steps = math.min(tonumber(ARGV[8]), 1 + math.floor((real_now - next_at) / gap))
    end
  end
  if #due == 0 and not step then
    return { 'idle' }
  end
  if replica ~= '' then
    local holder = redis.call('GET', KEYS[2])
    if holder and holder ~= replica then
      return { 'busy' }
    end
    redis.call('SET', KEYS[2], replica, 'PX', lease_ms)
  end
  local cursor = ''
  if step then
    redis.call('HSET', KEYS[3], kind .. '_next_at', real_now + gap)
    cursor = redis.call('HGET', KEYS[3], kind .. '_cursor') or '0'
  end
  local reply = { 'due', cursor, steps }
  for _, v in ipairs(due) do
    reply[#reply + 1] = v
  end
  return reply
elseif op == 'done' then
  local replica, kind, cursor = ARGV[2], ARGV[3], ARGV[4]
  for i = 5, #ARGV - 2, 3 do
    local account, taken, new = ARGV[i], ARGV[i + 1], tonumber(ARGV[i + 2])
    local score = tonumber(redis.call('ZSCORE', KEYS[1], account))
    if taken == '' then
      -- A repair find: enter it, or look earlier; never later than a call asked.
      if new > 0 and (not score or new < score) then
        redis.call('ZADD', KEYS[1], new, account)
      end
    elseif score == tonumber(taken) then
      -- Unchanged since the pass took it: no call entered it again meanwhile (a call
      -- writes its own, later, score), so the pass's answer stands.
      if new > 0 then
        redis.call('ZADD', KEYS[1], new, account)
      else
        redis.call('ZREM', KEYS[1], account)
      end
    end
  end
  if cursor ~= '' then
    redis.call('HSET', KEYS[3], kind .. '_cursor', cursor)
  end
  if replica ~= '' and redis.call('GET', KEYS[2]) == replica then
    redis.call('DEL', KEYS[2])
  end
  return { 'done' }
end
error({ err = 'ERR tower-credits: invalid argument: operation' })
