-- balance: the account's balance and totals (Ledger::balance), after reclaiming expired holds.
-- KEYS[1]: <prefix>:{<account>}:acct     HASH  account totals and settings
-- KEYS[2]: <prefix>:{<account>}:holds    HASH  open holds (reclaimed when expired)
-- KEYS[3]: <prefix>:{<account>}:expiry   ZSET  open hold ids by expiry (ms)
-- KEYS[4]: <prefix>:{<account>}:done     ZSET  closed hold ids by closing time (ms) and how
-- KEYS[5]: <prefix>:{<account>}:usage    HASH  (not used here)
-- KEYS[5]: <prefix>:{<account>}:topups   HASH  (not used here)
-- ARGV[1]: clock offset, ms (0 outside tests)
-- ARGV[2]: settled retention, ms
-- Returns one of:
--   {'balance', available, held, committed, topped_up, credit_limit, threshold | -1,
--    open_holds, rate, rate_at_ms, now_ms}
--   {'unknown_account'}   (nothing written)

local offset, retention = common_args()

local a, now = open_account(offset, retention)
if not a then
  return { 'unknown_account' }
end

return { 'balance', available(a), a.held, a.committed, a.topped_up, a.credit_limit,
  threshold_reply(a), redis.call('ZCARD', KEYS[3]), rate_reply(a), a.rate_at, now }
