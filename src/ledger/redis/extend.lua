-- extend: keeps an open hold alive (Ledger::extend).
-- KEYS, ARGV and reply as declared in scripts.rs; the keys are the data model of
-- redis/mod.rs.
-- KEYS[1]: <prefix>:{<account>}:acct
-- KEYS[2]: <prefix>:{<account>}:holds
-- KEYS[3]: <prefix>:{<account>}:expiry
-- KEYS[4]: <prefix>:{<account>}:done
-- KEYS[5]: <prefix>:{<account>}:usage    (not used here)
-- KEYS[6]: <prefix>:{<account>}:topups   (not used here)
-- KEYS[7]: <prefix>:{<account>}:outbox   (not used here)
-- KEYS[8]: <prefix>:{<account>}:leases   (not used here)
-- KEYS[9]: <prefix>:{<account>}:dead     (not used here)
-- ARGV[1]: clock offset, ms (0 outside tests)
-- ARGV[2]: closed-id grace, ms (call timeout + 1 s)
-- ARGV[3]: hold id
-- ARGV[4]: new ttl from now, ms (1 .. 86400000)
-- ARGV[5]: audit trail cap, entries (0: no trail; read by common_args)
-- Returns one of:
--   {'until', expires_at_ms}
--   {'not_open', 'already_committed' | 'already_refunded' | 'expired' | 'unknown'}

local offset, grace = common_args()
local id = hold_id_arg(3)
local ttl = uint_arg(4, 'ttl', 86400000)
if ttl < 1 then
  bad('ttl')
end

local a, now = open_account(offset, grace)
if not a then
  return { 'not_open', 'unknown' }
end

if redis.call('HEXISTS', KEYS[2], id) == 0 then
  local how = closed_how(id, now)
  if how then
    return { 'not_open', already(how) }
  end
  return { 'not_open', 'unknown' }
end
local expires_at = now + ttl
redis.call('ZADD', KEYS[3], expires_at, id)
redis.call('HSET', KEYS[2], id .. ':exp', expires_at)
-- A shorter ttl than the hold had moves its expiry earlier: keep next_expiry a lower bound.
if expires_at < a.next_expiry then
  put(a, 'next_expiry', expires_at)
end
return { 'until', expires_at }
