-- balance: the account's balance and totals (Ledger::balance), after reclaiming expired holds.
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
-- ARGV[3]: audit trail cap, entries (0: no trail; read by common_args)
-- Returns one of:
--   {'balance', available, held, committed, topped_up, credit_limit, {thresholds},
--    runway_horizon_secs, open_holds, rate, rate_at_ms, now_ms}
--   {'unknown_account'}   (nothing written)

local offset, grace = common_args()

local a, now = open_account(offset, grace)
if not a then
  return { 'unknown_account' }
end

return { 'balance', available(a), a.held, a.committed, a.topped_up, a.credit_limit,
  thresholds_reply(a), a.horizon or DEFAULT_RUNWAY_HORIZON_SECS, redis.call('ZCARD', KEYS[3]),
  rate_reply(a, now), a.rate_at, now }
