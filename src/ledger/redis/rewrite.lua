-- rewrite: writes one account in this ledger's form (RedisLedger::rewrite_accounts): a
-- ledger that packs packs an account in fields, its audit trail from a list into text
-- while small (lib.lua's TEXT_TRAIL_MAX) and its top-up records into its hash; one that does not unpacks a packed account into
-- fields, its trail back into a list, its top-up records back into `topups`.
-- Nothing else changes; an account already in the form is left alone.
-- KEYS, ARGV and reply as declared in scripts.rs; the keys are the data model of
-- redis/mod.rs.
-- KEYS[1]: <prefix>:{<account>}:acct
-- KEYS[2]: <prefix>:{<account>}:holds    (not used here)
-- KEYS[3]: <prefix>:{<account>}:expiry   (not used here)
-- KEYS[4]: <prefix>:{<account>}:done     (not used here)
-- KEYS[5]: <prefix>:{<account>}:usage    (not used here)
-- KEYS[6]: <prefix>:{<account>}:topups
-- KEYS[7]: <prefix>:{<account>}:outbox   (not used here)
-- KEYS[8]: <prefix>:{<account>}:leases   (not used here)
-- KEYS[9]: <prefix>:{<account>}:dead     (not used here)
-- ARGV[1]: clock offset, ms (0 outside tests)
-- ARGV[2]: closed-id grace, ms (call timeout + 1 s)
-- ARGV[3]: audit trail cap, entries (0: no trail; read by common_args)
-- Returns one of:
--   {'rewritten', 0|1}   (1: the account changed form)
--   {'unknown_account'}  (nothing written)

common_args()
local a = load_account()
if not a.exists then
  return { 'unknown_account' }
end
if PACK then
  -- In fields (finish_account writes `v` and deletes the fields), or packed with a small
  -- trail still a list, a trail in both forms (a replica of an older build wrote the
  -- other), or top-up records still in `topups`.
  local changed = a.convert
  local both = redis.call('EXISTS', audit_log(), audit_trail()) == 2
  if both or (not a.trail and a.audit_seq <= TEXT_TRAIL_MAX) then
    if a.audit_seq <= TEXT_TRAIL_MAX then
      trail_to_text(a)
    else
      trail_to_list(a)
    end
    changed = true
  end
  if move_top_ups(true) > 0 then
    changed = true
  end
  a.dirty = changed
  return { 'rewritten', changed and 1 or 0 }
end
if not a.packed then
  return { 'rewritten', 0 }
end
-- The trail back to the list the field form keeps.
if a.trail or redis.call('EXISTS', audit_trail()) == 1 then
  trail_to_list(a)
end
move_top_ups(false)
-- Packed, and this ledger does not pack: every figure back in a field of its own, as the
-- field form keeps it (an absent figure, or a flag not set, has no field; the burn rate
-- is spelled "%.17g", which reads back as the same double), then `v` goes.
local fields = {}
for _, name in ipairs(FIELD_FORM) do
  local x = a[name]
  if name == 'rate' then
    fields[#fields + 1] = name
    fields[#fields + 1] = string.format('%.17g', a.rate)
  elseif name == 'runway_fired' or name == 'depleted' then
    if x then
      fields[#fields + 1] = name
      fields[#fields + 1] = 1
    end
  elseif type(x) == 'number' then
    fields[#fields + 1] = name
    fields[#fields + 1] = x
  end
end
redis.call('HSET', KEYS[1], unpack(fields))
redis.call('HDEL', KEYS[1], 'v')
a.dirty = false
return { 'rewritten', 1 }
