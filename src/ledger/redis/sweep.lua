-- sweep: reclaims the expired holds of one account that may see no request
-- (RedisLedger::sweep_expired).
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
-- Returns one of:
--   {'swept', reclaimed, open_holds}   (at most RECLAIM_LIMIT holds reclaimed per call)
--   {'unknown_account'}                (nothing written)

local offset, grace = common_args()

local a = load_account()
if not a.exists then
  return { 'unknown_account' }
end
-- The sweeper always looks at the expiry index, whatever next_expiry says: it is the
-- backstop for a hold whose writer did not keep next_expiry (a script of an older version
-- during a rolling upgrade).
a.next_expiry = nil
local reclaimed = reclaim(a, now_ms(offset), grace)

return { 'swept', reclaimed, redis.call('ZCARD', KEYS[3]) }
