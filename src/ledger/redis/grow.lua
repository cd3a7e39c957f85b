-- grow: raises an open hold to a new total (Ledger::grow).
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
-- ARGV[4]: the hold's new total
-- ARGV[5]: least new total ('' for all or nothing)
-- ARGV[6]: audit trail cap, entries (0: no trail; read by common_args)
-- A grow writes two fields (the hold, the account's held) and its audit entry, nothing
-- else: no event, no index entry (the hold is already in the due-index from its reserve; its expiry does
-- not move).
-- Returns one of:
--   {'grown', amount, available}            (amount: the hold's total now)
--   {'insufficient', required, available, credit_limit}  (required: the least raise)
--   {'not_open', 'already_committed' | 'already_refunded' | 'expired' | 'unknown'}
--   {'total_out_of_range', total, amount}   (the sum that would pass MAX_AMOUNT)

local offset, grace = common_args()
local id = hold_id_arg(3)
local to = uint_arg(4, 'amount')
local least = opt_uint_arg(5, 'least amount')
if not least or least > to then
  least = to
end

local a, now = open_account(offset, grace)
if not a then
  return { 'not_open', 'unknown' }
end

local current = tonumber(redis.call('HGET', KEYS[2], id))
if not current then
  local how = closed_how(id, now)
  if how then
    return { 'not_open', already(how) }
  end
  return { 'not_open', 'unknown' }
end
if to <= current then
  -- Already there (a retried grow): nothing moves.
  return { 'grown', current, available(a) }
end
if least < current then
  least = current
end
-- The reserve's rule: raise <= available + credit_limit, written so that no sum leaves
-- the exact range; with a least total, as far as the account affords down to it.
local raise = to - current
if raise - a.credit_limit > available(a) then
  if least - current - a.credit_limit > available(a) then
    return { 'insufficient', least - current, available(a), a.credit_limit }
  end
  raise = available(a) + a.credit_limit
end
if a.held + raise > MAX_AMOUNT then
  return { 'total_out_of_range', a.held, raise }
end
if a.committed + a.held + raise > MAX_AMOUNT then
  return { 'total_out_of_range', a.committed, a.held + raise }
end
a.held = a.held + raise
redis.call('HSET', KEYS[2], id, current + raise)
put(a, 'held', a.held)
audit(a, now, 'grow', raise, id, nil)
return { 'grown', current + raise, available(a) }
