-- reconcile: checks one account's books, in one atomic step, writing nothing
-- (RedisLedger::reconcile).
-- KEYS, ARGV and reply as declared in scripts.rs; the keys are the data model of
-- redis/mod.rs.
-- KEYS[1]: <prefix>:{<account>}:acct
-- KEYS[2]: <prefix>:{<account>}:holds
-- KEYS[3]: <prefix>:{<account>}:expiry
-- KEYS[4]: <prefix>:{<account>}:done     (not used here)
-- KEYS[5]: <prefix>:{<account>}:usage    (not used here)
-- KEYS[6]: <prefix>:{<account>}:topups
-- KEYS[7]: <prefix>:{<account>}:outbox   (not used here)
-- KEYS[8]: <prefix>:{<account>}:leases   (not used here)
-- KEYS[9]: <prefix>:{<account>}:dead     (not used here)
-- ARGV[1]: clock offset, ms (0 outside tests)
-- ARGV[2]: closed-id grace, ms (call timeout + 1 s)
-- ARGV[3]: stale after, ms: an open hold expired longer ago should have been reclaimed
-- ARGV[4]: audit trail cap, entries (0: no trail; read by common_args)
-- Each drift is {check, expected, found}, a figure or a name each.
-- Returns one of:
--   {'checked', {drift}, ...}
--   {'unknown_account'}

local offset = common_args()
local stale_after = uint_arg(3, 'stale after', 86400000)
local a = load_account()
if not a.exists then
  return { 'unknown_account' }
end
local now = now_ms(offset)
local drifts = {}
local function drift(check, expected, found)
  drifts[#drifts + 1] = { check, expected, found }
end

-- The account is in one form: `v` beside a figure of the field form means a build
-- without packed accounts wrote to a packed one (packing turned on while such a replica
-- still ran, or a rollback past it): what it wrote is not in `v`, and a replica that does
-- not pack reads the fields instead once `topped_up` or `credit_limit` is among them.
local forms = redis.call('HMGET', KEYS[1], 'v', unpack(FIELD_FORM))
if forms[1] then
  local beside = {}
  for i = 1, #FIELD_FORM do
    if forms[i + 1] then
      beside[#beside + 1] = FIELD_FORM[i]
    end
  end
  if #beside > 0 then
    drift('account_forms', 'v alone', 'v beside ' .. table.concat(beside, ','))
  end
end

-- `held` is the sum of the open holds, and every open hold is in the expiry index, at the
-- expiry its `<id>:exp` field says. A `<id>:exp` or `<id>:route` field belongs to an open
-- hold: one left behind (a hold settled by a version that did not know `:exp`, during a
-- rolling upgrade or after a rollback) holds no credits but keeps the hash from emptying.
local fields = redis.call('HGETALL', KEYS[2])
local sum, count, value = 0, 0, {}
for i = 1, #fields, 2 do
  value[fields[i]] = fields[i + 1]
end
for i = 1, #fields, 2 do
  local id = fields[i]
  local base = string.match(id, '^(.*):exp$') or string.match(id, '^(.*):route$')
  if base then
    if not value[base] then
      drift('orphan_hold_field', 'a hold ' .. base, id)
    end
  elseif not string.find(id, ':', 1, true) then
    sum = sum + (tonumber(fields[i + 1]) or 0)
    count = count + 1
    local indexed = redis.call('ZSCORE', KEYS[3], id)
    if not indexed then
      drift('hold_not_in_expiry_index', 'indexed', id)
    elseif value[id .. ':exp'] and tonumber(value[id .. ':exp']) ~= tonumber(indexed) then
      drift('hold_expiry_field', tonumber(indexed), tonumber(value[id .. ':exp']))
    end
  end
end
if sum ~= a.held then
  drift('held', sum, a.held)
end
local indexed = redis.call('ZCARD', KEYS[3])
if indexed ~= count then
  drift('expiry_index_size', count, indexed)
end
-- No open hold expired so long ago that a reclaim should have taken it.
local stale = redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', now - stale_after, 'LIMIT', 0, 1)
if #stale > 0 then
  drift('stale_hold', 'reclaimed', stale[1])
end
-- `topped_up` is the sum of the top-ups by payment id.
local total = 0
local records = top_up_records()
for i = 2, #records, 2 do
  total = total + (tonumber(records[i]) or 0)
end
if total ~= a.topped_up then
  drift('topped_up', total, a.topped_up)
end
-- The newest audit entry's totals are the account's.
if AUDIT_CAP > 0 then
  local last
  if a.trail then
    local entries, readable = trail_entries(redis.call('GET', audit_trail()) or '')
    if not readable then
      drift('audit_entry', 'an entry', 'unreadable')
    else
      last = entries[#entries]
    end
  else
    last = redis.call('LINDEX', audit_log(), 0)
  end
  -- One form at a time: the list beside a text trail is what a replica without the text
  -- form wrote to a packed account, and no read returns it.
  if redis.call('EXISTS', audit_log(), audit_trail()) == 2 then
    drift('trail_forms', 'one trail', 'trail beside log')
  end
  if last then
    local ok, e = pcall(cmsgpack.unpack, last)
    if not ok or type(e) ~= 'table' or #e ~= 10 then
      drift('audit_entry', 'an entry', 'unreadable')
    else
      if e[7] ~= available(a) then
        drift('audit_available', available(a), e[7])
      end
      if e[8] ~= a.held then
        drift('audit_held', a.held, e[8])
      end
      if e[9] ~= a.committed then
        drift('audit_committed', a.committed, e[9])
      end
      if e[10] ~= a.topped_up then
        drift('audit_topped_up', a.topped_up, e[10])
      end
    end
  end
end
return { 'checked', drifts }
