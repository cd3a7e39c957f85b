-- usage: the account's committed credits and calls by route (Ledger::usage), after
-- reclaiming expired holds.
-- KEYS[1]: <prefix>:{<account>}:acct     HASH  account totals and settings
-- KEYS[2]: <prefix>:{<account>}:holds    HASH  open holds (reclaimed when expired)
-- KEYS[3]: <prefix>:{<account>}:expiry   ZSET  open hold ids by expiry (ms)
-- KEYS[4]: <prefix>:{<account>}:done     ZSET  closed hold ids by closing time (ms) and how
-- KEYS[5]: <prefix>:{<account>}:usage    HASH  'credits:<route>', 'calls:<route>' -> counts
-- KEYS[5]: <prefix>:{<account>}:topups   HASH  (not used here)
-- ARGV[1]: clock offset, ms (0 outside tests)
-- ARGV[2]: settled retention, ms
-- Returns one of:
--   {'usage', field, value, field, value, ...}   (the usage hash)
--   {'unknown_account'}                          (nothing written)

local offset, retention = common_args()

local a, now = open_account(offset, retention)
if not a then
  return { 'unknown_account' }
end

local reply = redis.call('HGETALL', KEYS[5])
table.insert(reply, 1, 'usage')
return reply
