-- reserve: holds credits of one account (Ledger::reserve).
-- KEYS, ARGV and reply as declared in scripts.rs; the keys are the data model of
-- redis/mod.rs.
-- KEYS[1]: <prefix>:{<account>}:acct
-- KEYS[2]: <prefix>:{<account>}:holds
-- KEYS[3]: <prefix>:{<account>}:expiry
-- KEYS[4]: <prefix>:{<account>}:done
-- KEYS[5]: <prefix>:{<account>}:usage    (not used here)
-- KEYS[6]: <prefix>:{<account>}:topups   (not used here)
-- KEYS[7]: <prefix>:{<account>}:outbox
-- KEYS[8]: <prefix>:{<account>}:leases
-- KEYS[9]: <prefix>:{<account>}:dead     (not used here)
-- ARGV[1]: clock offset, ms (0 outside tests)
-- ARGV[2]: closed-id grace, ms (call timeout + 1 s)
-- ARGV[3]: hold id
-- ARGV[4]: amount to hold
-- ARGV[5]: hold ttl, ms (1 .. 86400000)
-- ARGV[6]: route label ('' for none)
-- ARGV[7]: most open holds allowed ('' for no limit)
-- ARGV[8]: least amount to hold ('' for all or nothing)
-- ARGV[9]: replica: who a depletion event this refusal detects is leased to
-- ARGV[10]: event lease, ms
-- ARGV[11]: idempotency key digest, hex ('' for none)
-- ARGV[12]: request fingerprint, hex ('' for none)
-- ARGV[13]: idempotency retention, ms
-- ARGV[14]: store grace, ms: a committed record without a response is in progress so long
-- ARGV[15]: audit trail cap, entries (0: no trail; read by common_args)
-- holds_due, events_due: 0, or when the holds / events due-index must look at the
-- account (ms): the caller then writes the index entry.
-- A new hold on an account without thresholds is answered as one line of text, the same
-- words as its array ('held 5 95 0 [] ... 0': reply.rs `words`).
-- Returns one of:
--   {'held', amount, available, credit_limit, {thresholds}, expires_at_ms, replayed 0|1,
--    rate, rate_at_ms, now_ms, holds_due}  (the burn rate as in settle.lua, for the runway)
--   {'insufficient', required, available, credit_limit, {events}, events_due}  (as settle.lua)
--   {'closed', 'already_committed' | 'already_refunded' | 'expired'}
--   {'too_many_holds'}
--   {'total_out_of_range', total, amount}   (the sum that would pass MAX_AMOUNT)
--   {'unknown_account'}                     (nothing written)
--   {'replay', 'in_progress' | 'key_reused' | 'unavailable'}  (the key was used: nothing held)
--   {'replay', 'stored', response, available}

local offset, grace = common_args()
local id = hold_id_arg(3)
local amount = uint_arg(4, 'amount')
local ttl = uint_arg(5, 'ttl', 86400000)
if ttl < 1 then
  bad('ttl')
end
local route = route_arg(6)
local max_open = opt_uint_arg(7, 'max open holds')
local least = opt_uint_arg(8, 'least amount')
if not least or least > amount then
  least = amount
end
local owner = replica_arg(9)
local lease_ms = uint_arg(10, 'event lease', 86400000)
local rk, fingerprint, retention = nil, ARGV[12], nil
if ARGV[11] ~= '' then
  rk = request_key(ARGV[11])
  if type(fingerprint) ~= 'string' or #fingerprint ~= 64 then
    bad('fingerprint')
  end
  retention = uint_arg(13, 'retention', 2592000000)
end
local store_grace = uint_arg(14, 'store grace', 86400000)

-- No prune of closed ids here: the settle of this hold prunes (one or two commands fewer).
local a, now = open_account(offset, grace, true, RESERVE_FIELDS)
if not a then
  return { 'unknown_account' }
end

local open = tonumber(redis.call('HGET', KEYS[2], id))
if open then
  local expires_at = tonumber(redis.call('ZSCORE', KEYS[3], id))
  if not expires_at then
    -- An open hold missing from the expiry index (a drift reconcile reports): indexed
    -- again at its own expiry, so it lapses as it should, and answered as usual.
    expires_at = tonumber(redis.call('HGET', KEYS[2], id .. ':exp')) or (now + ttl)
    redis.call('ZADD', KEYS[3], expires_at, id)
    if expires_at < a.next_expiry then
      put(a, 'next_expiry', expires_at)
    end
  end
  return { 'held', open, available(a), a.credit_limit, thresholds_reply(a), expires_at, 1,
    rate_reply(a, now), a.rate_at, now, 0 }
end
local how = closed_how(id, now)
if how then
  return { 'closed', already(how) }
end
if rk then
  -- The first request with this key: what it came to, if it still counts.
  local r = redis.call('HMGET', rk, 'fp', 'hold', 'committed_at', 'response', 'unavailable',
    'until')
  if r[1] and now >= tonumber(r[6]) then
    -- Past its retention (on this clock; the key's TTL only cleans up).
    redis.call('DEL', rk)
  elseif r[1] then
    if r[1] ~= fingerprint then
      return { 'replay', 'key_reused' }
    elseif r[5] then
      return { 'replay', 'unavailable' }
    elseif r[3] and r[4] then
      return { 'replay', 'stored', r[4], available(a) }
    elseif r[3] then
      if now - tonumber(r[3]) < store_grace then
        return { 'replay', 'in_progress' }
      end
      return { 'replay', 'unavailable' }
    elseif redis.call('HEXISTS', KEYS[2], r[2]) == 1 then
      return { 'replay', 'in_progress' }
    end
    -- Its hold expired or was refunded unsettled: nothing was charged; run it again.
    redis.call('DEL', rk)
  end
end
-- amount > available + credit_limit, written so that no sum leaves the exact range. With a
-- least amount, hold what the account can afford down to it, in this same atomic step.
if amount - a.credit_limit > available(a) then
  if least - a.credit_limit > available(a) then
    -- The first refusal until the next top-up tells someone: the one write a refusal makes.
    local events = {}
    if not a.depleted then
      put(a, 'depleted', true)
      events[1] = emit(a, now, owner, lease_ms, 'balance.depleted', nil, nil)
    end
    return { 'insufficient', least, available(a), a.credit_limit, events, a.events_due or 0 }
  end
  amount = available(a) + a.credit_limit
end
if max_open and redis.call('ZCARD', KEYS[3]) >= max_open then
  return { 'too_many_holds' }
end
-- committed + held can reach topped_up + credit_limit: keep both in range.
if a.held + amount > MAX_AMOUNT then
  return { 'total_out_of_range', a.held, amount }
end
if a.committed + a.held + amount > MAX_AMOUNT then
  return { 'total_out_of_range', a.committed, a.held + amount }
end

local expires_at = now + ttl
-- The expiry beside the amount too, so the settle reads both in one HMGET (the expiry
-- index stays the one the reclaims walk).
local expires_text = int(expires_at)
if route ~= '' then
  redis.call('HSET', KEYS[2], id, int(amount), id .. ':exp', expires_text, id .. ':route', route)
else
  redis.call('HSET', KEYS[2], id, int(amount), id .. ':exp', expires_text)
end
redis.call('ZADD', KEYS[3], expires_text, id)
a.held = a.held + amount
if rk then
  redis.call('HSET', rk, 'fp', fingerprint, 'hold', id, 'until', now + retention)
  redis.call('PEXPIRE', rk, retention + grace)
end
-- The account's one write: its totals, the next expiry and the audit entry's number.
local fields = { 'held', a.held }
if expires_at < a.next_expiry then
  -- The earliest open hold now: the next reclaim looks once it has passed.
  a.next_expiry = expires_at
  fields[3], fields[4] = 'next_expiry', expires_at
end
audit(a, now, 'reserve', amount, id, route, fields)
save_fields(a, fields)
-- The sweeper finds the account through the holds due-index: entered when the account had
-- no entry, or needs an earlier look (once per active period, not once per request).
local holds_due = note_due(a, 'due_holds', a.next_expiry)
-- The usual answer (an account without thresholds) as one line of text (see reply.rs
-- `words`), where '%d' spells integers: cheaper for Redis to send than an array of eleven,
-- and far cheaper for the client to read. Else the array (a list of thresholds spelled
-- cost more than the array saved).
local f = not a.thresholds_text and int_formatter()
if f then
  -- The account written first: should the text ever fail to format, nothing is left
  -- half-written (with_expired's own call then finds nothing to do).
  finish_account()
  return f('held %d %d %d [] %d 0 %s %d %d %d', amount, available(a), a.credit_limit,
    expires_at, rate_reply(a, now), a.rate_at, now, holds_due)
end
return { 'held', amount, available(a), a.credit_limit, thresholds_reply(a), expires_at, 0,
  rate_reply(a, now), a.rate_at, now, holds_due }
