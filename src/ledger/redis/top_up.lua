-- top_up: adds credits once per idempotency key, forever (Ledger::top_up). Runs after the
-- key was claimed for this account (CLAIM_TOP_UP_KEY in scripts.rs; a key of another
-- account never gets here), so the key's amount is kept per account.
-- Creates the account.
-- KEYS, ARGV and reply as declared in scripts.rs; the keys are the data model of
-- redis/mod.rs.
-- KEYS[1]: <prefix>:{<account>}:acct
-- KEYS[2]: <prefix>:{<account>}:holds
-- KEYS[3]: <prefix>:{<account>}:expiry
-- KEYS[4]: <prefix>:{<account>}:done
-- KEYS[5]: <prefix>:{<account>}:usage    (not used here)
-- KEYS[6]: <prefix>:{<account>}:topups (top-up records of an account in fields, and of
--          any account, keys longer than TOP_UP_FIELD_MAX; see lib.lua's record_top_up)
-- KEYS[7]: <prefix>:{<account>}:outbox   (not used here)
-- KEYS[8]: <prefix>:{<account>}:leases   (not used here)
-- KEYS[9]: <prefix>:{<account>}:dead     (not used here)
-- ARGV[1]: clock offset, ms (0 outside tests)
-- ARGV[2]: closed-id grace, ms (call timeout + 1 s)
-- ARGV[3]: amount
-- ARGV[4]: idempotency key (1 to 255 printable ASCII characters, no space)
-- ARGV[5]: audit trail cap, entries (0: no trail; read by common_args)
-- Returns one of:
--   {'topped_up', replayed 0|1, available}
--   {'conflict', first_amount}
--   {'total_out_of_range', topped_up, amount}

local offset, retention = common_args()
local amount = uint_arg(3, 'amount')
local key = ARGV[4]
if type(key) ~= 'string' or #key < 1 or #key > 255 or not string.find(key, '^[!-~]+$') then
  bad('idempotency key')
end

local now = now_ms(offset)
local a = load_account()
reclaim(a, now, retention)

local first = top_up_of(a, key)
if first then
  first = tonumber(first)
  if first ~= amount then
    -- The account exists already: the first top-up with this key created it.
    return { 'conflict', first }
  end
  return { 'topped_up', 1, available(a) }
end
if a.topped_up + amount > MAX_AMOUNT then
  -- Still create the account, as the in-memory ledger does (only reachable when it exists).
  return { 'total_out_of_range', a.topped_up, amount }
end
-- HINCRBY even for 0: a first top-up creates the account (packed: finish_account writes it).
if a.packed then
  a.topped_up = a.topped_up + amount
  a.exists, a.dirty = true, true
else
  redis.call('HINCRBY', KEYS[1], 'topped_up', amount)
  a.topped_up = a.topped_up + amount
end
record_top_up(a, key, amount)
audit(a, now, 'top_up', amount, nil, nil)
-- A top-up re-arms each threshold it lifted `available` back to (a percentage now of this
-- top-up), the runway reminder and the depletion event.
-- Flags are written only when set: an account that never crossed anything keeps none.
put(a, 'last_topup', amount)
local fired = a.fired
for i, t in ipairs(thresholds_of(a)) do
  if fired_bit(fired, i) and available(a) >= threshold_value(t, a) then
    fired = fired - 2 ^ (i - 1)
  end
end
if fired ~= a.fired then
  put(a, 'fired', fired)
end
if a.runway_fired then
  clear(a, 'runway_fired', false)
end
if a.depleted then
  clear(a, 'depleted', false)
end
return { 'topped_up', 0, available(a) }
