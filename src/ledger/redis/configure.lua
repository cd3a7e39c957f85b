-- configure: sets the account's credit limit and low-balance threshold (Ledger::configure).
-- Creates the account. Like the in-memory ledger, reclaims nothing.
-- KEYS[1]: <prefix>:{<account>}:acct     HASH  account totals and settings
-- KEYS[2..6]: the account's other keys   (not used here)
-- ARGV[1]: clock offset, ms (0 outside tests; unused)
-- ARGV[2]: settled retention, ms (unused)
-- ARGV[3]: credit limit
-- ARGV[4]: low-balance threshold ('' for none)
-- Returns: {'configured'}

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
