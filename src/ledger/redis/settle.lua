-- settle: commits or refunds one hold (Ledger::commit, Ledger::refund).
-- KEYS, ARGV and reply as declared in scripts.rs; the keys are the data model of
-- redis/mod.rs.
-- KEYS[1]: <prefix>:{<account>}:acct
-- KEYS[2]: <prefix>:{<account>}:holds
-- KEYS[3]: <prefix>:{<account>}:expiry
-- KEYS[4]: <prefix>:{<account>}:done
-- KEYS[5]: <prefix>:{<account>}:usage
-- KEYS[6]: <prefix>:{<account>}:topups   (not used here)
-- KEYS[7]: <prefix>:{<account>}:outbox
-- KEYS[8]: <prefix>:{<account>}:leases
-- KEYS[9]: <prefix>:{<account>}:dead     (not used here)
-- ARGV[1]: clock offset, ms (0 outside tests)
-- ARGV[2]: closed-id grace, ms (call timeout + 1 s)
-- ARGV[3]: hold id
-- ARGV[4]: 'commit' or 'refund'
-- ARGV[5]: actual cost to commit ('0' for a refund); clamped to the hold
-- ARGV[6]: tombstone ttl, ms: the longest TTL a reserve of an unseen id may have had
-- ARGV[7]: replica: who the events this commit detects are leased to
-- ARGV[8]: event lease, ms
-- ARGV[9]: idempotency key digest, hex, the reserve claimed ('' for none)
-- ARGV[10]: audit trail cap, entries (0: no trail; read by common_args)
-- In the reply, outcome is 'committed' | 'refunded' | 'already_committed'
-- | 'already_refunded' | 'expired' | 'unknown' (a refund of an unknown id leaves a
-- tombstone), rate the stored burn rate (credits/s) as a string, to be decayed to now_ms,
-- and each event {entry_id, type, available, threshold | -1, runway_secs | -1, at_ms,
-- seq} (its id derives from the account and seq), and events_due 0, or when the events
-- due-index must look at the account (ms).
-- Without thresholds or events, the answer is one line of text, the same words as its
-- array ('settled committed 5 0 0 95 [] ... [] 0': reply.rs `words`).
-- Returns one of:
--   {'settled', outcome, committed, released, clamped 0|1, available, {thresholds},
--    rate, rate_at_ms, now_ms, {events}, events_due}
--   {'unknown_account'}   (nothing written)

local offset, grace = common_args()
local id = hold_id_arg(3)
local mode = ARGV[4]
if mode ~= 'commit' and mode ~= 'refund' then
  bad('mode')
end
local actual = uint_arg(5, 'actual cost')
local tombstone_ttl = uint_arg(6, 'tombstone ttl', 86400000)
local owner = replica_arg(7)
local lease_ms = uint_arg(8, 'event lease', 86400000)
local rk = nil
if ARGV[9] ~= '' then
  rk = request_key(ARGV[9])
end

local a, now = open_account(offset, grace, false, SETTLE_FIELDS)
if not a then
  return { 'unknown_account' }
end

local function reply(outcome, committed, released, clamped, events)
  -- Without thresholds and events (the usual answer), one line of text, as reserve.lua's.
  local f = #events == 0 and not a.thresholds_text and int_formatter()
  if f then
    finish_account() -- first, as in reserve.lua
    return f('settled %s %d %d %d %d [] %s %d %d [] %d', outcome, committed, released,
      clamped, available(a), rate_reply(a, now), a.rate_at, now, a.events_due or 0)
  end
  return { 'settled', outcome, committed, released, clamped, available(a), thresholds_reply(a),
    rate_reply(a, now), a.rate_at, now, events, a.events_due or 0 }
end

local hold = redis.call('HMGET', KEYS[2], id, id .. ':route', id .. ':exp')
local amount = tonumber(hold[1])
if not amount then
  local how = closed_how(id, now)
  if how then
    return reply(already(how), 0, 0, 0, {})
  end
  if mode == 'refund' then
    -- A refund that overtook its reserve: the tombstone keeps the reserve out, as long as
    -- that hold could live had it run now (see LongestTtl in ledger/mod.rs).
    local forget = forget_at(now, now + tombstone_ttl, grace)
    close(id, 'refunded', forget)
    expire_done(a, forget, now)
  end
  return reply('unknown', 0, 0, 0, {})
end

local route = hold[2] or ''
-- The hold's expiry says how long a call about it may still come (forget_at).
-- (A hold reserved by a version that kept no `:exp` field has it in the index only.)
local expires_at = tonumber(hold[3]) or tonumber(redis.call('ZSCORE', KEYS[3], id)) or now
redis.call('HDEL', KEYS[2], id, id .. ':route', id .. ':exp')
redis.call('ZREM', KEYS[3], id)
a.held = a.held - amount

local outcome, charged, clamped, events = 'refunded', 0, 0, {}
-- The account's one write: its totals, its spend history and the audit entry's number.
local fields = { 'held', a.held }
if mode == 'commit' then
  outcome = 'committed'
  charged = math.min(actual, amount)
  if actual > amount then
    clamped = 1
  end
  a.committed = a.committed + charged
  a.rate = decayed_rate(a.rate, a.rate_at, now) + charged / BURN_RATE_TAU_SECS
  a.rate_at = now
  -- Spelled here, once, for both the write and the reply: "%.17g" reads back as the same
  -- double, and the reply need not read the field again.
  -- (A packed account keeps the number: rate_reply spells it if the reply needs it.)
  a.rate_text = not a.packed and string.format('%.17g', a.rate) or nil
  -- The spend history that earns a runway: commits of at least a credit, and the first
  -- (exact: every total is at most 2^53 - 1).
  fields[3], fields[4], fields[5], fields[6], fields[7], fields[8] =
    'committed', a.committed, 'rate', a.rate_text or a.rate, 'rate_at', now
  -- Counted only up to what a runway asks for (runway_known reads no more): past it, the
  -- count is a write each commit need not make.
  if charged > 0 and a.commits < RUNWAY_MIN_COMMITS then
    a.commits = a.commits + 1
    fields[9], fields[10] = 'commits', a.commits
    if not a.first_commit_at then
      a.first_commit_at = now
      fields[11], fields[12] = 'first_commit_at', now
    end
  end
  audit(a, now, 'commit', charged, id, route, fields)
  redis.call('HINCRBY', KEYS[5], 'credits:' .. route, int(charged))
  redis.call('HINCRBY', KEYS[5], 'calls:' .. route, '1')
  events = alerts_after_commit(a, now, owner, lease_ms)
else
  audit(a, now, 'refund', amount, id, route, fields)
end
local forget = forget_at(now, expires_at, grace)
close(id, outcome, forget)
expire_done(a, forget, now, fields)
save_fields(a, fields)
if rk and request_of(rk, id) then
  if outcome == 'committed' then
    redis.call('HSET', rk, 'committed_at', now)
  else
    -- Refunded: the retry runs again.
    redis.call('DEL', rk)
  end
end
return reply(outcome, charged, amount - charged, clamped, events)
