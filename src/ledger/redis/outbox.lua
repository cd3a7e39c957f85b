-- outbox: the account's detected events, until delivered (EventOutbox for RedisLedger).
-- KEYS, ARGV and reply as declared in scripts.rs; the keys are the data model of
-- redis/mod.rs.
-- KEYS[1]: <prefix>:{<account>}:acct     (its `events` counter, for 'requeue'; `due_events`)
-- KEYS[2]: <prefix>:{<account>}:holds    (not used here)
-- KEYS[3]: <prefix>:{<account>}:expiry   (not used here)
-- KEYS[4]: <prefix>:{<account>}:done     (not used here)
-- KEYS[5]: <prefix>:{<account>}:usage    (not used here)
-- KEYS[6]: <prefix>:{<account>}:topups   (not used here)
-- KEYS[7]: <prefix>:{<account>}:outbox
-- KEYS[8]: <prefix>:{<account>}:leases
-- KEYS[9]: <prefix>:{<account>}:dead
-- ARGV[1]: clock offset, ms (0 outside tests)
-- ARGV[2]: closed-id grace, ms (unused)
-- ARGV[3]: operation: 'claim' | 'renew' | 'ack' | 'dead' | 'pending' | 'dead_letters'
--          | 'requeue' | 'due'
-- ARGV[4]: replica ('claim', 'renew')
-- ARGV[5]: lease, ms ('claim', 'renew'; else '0')
-- ARGV[6]: entry id ('renew', 'ack', 'dead'; the dead letter's for 'requeue'; else '')
-- ARGV[7]: most entries ('claim', 'pending', 'dead_letters'; else '0')
-- ARGV[8]: reason ('dead'; else '')
-- ARGV[9]: audit trail cap, entries (0: no trail; read by common_args)
-- An event in a reply is {entry_id, type, available, threshold | -1, runway_secs | -1,
-- at_ms, seq}, as settle.lua shows it.
-- events_due is when the events due-index should look at the account next (ms; 0: no
-- event waits, the entry goes), also kept in the account's `due_events`.
-- Returns one of:
--   {'claimed', events_due, {event}, ...}   (claim)
--   {'events', {event}, ...}                (pending)
--   {'dead_letters', {event, reason, dead_entry_id}, ...}
--   {'done', 0|1}                           (renew, ack, dead; requeue of an id not there)
--   {'requeued', events_due}                (requeue)
--   {'due', events_due}                     (due: the index repair's look, claims nothing)

local offset = common_args()
local op = ARGV[3]
local lease_ms = uint_arg(5, 'lease', 86400000)
local count = uint_arg(7, 'count', 10000)
local entry_id = ARGV[6]
if type(entry_id) ~= 'string' or #entry_id > 41
    or (entry_id ~= '' and not string.find(entry_id, '^%d+%-%d+$')) then
  bad('entry id')
end
if type(ARGV[8]) ~= 'string' or #ARGV[8] > 2048 then
  bad('reason')
end

-- Deletes an outbox left empty, so the index repair's SCAN only meets outboxes with events.
local function drop_if_empty()
  if redis.call('XLEN', KEYS[7]) == 0 then
    redis.call('DEL', KEYS[7])
  end
end

-- An outbox entry as the replies show it (the fields are written in this order by emit).
local function event_of(entry)
  local f = entry[2]
  return { entry[1], f[2], tonumber(f[4]), tonumber(f[6]), tonumber(f[8]), tonumber(f[10]),
    tonumber(f[12]) }
end

-- Records when the events due-index should look at this account next (`due`, ms, or
-- nil: no event waits) in the account's `due_events`, and returns it (0 for none).
-- (`a`: the account, when this call has loaded it already.)
local function record_due(due, a)
  a = a or load_account(OUTBOX_FIELDS)
  if due then
    if a.due_events ~= due then
      put(a, 'due_events', due)
    end
    return due
  end
  if a.due_events then
    clear(a, 'due_events', nil)
  end
  return 0
end

-- Walks the oldest entries (a bounded look, so a long outbox costs a bounded call),
-- leasing to `owner` up to `count` whose lease lapsed (none when owner is nil). Returns
-- the events leased and when the next lease lapses: now, when some entry was left
-- unleased or the look did not reach the end; nil for an empty outbox.
local function walk(now, owner, limit)
  local claimed = {}
  local entries = redis.call('XRANGE', KEYS[7], '-', '+', 'COUNT', limit)
  local due = nil
  if #entries >= limit then
    due = now
  end
  for _, entry in ipairs(entries) do
    local id = entry[1]
    local until_ms = tonumber(redis.call('HGET', KEYS[8], id))
    if not until_ms or until_ms <= now then
      if owner and #claimed < count then
        until_ms = now + lease_ms
        redis.call('HSET', KEYS[8], id, until_ms, id .. ':owner', owner)
        claimed[#claimed + 1] = event_of(entry)
      else
        until_ms = now
      end
    end
    if not due or until_ms < due then
      due = until_ms
    end
  end
  return claimed, due
end

if op == 'claim' then
  local owner = replica_arg(4)
  local now = now_ms(offset)
  local claimed, due = walk(now, owner, math.max(count * 4, 64))
  local reply = { 'claimed', record_due(due) }
  for _, event in ipairs(claimed) do
    reply[#reply + 1] = event
  end
  return reply
elseif op == 'due' then
  local _, due = walk(now_ms(offset), nil, 256)
  return { 'due', record_due(due) }
elseif op == 'renew' then
  local owner = replica_arg(4)
  local id = entry_id
  local now = now_ms(offset)
  if redis.call('HGET', KEYS[8], id .. ':owner') ~= owner
      or #redis.call('XRANGE', KEYS[7], id, id) == 0 then
    return { 'done', 0 }
  end
  redis.call('HSET', KEYS[8], id, now + lease_ms)
  return { 'done', 1 }
elseif op == 'ack' then
  -- Whoever delivered it: the receiver has it, so nobody needs to send it again.
  local id = entry_id
  redis.call('XDEL', KEYS[7], id)
  redis.call('HDEL', KEYS[8], id, id .. ':owner')
  drop_if_empty()
  return { 'done', 1 }
elseif op == 'dead' then
  local id = entry_id
  local reason = ARGV[8]
  local entry = redis.call('XRANGE', KEYS[7], id, id)[1]
  if entry then
    local f = entry[2]
    -- Kept with its original entry id, so its event id stays the same.
    redis.call('XADD', KEYS[9], '*', 'entry', id, 'type', f[2], 'available', f[4],
      'threshold', f[6], 'runway', f[8], 'at', f[10], 'seq', f[12], 'reason', reason)
    redis.call('XDEL', KEYS[7], id)
  end
  redis.call('HDEL', KEYS[8], id, id .. ':owner')
  drop_if_empty()
  return { 'done', 1 }
elseif op == 'pending' then
  local out = { 'events' }
  for _, entry in ipairs(redis.call('XRANGE', KEYS[7], '-', '+', 'COUNT', count)) do
    out[#out + 1] = event_of(entry)
  end
  return out
elseif op == 'dead_letters' then
  local out = { 'dead_letters' }
  for _, entry in ipairs(redis.call('XRANGE', KEYS[9], '-', '+', 'COUNT', count)) do
    local f = entry[2]
    out[#out + 1] = { { f[2], f[4], tonumber(f[6]), tonumber(f[8]), tonumber(f[10]),
      tonumber(f[12]), tonumber(f[14]) }, f[16], entry[1] }
  end
  return out
elseif op == 'requeue' then
  -- Back to the outbox, unleased (the next claim takes it), with its seq: the same id.
  local entry = redis.call('XRANGE', KEYS[9], entry_id, entry_id)[1]
  if not entry then
    return { 'done', 0 }
  end
  local f = entry[2]
  -- A fresh entry id (the old one may be below the outbox's last), the same seq and at.
  local a = load_account(OUTBOX_FIELDS)
  redis.call('XADD', KEYS[7], next_entry(a), 'type', f[4], 'available', f[6],
    'threshold', f[8], 'runway', f[10], 'at', f[12], 'seq', f[14])
  redis.call('XDEL', KEYS[9], entry_id)
  -- Unleased: the events due-index looks at once (the caller writes the entry).
  return { 'requeued', record_due(now_ms(offset), a) }
end
bad('operation')
