-- history: a page of the account's audit trail, newest first (LedgerReports::history).
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
-- ARGV[1]: clock offset, ms (0 outside tests)
-- ARGV[2]: closed-id grace, ms (call timeout + 1 s)
-- ARGV[3]: cursor: the entries older than this number ('' for the newest)
-- ARGV[4]: entries wanted (the page and one more, to know whether another follows)
-- ARGV[5]: audit trail cap, entries (0: no trail; read by common_args)
-- Each entry is a MessagePack array, as lib.lua's audit writes it, from the account's
-- trail in either form (text or list). Reads only.
-- Returns:
--   {'entries', entry, ...}

common_args()
local cursor = opt_uint_arg(3, 'cursor')
local wanted = uint_arg(4, 'entries wanted', 1000)
local a = load_account(HISTORY_FIELDS)
local newest = a.audit_seq
-- The entries are numbered without gaps: entry n is the (newest - n)th from the newest.
local start = 0
if cursor then
  start = newest - cursor + 1
  if start < 0 then
    start = 0
  end
end
-- Entries past the cap wait for the next trim (lib.lua's audit): they are not returned.
local stop = math.min(start + wanted, AUDIT_CAP) - 1
if stop < start then
  return { 'entries' }
end
local entries
if a.trail then
  -- Oldest first: the newest is the last.
  local all, readable = trail_entries(redis.call('GET', audit_trail()) or '')
  if not readable then
    -- Bytes no ledger wrote: a page would miss entries it cannot count.
    error('an unreadable audit trail')
  end
  entries = {}
  for i = start, stop do
    local e = all[#all - i]
    if not e then
      break
    end
    entries[#entries + 1] = e
  end
else
  entries = redis.call('LRANGE', audit_log(), start, stop)
end
table.insert(entries, 1, 'entries')
return entries
