-- configure: sets the account's credit limit, low-balance thresholds (all armed) and runway
-- horizon (Ledger::configure).
-- Creates the account. Like the in-memory ledger, reclaims nothing.
-- KEYS, ARGV and reply as declared in scripts.rs; the keys are the data model of
-- redis/mod.rs.
-- KEYS[1]: <prefix>:{<account>}:acct
-- KEYS[2]: <prefix>:{<account>}:holds    (not used here)
-- KEYS[3]: <prefix>:{<account>}:expiry   (not used here)
-- KEYS[4]: <prefix>:{<account>}:done     (not used here)
-- KEYS[5]: <prefix>:{<account>}:usage    (not used here)
-- KEYS[6]: <prefix>:{<account>}:topups   (not used here)
-- KEYS[7]: <prefix>:{<account>}:outbox   (not used here)
-- KEYS[8]: <prefix>:{<account>}:leases   (not used here)
-- KEYS[9]: <prefix>:{<account>}:dead     (not used here)
-- ARGV[1]: clock offset, ms (0 outside tests; unused)
-- ARGV[2]: closed-id grace, ms (unused)
-- ARGV[3]: credit limit
-- ARGV[4]: low-balance thresholds ('100,4,10%': credits, or percent of the last top-up;
--          '' for none), at most 8
-- ARGV[5]: runway horizon, s ('' for the default)
-- ARGV[6]: audit trail cap, entries (0: no trail; read by common_args)
-- Returns:
--   {'configured'}

common_args()
local credit_limit = uint_arg(3, 'credit limit')
local thresholds = ARGV[4]
if type(thresholds) ~= 'string' or #thresholds > 8 * 17 then
  bad('thresholds')
end
local count = 0
for item in string.gmatch(thresholds, '[^,]*') do
  -- gmatch also yields the empty matches between separators: only whole items count.
  if item ~= '' then
    count = count + 1
    local digits, pct = string.match(item, '^(%d+)(%%?)$')
    if not digits or #digits > 16 or tonumber(digits) > MAX_AMOUNT
        or (pct == '%' and (tonumber(digits) < 1 or tonumber(digits) > 100)) then
      bad('thresholds')
    end
  end
end
if count > 8 or string.find(thresholds, ',,') or string.find(thresholds, '^,')
    or string.find(thresholds, ',$') then
  bad('thresholds')
end
local horizon = opt_uint_arg(5, 'runway horizon')

-- New thresholds are all armed; the same ones, set again (say with a new credit limit),
-- keep what fired: the same crossing is not reported twice.
local a = load_account()
if (a.thresholds_text or '') ~= thresholds then
  clear(a, 'fired', 0)
end
put(a, 'credit_limit', credit_limit)
-- Configuring creates the account (packed: finish_account writes it).
a.exists = true
-- The list is a field of its own in either form.
if thresholds ~= '' then
  a.thresholds_text = thresholds
  redis.call('HSET', KEYS[1], 'thresholds', thresholds)
else
  a.thresholds_text = false
  redis.call('HDEL', KEYS[1], 'thresholds')
end
if not a.packed then
  -- An account of an older version kept one `threshold`: the list above replaces it.
  redis.call('HDEL', KEYS[1], 'threshold', 'warned')
end
if horizon then
  put(a, 'horizon', horizon)
else
  clear(a, 'horizon', nil)
end
return { 'configured' }
