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
-- ARGV[3]: audit trail cap, entries (0: no trail; read by common_args)
-- holds_due: when the earliest open hold expires (ms; 0 for none), the score the holds
-- due-index keeps for the account.
-- Returns one of:
--   {'swept', reclaimed, open_holds, holds_due}   (at most RECLAIM_LIMIT reclaimed a call)
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

-- What the holds due-index keeps for the account from now on: its earliest open hold's
-- expiry, or no entry (the next reserve enters it again).
local due = 0
if a.next_expiry < NO_OPEN_HOLDS then
  due = a.next_expiry
  if a.due_holds ~= due then
    put(a, 'due_holds', due)
  end
elseif a.due_holds then
  clear(a, 'due_holds', nil)
end
return { 'swept', reclaimed, redis.call('ZCARD', KEYS[3]), due }
