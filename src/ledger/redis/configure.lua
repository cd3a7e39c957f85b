-- configure: sets the account's credit limit and low-balance threshold (Ledger::configure).
-- Creates the account. Like the in-memory ledger, reclaims nothing.
-- KEYS, ARGV and reply as declared in scripts.rs; the keys are the data model of
-- redis/mod.rs.
-- KEYS[1]: <prefix>:{<account>}:acct
-- KEYS[2]: <prefix>:{<account>}:holds    (not used here)
-- KEYS[3]: <prefix>:{<account>}:expiry   (not used here)
-- KEYS[4]: <prefix>:{<account>}:done     (not used here)
-- KEYS[5]: <prefix>:{<account>}:usage    (not used here)
-- KEYS[6]: <prefix>:{<account>}:topups   (not used here)
-- ARGV[1]: clock offset, ms (0 outside tests; unused)
-- ARGV[2]: closed-id grace, ms (unused)
-- ARGV[3]: credit limit
-- ARGV[4]: low-balance threshold ('' for none)
-- Returns:
--   {'configured'}

common_args()
local credit_limit = uint_arg(3, 'credit limit')
local threshold = opt_uint_arg(4, 'threshold')

local a = load_account()
redis.call('HSET', KEYS[1], 'credit_limit', credit_limit)
a.credit_limit = credit_limit
if threshold then
  redis.call('HSET', KEYS[1], 'threshold', threshold)
else
  redis.call('HDEL', KEYS[1], 'threshold')
end
a.threshold = threshold
rearm_warning(a)
return { 'configured' }
