-- Shared helpers, prepended (by scripts.rs, after the generated prelude that defines
-- MAX_AMOUNT, RECLAIM_LIMIT and BURN_RATE_TAU_SECS from the Rust constants) to every
-- account script.
--
-- Every account script gets the same nine keys, in the order of the data model (the
-- module docs of redis/mod.rs), all under one hash tag `{<account>}` so the script touches
-- one slot (and runs unchanged on Redis Cluster); the helpers here use KEYS[1] (acct),
-- KEYS[2] (holds), KEYS[3] (expiry), KEYS[4] (done), KEYS[7] (outbox) and KEYS[8]
-- (leases).
--
-- Rules: every ARGV is validated before the first write (a Lua error midway does not roll
-- back); amounts are never turned into strings with `tostring` or `..` (Lua's "%.14g"
-- would lose digits): they are parsed with tonumber after a digits-only check and written
-- as Lua numbers (HSET or HINCRBY arguments), which Redis writes as plain integers for
-- every integer up to 2^53 - 1 (7.0 with "%.17g", later versions as integers before
-- `fpconv_dtoa`), or, on the request path, spelled by `int` ('%d', the same text). The one
-- float, the burn rate, is spelled by settle.lua with "%.17g", which reads back exact.

local NO_OPEN_HOLDS = MAX_AMOUNT    -- next_expiry of an account with no open hold

-- An integer (0 .. 2^53 - 1) for a command on the request path, spelled the way Redis
-- spells it: by '%d' (string.format) where a C long holds 2^53 (every 64-bit build; checked
-- at the first call after a load: a library being loaded cannot reach `string`), about
-- 2,500 instructions fewer than the "%.17g" Redis 7.0 spells a Lua number with; else the
-- number itself. Only for values that are integers by construction ('%d' would cut a
-- fraction).
local int_format = nil -- string.format, false, or not decided yet
local function int_formatter()
  if int_format == nil then
    int_format = string.format('%d', MAX_AMOUNT) == '9007199254740991' and string.format
      or false
  end
  return int_format
end

local function int(n)
  local f = int_formatter()
  if f then
    return f('%d', n)
  end
  return n
end

local function bad(name)
  error({ err = 'ERR tower-credits: invalid argument: ' .. name })
end

-- Argument texts already checked, by the check's name: text -> what it checked to.
-- Most arguments are the ledger's settings (clock offset, grace, lease, trail cap, replica)
-- or a route's price and label, the same text call after call; a pattern match and a
-- `tonumber` cost about 4,000 instructions each in Redis's Lua, a lookup here a tenth of
-- that. The memo lives as long as the loaded library (an EVALSHA call starts with an empty
-- one) and is dropped whole at CHECKED_MAX texts, so varied amounts cannot grow it. Only
-- texts that passed are kept: a bad one is checked, and refused, every time.
local CHECKED_MAX = 1024
local checked, checked_count = {}, 0
-- The max each integer check's memo was filled under: a name checked against another max
-- (a slip in a future script) is never served from it.
local checked_max = {}

local function remember_checked(name, text, value)
  if checked_count >= CHECKED_MAX then
    checked, checked_count = {}, 0
  end
  local known = checked[name]
  if not known then
    known = {}
    checked[name] = known
  end
  known[text] = value
  checked_count = checked_count + 1
end

-- Whether `text` passed the check `name` before (a text check: no limit to match).
local function passed(name, text)
  local known = checked[name]
  return known ~= nil and known[text] ~= nil
end

-- ARGV[i] as an integer in 0..max (default MAX_AMOUNT): decimal digits only.
local function uint_arg(i, name, max)
  local v = ARGV[i]
  local limit = max or MAX_AMOUNT
  local known = checked[name]
  local n = known and checked_max[name] == limit and known[v]
  if n then
    return n
  end
  if type(v) ~= 'string' or #v < 1 or #v > 16 or not string.find(v, '^%d+$') then
    bad(name)
  end
  n = tonumber(v)
  if n > limit then
    bad(name)
  end
  if checked_max[name] == nil then
    checked_max[name] = limit
  end
  if checked_max[name] == limit then
    remember_checked(name, v, n)
  end
  return n
end

-- ARGV[i] as an optional integer: '' is nil.
local function opt_uint_arg(i, name)
  if ARGV[i] == '' then
    return nil
  end
  return uint_arg(i, name)
end

-- ARGV[i] as a hold id: 1 to 64 ASCII letters, digits, '_' or '-'.
local function hold_id_arg(i)
  local v = ARGV[i]
  if type(v) ~= 'string' or #v < 1 or #v > 64 or not string.find(v, '^[A-Za-z0-9_%-]+$') then
    bad('hold id')
  end
  return v
end

-- ARGV[i] as a replica name: 1 to 64 ASCII letters, digits, '_', '-' or '.'.
local function replica_arg(i)
  local v = ARGV[i]
  if passed('replica', v) then
    return v
  end
  if type(v) ~= 'string' or #v < 1 or #v > 64 or not string.find(v, '^[A-Za-z0-9_%.%-]+$') then
    bad('replica')
  end
  remember_checked('replica', v, true)
  return v
end

-- ARGV[i] as a route label ('' for none): at most 256 bytes, no control character (C0,
-- DEL or C1 in UTF-8).
local function route_arg(i)
  local v = ARGV[i]
  if passed('route', v) then
    return v
  end
  if type(v) ~= 'string' or #v > 256 or string.find(v, '[%z\1-\31\127]')
      or string.find(v, '\194[\128-\159]') then
    bad('route')
  end
  remember_checked('route', v, true)
  return v
end

-- The common arguments of every account script: ARGV[1] clock offset (ms, 0 outside
-- tests) and ARGV[2] the closed-id grace (ms): how long a closed hold id is remembered past
-- its hold's expiry (the call timeout + 1 s).
-- The audit trail's cap (0: no trail): the last ARGV of every account script, read by
-- common_args before any write.
local AUDIT_CAP = 0
local AUDIT_TRIM_EVERY = 32

local function common_args()
  AUDIT_CAP = uint_arg(#ARGV, 'audit trail cap', 10000000)
  return uint_arg(1, 'clock offset'), uint_arg(2, 'closed-id grace')
end

-- Redis's own clock (one clock for every instance), in ms, shifted by the test offset.
local function now_ms(offset)
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) + offset
end

-- The account's fields, as numbers (`thresholds_text` is the stored list of thresholds,
-- '100,4,10%', or false; an account written by an older version keeps one `threshold`).
-- `exists` is false for an account never topped up nor configured: every account has
-- `topped_up` (written by top_up) or `credit_limit` (written by configure), so this one
-- HMGET also answers what an EXISTS would. `rate_text` is the rate as Redis stores it.
--
-- Every field an HMGET names costs about 2,000 instructions, there or not (a listpack is
-- scanned for each), and each `tonumber` as much again: a reserve and a settle read the
-- fields they use on every call (RESERVE_FIELDS, SETTLE_FIELDS; other scripts all of
-- them), and any other by an HGET of its own the first time it is used. The fields every
-- call uses are numbers at once; the rest are converted when first read.
local ACCOUNT_FIELDS = { 'topped_up', 'committed', 'held', 'credit_limit', 'thresholds',
  'threshold', 'next_expiry', 'due_holds', 'audit_seq', 'rate', 'rate_at', 'commits',
  'first_commit_at', 'fired', 'horizon', 'runway_fired', 'depleted', 'last_topup',
  'due_events', 'done_until', 'events' }
-- A field a list leaves out is read when first used, at the value Redis holds then: a
-- script that writes such a field with redis.call sets it in the account table too (as
-- note_due and the alerts do), or reads it before.
-- What every reserve reads (the figures, the expiry and due-index marks, the trail's
-- number, and what the reply says of thresholds and the burn rate); the refusal's
-- `depleted` and `due_events`, a percentage threshold's `last_topup`, are read if used.
local RESERVE_FIELDS = { 'topped_up', 'committed', 'held', 'credit_limit', 'thresholds',
  'threshold', 'next_expiry', 'due_holds', 'audit_seq', 'rate', 'rate_at', 'commits',
  'first_commit_at' }
-- A settle: all but the refusal's `depleted`, the events due-index mark, and a percentage
-- threshold's `last_topup`.
local SETTLE_FIELDS = { 'topped_up', 'committed', 'held', 'credit_limit', 'thresholds',
  'threshold', 'next_expiry', 'due_holds', 'audit_seq', 'rate', 'rate_at', 'commits',
  'first_commit_at', 'fired', 'horizon', 'runway_fired', 'done_until' }
-- What the event outbox and the audit trail's reader use.
local OUTBOX_FIELDS = { 'due_events', 'v' }
local HISTORY_FIELDS = { 'audit_seq', 'v' }
-- Each list's field -> its place in the HMGET reply, made once per library load on the
-- list's first use (a table filled per call would be rehashed as it grows, which costs
-- more than the fields saved; under EVALSHA, where the library runs per call, it is).
local FIELD_INDEX = {}

local function field_index(list)
  local index = FIELD_INDEX[list]
  if not index then
    index = {}
    for i = 1, #list do
      index[list[i]] = i
    end
    FIELD_INDEX[list] = index
  end
  return index
end

-- Read when first used: numbers, and flags ('1' or absent).
local LAZY_FIELD = { rate = 'number', rate_at = 'number', fired = 'number',
  commits = 'number', first_commit_at = 'number', horizon = 'number', last_topup = 'number',
  due_events = 'number', done_until = 'number', events = 'number', runway_fired = 'flag',
  depleted = 'flag' }
-- What a lazy number is when the hash has none (nil where absent means something).
local LAZY_DEFAULT = { rate = 0, fired = 0, commits = 0, last_topup = 0, rate_at = 0,
  events = 0 }
local account_fields = {
  __index = function(a, name)
    local kind = LAZY_FIELD[name]
    if not kind then
      return nil
    end
    local text
    local i = a.index[name]
    if i then
      text = a.stored[i]
    else
      -- Not among the fields this script loads: read now, once (an absent field's nil
      -- value is not kept in `a`, its text is kept here).
      local fetched = rawget(a, 'fetched')
      if not fetched then
        fetched = {}
        rawset(a, 'fetched', fetched)
      end
      text = fetched[name]
      if text == nil then
        text = redis.call('HGET', KEYS[1], name) or false
        fetched[name] = text
      end
    end
    local value
    if kind == 'flag' then
      value = text == '1'
    else
      value = tonumber(text)
      if value == nil then
        value = LAZY_DEFAULT[name]
      end
    end
    rawset(a, name, value)
    return value
  end,
}

-- The packed form of an account: every figure in one field `v`, a MessagePack sequence of
-- numbers in the order of PACKED (a figure that may be absent is -1: every one is at
-- least 0), beside `thresholds`, a text of its own. One field read and written per call
-- where the field form names 13 to 17 (each about 2,000 instructions to name, as much
-- again to convert, and 5,000 to write as a number), and no `tonumber` or "%.17g" of each.
-- An account is read in either form and written back in its own; a ledger that packs
-- (PACK) creates accounts packed and packs each account it writes that is not yet.
-- The order is the format (unpack_account and pack_account spell it): a new figure goes
-- at the end, where a value written before it has none and reads it as absent.
local PACKED = { 'topped_up', 'committed', 'held', 'credit_limit', 'next_expiry',
  'due_holds', 'audit_seq', 'rate', 'rate_at', 'commits', 'first_commit_at', 'done_until',
  'fired', 'horizon', 'runway_fired', 'depleted', 'last_topup', 'due_events', 'events',
  'prune_at', 'trail' }
-- The fields of the field form a packing deletes (`threshold` and `warned` were written by
-- older versions).
local FIELD_FORM = { 'topped_up', 'committed', 'held', 'credit_limit', 'threshold',
  'next_expiry', 'due_holds', 'audit_seq', 'rate', 'rate_at', 'commits', 'first_commit_at',
  'done_until', 'fired', 'horizon', 'runway_fired', 'depleted', 'last_topup', 'due_events',
  'events', 'warned' }

-- Whether this call's ledger packs accounts: set per call by the function's wrapper
-- (functions.rs; scripts.rs for EVALSHA), from the name it was called by.
local PACK = false
-- The account this call loaded: finish_account writes it back when packed and changed.
local LOADED = nil

local function present(n)
  if not n or n < 0 then
    return nil
  end
  return n
end

-- The packed value's format, its first value: `false` (one byte, 0xc2), not a number, so
-- that a build that knows only the first packed format (figures from the first value on,
-- no mark) fails on it (an arithmetic error on a boolean) and refuses the account as
-- corrupt, writing nothing, rather than miss what it cannot know of (top-up records in
-- the account's hash, a text trail): a key it would credit twice, entries it would hide.
-- A later format takes another mark that is not a number (`true`, a text), which this
-- build refuses the same way. (A two-byte text mark cost an idle account 16 bytes: its
-- hash's listpack passed 64 bytes.)
local PACKED_FORMAT = false

local function unpack_account(v, thresholds_text)
  local mark, topped_up, committed, held, credit_limit, next_expiry, due_holds, audit_seq,
    rate, rate_at, commits, first_commit_at, done_until, fired, horizon, runway_fired,
    depleted, last_topup, due_events, events, prune_at, trail = cmsgpack.unpack(v)
  if mark ~= PACKED_FORMAT then
    -- No mark: a value of the first format, each figure one place earlier, and no
    -- `trail`. (Another format's mark lands in `topped_up`, which the check below
    -- refuses.) Shifted here rather than by a function of the unpacked values, which
    -- would cost every call a copy of them all.
    topped_up, committed, held, credit_limit, next_expiry, due_holds, audit_seq, rate,
      rate_at, commits, first_commit_at, done_until, fired, horizon, runway_fired, depleted,
      last_topup, due_events, events, prune_at, trail =
      mark, topped_up, committed, held, credit_limit, next_expiry, due_holds, audit_seq,
      rate, rate_at, commits, first_commit_at, done_until, fired, horizon, runway_fired,
      depleted, last_topup, due_events, events, nil
  end
  -- A value no ledger wrote (cut short, or a figure not a number) fails the call here, by
  -- an arithmetic error on the missing figure, and the call writes nothing: never a
  -- figure read as absent or zero. A sum costs a few instructions a figure, where a
  -- `type` check each cost 700. (prune_at and trail, the last, may be absent: a value
  -- written before them.)
  local _ = topped_up + committed + held + credit_limit + audit_seq + rate + rate_at
    + commits + fired + last_topup + events
  return {
    packed = true,
    exists = true,
    topped_up = topped_up,
    committed = committed,
    held = held,
    credit_limit = credit_limit,
    thresholds_text = thresholds_text,
    next_expiry = present(next_expiry),
    due_holds = present(due_holds),
    audit_seq = audit_seq,
    rate = rate,
    rate_at = rate_at,
    commits = commits,
    first_commit_at = present(first_commit_at),
    done_until = present(done_until),
    fired = fired,
    horizon = present(horizon),
    runway_fired = runway_fired == 1,
    depleted = depleted == 1,
    last_topup = last_topup,
    due_events = present(due_events),
    events = events,
    -- Not before then does a call prune closed ids (reclaim; nil: at once).
    prune_at = present(prune_at),
    -- The audit trail is text at `<prefix>:{<account>}:trail` (1), else the list `log`
    -- (absent: a value written before the text form).
    trail = trail == 1,
  }
end

local function absent_as(n)
  return n or -1
end

local function pack_account(a)
  return cmsgpack.pack(PACKED_FORMAT, a.topped_up, a.committed, a.held, a.credit_limit,
    absent_as(a.next_expiry), absent_as(a.due_holds), a.audit_seq, a.rate, a.rate_at,
    a.commits, absent_as(a.first_commit_at), absent_as(a.done_until), a.fired,
    absent_as(a.horizon), a.runway_fired and 1 or 0, a.depleted and 1 or 0, a.last_topup,
    absent_as(a.due_events), a.events, absent_as(a.prune_at), a.trail and 1 or -1)
end

-- The field form: `fields` read at once, the rest when first used (account_fields). An
-- account found packed is read from `v` instead: named by the lists that do not tell
-- whether the account exists (OUTBOX_FIELDS, HISTORY_FIELDS), else read only when the
-- fields say it does not (a packed account has neither `topped_up` nor `credit_limit`),
-- so an account in fields pays nothing for it, and a packed one read by a ledger that
-- does not pack one HGET.
local function load_fields(fields)
  local index = field_index(fields)
  local f = redis.call('HMGET', KEYS[1], unpack(fields))
  local topped_up, credit_limit = f[index.topped_up], f[index.credit_limit]
  local v
  if index.v then
    v = f[index.v]
  elseif not (topped_up or credit_limit) then
    v = redis.call('HGET', KEYS[1], 'v')
  end
  if v then
    return unpack_account(v, index.thresholds and f[index.thresholds])
  end
  local a = setmetatable({
    stored = f,
    index = index,
    exists = (topped_up or credit_limit) and true or false,
    rate_text = f[index.rate] or '0',
    topped_up = tonumber(topped_up) or 0,
    committed = tonumber(f[index.committed]) or 0,
    held = tonumber(f[index.held]) or 0,
    credit_limit = tonumber(credit_limit) or 0,
    thresholds_text = index.thresholds and (f[index.thresholds] or f[index.threshold]),
    next_expiry = tonumber(f[index.next_expiry]), -- nil: not known yet, so reclaim looks
    -- When the due-indexes (`<prefix>:{!due}:holds`, `:events`) were last told to look at
    -- this account (ms; nil: not entered). A call that needs an earlier look records it and
    -- returns it, so the caller writes the index entry: once per active period.
    due_holds = tonumber(f[index.due_holds]),
    -- The number of the account's last audit entry (0: none yet).
    audit_seq = tonumber(f[index.audit_seq]) or 0,
    -- Read when first used (account_fields): rate, rate_at, fired, commits, first_commit_at,
    -- horizon (nil: DEFAULT_RUNWAY_HORIZON_SECS), last_topup, due_events, done_until
    -- (when the `done` key expires, as last set; nil: not known), runway_fired, depleted,
    -- events.
  }, account_fields)
  -- A flag the list names is set at once (no lookup through account_fields on each use).
  if index.runway_fired then
    a.runway_fired = f[index.runway_fired] == '1'
  end
  return a
end

-- `fields`: the fields of the field form to read at once, one of the lists above (default
-- ACCOUNT_FIELDS). A ledger that packs reads `v` alone first, and an account it finds in
-- the field form whole: this call writes it back packed, should it write.
local function load_account(fields)
  local a
  if PACK then
    local f = redis.call('HMGET', KEYS[1], 'v', 'thresholds')
    if f[1] then
      a = unpack_account(f[1], f[2])
    else
      a = load_fields(ACCOUNT_FIELDS)
      -- Every figure read now, and the table made plain: a figure this call clears to
      -- nil must not be read back from the stored text when `v` is written.
      for name in pairs(LAZY_FIELD) do
        rawset(a, name, a[name])
      end
      setmetatable(a, nil)
      a.packed = true
      a.convert = true
    end
  else
    a = load_fields(fields or ACCOUNT_FIELDS)
  end
  LOADED = a
  return a
end

-- Writes one of the account's figures: packed, into `a` only (finish_account writes `v`
-- once, at the end of the call); else into `fields` (the caller's own HSET of the account,
-- still to come) when given, or an HSET of its own. A flag is `true` (1 in a field).
local function put(a, field, value, fields)
  a[field] = value
  if a.packed then
    a.dirty = true
    return
  end
  if value == true then
    value = 1
  end
  if fields then
    fields[#fields + 1] = field
    fields[#fields + 1] = value
  else
    redis.call('HSET', KEYS[1], field, value)
  end
end

-- Clears one of the account's figures to what its absence means (`absent`: 0, false or
-- nil): packed, in `a`; else an HDEL.
local function clear(a, field, absent)
  if a.packed then
    a[field] = absent
    a.dirty = true
    return
  end
  redis.call('HDEL', KEYS[1], field)
  -- Cleared for the rest of the call too: a lazy figure is not read back from its text.
  local i = a.index and a.index[field]
  if i then
    a.stored[i] = false
  else
    local fetched = rawget(a, 'fetched')
    if not fetched then
      fetched = {}
      rawset(a, 'fetched', fetched)
    end
    fetched[field] = false
  end
  rawset(a, field, absent)
end

-- The account's one write at the end of a reserve or settle: `fields` in the field form
-- (packed, `a` has them already, and finish_account writes them).
local function save_fields(a, fields)
  if a.packed then
    a.dirty = true
  elseif #fields > 0 then
    redis.call('HSET', KEYS[1], unpack(fields))
  end
end

-- At the end of every call (with_expired): a packed account that changed is written, in
-- one HSET of `v`; one in the field form that this call packs loses its fields. An
-- account that does not exist is never created here (only top_up and configure create,
-- and they set `exists`).
local function finish_account()
  local a = LOADED
  LOADED = nil
  if not (a and a.packed and a.dirty and a.exists) then
    return
  end
  redis.call('HSET', KEYS[1], 'v', pack_account(a))
  if a.convert then
    if a.thresholds_text then
      -- An older version's one `threshold` becomes the list.
      redis.call('HSET', KEYS[1], 'thresholds', a.thresholds_text)
    end
    redis.call('HDEL', KEYS[1], unpack(FIELD_FORM))
  end
end

-- Records that the due-index `field` ('due_holds' | 'due_events') must look at this
-- account by `due` (ms), unless it is already told to look earlier. Returns the time the
-- caller must write into the index, or 0 when it need not write.
local function note_due(a, field, due)
  if a[field] and a[field] <= due then
    return 0
  end
  put(a, field, due)
  return due
end

local function available(a)
  return a.topped_up - a.committed - a.held
end

-- The account's audit trail, in one of two forms:
-- - <prefix>:{<account>}:log, a list, newest first (`LPUSH`, an `LTRIM` to AUDIT_CAP every
--   AUDIT_TRIM_EVERY entries);
-- - while a packed account has at most TEXT_TRAIL_MAX entries (`a.trail`, the `trail`
--   figure of `v`): <prefix>:{<account>}:trail, a string, its entries oldest first, each
--   appended (`APPEND`). An account that was funded and never used, the most numerous
--   kind, keeps a one-entry string (about 120 bytes) where a one-entry list costs a
--   quicklist, its node and its listpack (about 220). Past TEXT_TRAIL_MAX the entries
--   move to the list: Redis grows an appended string to twice its length, so a trail at
--   its cap would take about twice a list's memory.
-- Both keys are in the account's slot (named from KEYS[1], <prefix>:{<account>}:acct).
local TEXT_TRAIL_MAX = 4

local function audit_log()
  return string.sub(KEYS[1], 1, -5) .. 'log'
end

local function audit_trail()
  return string.sub(KEYS[1], 1, -5) .. 'trail'
end

-- A text trail's entries as strings, oldest first: each is one MessagePack value, so the
-- text needs no separator. The second result is false when the text stops being
-- readable (no ledger writes such bytes): the entries before that point are returned.
local function trail_entries(text)
  local entries, at = {}, 0
  while at >= 0 and at < #text do
    local ok, next_at, entry = pcall(cmsgpack.unpack_limit, text, 1, at)
    if not ok or type(entry) ~= 'table' or type(entry[1]) ~= 'number' then
      return entries, false
    end
    entries[#entries + 1] = string.sub(text, at + 1, next_at < 0 and #text or next_at)
    at = next_at
  end
  return entries, true
end

-- Every entry of both forms, oldest first, by number: one form is all an account has,
-- unless a replica of an older build wrote the other one too. Keeps what each holds.
local function all_trail_entries()
  local entries, readable = {}, true
  local text = redis.call('GET', audit_trail())
  if text then
    entries, readable = trail_entries(text)
  end
  local newest_first = redis.call('LRANGE', audit_log(), 0, -1)
  if #newest_first > 0 then
    for i = #newest_first, 1, -1 do
      entries[#entries + 1] = newest_first[i]
    end
    if text then
      local seq = {}
      for _, e in ipairs(entries) do
        local ok, decoded = pcall(cmsgpack.unpack, e)
        seq[e] = ok and type(decoded) == 'table' and tonumber(decoded[1]) or 0
      end
      table.sort(entries, function(x, y) return seq[x] < seq[y] end)
    end
  end
  if not readable then
    redis.log(redis.LOG_WARNING, 'tower-credits: an audit trail unreadable past '
      .. #entries .. ' entries, the rest dropped: ' .. audit_trail())
  end
  return entries
end

-- Writes `values` with `command` (HSET, HDEL, LPUSH, ...) on `key`, `per` at a time: Lua's
-- `unpack` stops at a few thousand values.
local function in_chunks(command, key, values, per)
  for first = 1, #values, per do
    redis.call(command, key, unpack(values, first, math.min(first + per - 1, #values)))
  end
end

-- A packed account's small trail moved from the list to text (rewrite.lua).
local function trail_to_text(a)
  local entries = all_trail_entries()
  redis.call('DEL', audit_log(), audit_trail())
  if #entries > 0 then
    redis.call('SET', audit_trail(), table.concat(entries))
  end
  a.trail = true
  a.dirty = true
end

-- The text trail moved to the list, every readable entry kept: past TEXT_TRAIL_MAX, or for
-- an account written back in fields (rewrite.lua). Bytes no ledger wrote are dropped (and
-- the server log says so) rather than refuse the call that moves credits; reconcile names
-- such a text until then.
local function trail_to_list(a)
  local entries = all_trail_entries()
  redis.call('DEL', audit_log(), audit_trail())
  -- LPUSH puts each value at the head in turn: the last, the newest, ends first.
  in_chunks('LPUSH', audit_log(), entries, 500)
  a.trail = false
  a.dirty = a.packed
end

-- Appends an entry to the audit trail with the totals after it: the same step that moved
-- the credits writes it. An entry is a MessagePack array {seq, kind, amount, hold, route,
-- at, available, held, committed, topped_up} (MessagePack keeps every integer exact); a
-- list of such small strings costs a few bytes an entry where a stream would reserve
-- kilobytes per account.
-- With `fields` (the field-value list of the caller's own HSET of the account, still to be
-- written), the entry's number goes into that write instead of one of its own: one
-- command fewer on the request path.
local function audit(a, now, kind, amount, id, route, fields)
  if AUDIT_CAP == 0 then
    return
  end
  put(a, 'audit_seq', a.audit_seq + 1, fields)
  local entry = cmsgpack.pack({ a.audit_seq, kind, amount, id or '', route or '', now,
    available(a), a.held, a.committed, a.topped_up })
  -- A packed account's first entry starts a text trail (an earlier one is in the list).
  if a.packed and (a.trail or a.audit_seq == 1) then
    if a.audit_seq <= TEXT_TRAIL_MAX then
      a.trail = true
      redis.call('APPEND', audit_trail(), entry)
      return
    end
    trail_to_list(a)
  end
  local log = audit_log()
  redis.call('LPUSH', log, entry)
  -- Trimmed once every AUDIT_TRIM_EVERY entries, not on each: a full trail then costs no
  -- LTRIM per request, and holds at most AUDIT_TRIM_EVERY - 1 entries past the cap, which
  -- no read returns (history.lua stops at the cap).
  if a.audit_seq > AUDIT_CAP and a.audit_seq % AUDIT_TRIM_EVERY == 0 then
    redis.call('LTRIM', log, 0, AUDIT_CAP - 1)
  end
end

-- A top-up's record (idempotency key -> amount, kept forever: a payment id credits once,
-- ever). A packed account keeps it in its own hash, field '+' .. key, where a hash of
-- its own would cost an idle account a key (about 100 bytes); an account in fields keeps
-- the `topups` hash replicas built before packed accounts read, and so does a key too
-- long for a field Redis keeps in a listpack (hash-max-listpack-value: 64 bytes), so the
-- account's hash stays one. Reads look in both: records made in fields stay where they
-- are when the account is packed (rewrite.lua moves them).
local TOP_UP_FIELD_MAX = 63

local function top_up_of(a, key)
  local first
  if a.packed and #key <= TOP_UP_FIELD_MAX then
    first = redis.call('HGET', KEYS[1], '+' .. key)
  end
  return first or redis.call('HGET', KEYS[6], key)
end

local function record_top_up(a, key, amount)
  if a.packed and #key <= TOP_UP_FIELD_MAX then
    redis.call('HSET', KEYS[1], '+' .. key, amount)
  else
    redis.call('HSET', KEYS[6], key, amount)
  end
end

-- Every top-up record of the account, in either place: {key, amount, key, amount, ...},
-- and those of them in the account's hash apart, as {field ('+' .. key), amount, ...}.
local function top_up_records()
  local records, in_account = redis.call('HGETALL', KEYS[6]), {}
  local fields = redis.call('HGETALL', KEYS[1])
  for i = 1, #fields, 2 do
    if string.byte(fields[i]) == 43 then -- '+'
      records[#records + 1] = string.sub(fields[i], 2)
      records[#records + 1] = fields[i + 1]
      in_account[#in_account + 1] = fields[i]
      in_account[#in_account + 1] = fields[i + 1]
    end
  end
  return records, in_account
end

-- Moves an account's top-up records to where its new form keeps them (rewrite.lua):
-- packed, the keys that fit into the account's hash; in fields, all into `topups`.
-- Written a few hundred at a time (an account may have thousands). Returns how many moved.
local function move_top_ups(packed)
  local moving, gone = {}, {}
  if packed then
    local records = redis.call('HGETALL', KEYS[6])
    for i = 1, #records, 2 do
      local key = records[i]
      if #key <= TOP_UP_FIELD_MAX then
        moving[#moving + 1] = '+' .. key
        moving[#moving + 1] = records[i + 1]
        gone[#gone + 1] = key
      end
    end
    in_chunks('HSET', KEYS[1], moving, 500)
    in_chunks('HDEL', KEYS[6], gone, 250)
  else
    local _, in_account = top_up_records()
    for i = 1, #in_account, 2 do
      moving[#moving + 1] = string.sub(in_account[i], 2)
      moving[#moving + 1] = in_account[i + 1]
      gone[#gone + 1] = in_account[i]
    end
    in_chunks('HSET', KEYS[6], moving, 500)
    in_chunks('HDEL', KEYS[1], gone, 250)
  end
  return #gone
end

-- Adds `by` to a counter field, in Redis and in the loaded account. (Adding nothing is
-- skipped: `-0` would reach Redis as "-0", which HINCRBY refuses.)
local function incr(a, field, by)
  if by == 0 then
    return
  end
  if a.packed then
    a.dirty = true
  else
    redis.call('HINCRBY', KEYS[1], field, by)
  end
  a[field] = a[field] + by
end

-- The account's thresholds as stored: a list of { n = credits } or { pct = percent }.
local function thresholds_of(a)
  local list = {}
  if a.thresholds_text then
    for item in string.gmatch(a.thresholds_text, '[^,]+') do
      if string.sub(item, -1) == '%' then
        list[#list + 1] = { pct = tonumber(string.sub(item, 1, -2)) }
      else
        list[#list + 1] = { n = tonumber(item) }
      end
    end
  end
  return list
end

-- A threshold in credits: a percentage is of the account's last top-up (read only then),
-- floor(last * pct / 100), computed exactly (last * pct may pass 2^53): fmod is exact, and
-- last - r divides by 100.
local function threshold_value(t, a)
  if t.pct then
    local last_topup = a.last_topup
    local r = math.fmod(last_topup, 100)
    return (last_topup - r) / 100 * t.pct + math.floor(r * t.pct / 100)
  end
  return t.n
end

-- The thresholds in credits, highest first, each once (the reply's `thresholds`).
local function thresholds_reply(a)
  if not a.thresholds_text then
    -- Most accounts: no list to build, sort or check.
    return {}
  end
  local values, seen = {}, {}
  for _, t in ipairs(thresholds_of(a)) do
    local v = threshold_value(t, a)
    if not seen[v] then
      seen[v] = true
      values[#values + 1] = v
    end
  end
  table.sort(values, function(x, y) return x > y end)
  return values
end

-- Whether bit i (from 1) of a fired mask is set.
local function fired_bit(mask, i)
  return math.floor(mask / 2 ^ (i - 1)) % 2 == 1
end

-- A fresh outbox entry number from a counter kept with the account, given to XADD as
-- the entry id (`<n>-0`): never reused, even once an emptied outbox was deleted (which
-- forgets a stream's last id) or Redis's clock stepped back, so an acknowledgement that
-- arrives late can only ever remove the event it was meant for.
local function next_entry(a)
  if a.packed then
    a.events = a.events + 1
    a.dirty = true
    return a.events
  end
  return redis.call('HINCRBY', KEYS[1], 'events', 1)
end

-- Appends an event to the account's outbox (KEYS[7]) and leases it (KEYS[8]) to the
-- replica that made this call: the event and the credits move in one atomic step, so a
-- replica that dies right after leaves it for another. Its `seq` (the entry's counter)
-- and `at` are what its id is derived from. Returns it as the reply shows it.
local function emit(a, now, owner, lease_ms, kind, threshold, runway)
  local seq = next_entry(a)
  local entry = redis.call('XADD', KEYS[7], seq, 'type', kind, 'available', available(a),
    'threshold', threshold or -1, 'runway', runway or -1, 'at', now, 'seq', seq)
  redis.call('HSET', KEYS[8], entry, now + lease_ms, entry .. ':owner', owner)
  -- Should the replica die, another claims the event once the lease lapses: the events
  -- due-index looks then (the caller writes the index when this returns a time).
  local due = note_due(a, 'due_events', now + lease_ms)
  if due > 0 then
    a.events_due = due
  end
  return { entry, kind, available(a), threshold or -1, runway or -1, now, seq }
end

-- After a commit: each armed threshold `available` fell below fires `balance.low` once
-- and is disarmed (highest first); a runway below the horizon fires `balance.runway_low`
-- once. Only a top-up re-arms them (top_up.lua). Returns the events.
local function alerts_after_commit(a, now, owner, lease_ms)
  local events, crossed, seen = {}, {}, {}
  -- Without thresholds, `fired` is not even read.
  local fired = a.thresholds_text and a.fired or 0
  for i, t in ipairs(thresholds_of(a)) do
    local v = threshold_value(t, a)
    if not fired_bit(fired, i) and available(a) < v then
      fired = fired + 2 ^ (i - 1)
      if not seen[v] then
        seen[v] = true
        crossed[#crossed + 1] = v
      end
    end
  end
  if a.thresholds_text and fired ~= a.fired then
    put(a, 'fired', fired)
  end
  table.sort(crossed, function(x, y) return x > y end)
  for _, v in ipairs(crossed) do
    events[#events + 1] = emit(a, now, owner, lease_ms, 'balance.low', v, nil)
  end
  local horizon = a.horizon or DEFAULT_RUNWAY_HORIZON_SECS
  if not a.runway_fired and horizon > 0 and a.rate > 1e-9
      and a.commits >= RUNWAY_MIN_COMMITS and a.first_commit_at
      and now - a.first_commit_at >= RUNWAY_MIN_SPAN_MS then
    local runway = 0
    if available(a) > 0 then
      runway = math.floor(available(a) / a.rate)
    end
    if runway < horizon then
      put(a, 'runway_fired', true)
      events[#events + 1] = emit(a, now, owner, lease_ms, 'balance.runway_low', nil, runway)
    end
  end
  return events
end

-- The burn rate for the Rust side to decay, as Redis stores it (exact): the text loaded,
-- or the text a settle wrote (rate_text, "%.17g" as Redis 7.0 would spell the number);
-- a packed account's number spelled so when a runway is known.
local function rate_reply(a, now)
  -- No runway until the spend history says something (ledger::runway::runway_known).
  if a.commits < RUNWAY_MIN_COMMITS or not a.first_commit_at
      or now - a.first_commit_at < RUNWAY_MIN_SPAN_MS then
    return '0'
  end
  return a.rate_text or string.format('%.17g', a.rate)
end

-- What a closed id answers when settled (or reserved, or extended) again.
local function already(how)
  if how == 'committed' then
    return 'already_committed'
  elseif how == 'refunded' then
    return 'already_refunded'
  end
  return how
end

-- How a hold id closed, kept in the low two bits of its `done` score, above them the time
-- it is forgotten at (exact: such times * 4 stay far below 2^53), so one sorted set
-- answers how, and orders the ids by when they go.
local CLOSED_CODE = { committed = 1, refunded = 2, expired = 3 }
local CLOSED_HOW = { 'committed', 'refunded', 'expired' }

-- Remembers how a hold id closed, until forget_at (ms). The caller then calls
-- expire_done once for all the ids it closed.
local function close(id, how, forget_at)
  redis.call('ZADD', KEYS[4], int(forget_at * 4 + CLOSED_CODE[how]), id)
end

-- Keeps the `done` key no longer than its latest forget-at time (+ DONE_EXPIRY_SLACK_MS): an
-- account whose traffic stops loses it whole, with no call and no sweep. Only ever pushed
-- later (GT); a key just created has no expiry yet, which GT counts as later than any, so NX
-- sets it. Relative to now, so it follows Redis's own clock (a test offset does not move
-- it). The expiry set is noted in the account (`done_until`, in `fields`, the caller's own
-- HSET of the account, else one of its own): settles within the slack of the last push
-- need none, so busy traffic pushes it about once a second, not on every settle.
local DONE_EXPIRY_SLACK_MS = 1000

local function expire_done(a, forget_at, now, fields)
  -- Strictly earlier: a key a prune has just emptied (and so deleted) and a close has made
  -- again has no expiry, and is pushed whenever its forget-at meets the last push.
  if a.done_until and forget_at < a.done_until and a.done_until > now then
    return
  end
  local until_ms = forget_at + DONE_EXPIRY_SLACK_MS
  local ms = until_ms - now
  if redis.call('PEXPIRE', KEYS[4], ms, 'GT') == 0 then
    redis.call('PEXPIRE', KEYS[4], ms, 'NX')
  end
  put(a, 'done_until', until_ms, fields)
end

-- When a hold that expires at expires_at, closed now, is forgotten: once no call about it
-- can still come. Settles and extends are retried only while the hold lives, a reserve
-- only while the first one is unanswered; each may take the call timeout to arrive, and
-- the grace (call timeout + 1 s) covers that and clock skew. The expiry is at most the
-- hold's TTL after the close, so this is never later than close + TTL + grace.
local function forget_at(now, expires_at, grace)
  return math.max(now, expires_at) + grace
end

-- How `id` closed ('committed' | 'refunded' | 'expired'), or nil if it is not remembered
-- at `now`: an id whose forget-at time has come is forgotten whether or not a prune has
-- taken it out yet (so a reserve need not prune first).
local function closed_how(id, now)
  local score = tonumber(redis.call('ZSCORE', KEYS[4], id))
  if not score or math.floor(score / 4) <= now then
    return nil
  end
  return CLOSED_HOW[score % 4]
end

-- Reclaims up to RECLAIM_LIMIT expired holds (found through the expiry index), then
-- notes when the earliest open hold left expires. Returns how many holds went back.
-- Credits this call's reclaims took back: the reply carries them to the replica's
-- credits_expired_total (with_expired). Reset on every call.
local expired_credits = 0

-- The script's reply `r`, in the envelope {'expired_credits', credits, r} when this call
-- reclaimed expired credits (reply.rs reads the envelope off every account script's reply).
local function with_expired(r)
  finish_account()
  if expired_credits > 0 then
    local credits = expired_credits
    expired_credits = 0
    return { 'expired_credits', credits, r }
  end
  return r
end

local function reclaim_expired(a, now, grace)
  local expired = redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', now, 'LIMIT', 0, RECLAIM_LIMIT)
  local reclaimed = 0
  for _, id in ipairs(expired) do
    local amount = tonumber(redis.call('HGET', KEYS[2], id))
    redis.call('ZREM', KEYS[3], id)
    if amount then
      redis.call('HDEL', KEYS[2], id, id .. ':route', id .. ':exp')
      incr(a, 'held', -amount)
      audit(a, now, 'expire', amount, id, nil)
      -- Expired by now: its expiry is at most now.
      close(id, 'expired', forget_at(now, now, grace))
      reclaimed = reclaimed + 1
      expired_credits = expired_credits + amount
    end
  end
  if reclaimed > 0 then
    expire_done(a, forget_at(now, now, grace), now)
  end
  -- Credits that came back re-arm no threshold: only a top-up does.
  local first = redis.call('ZRANGE', KEYS[3], 0, 0, 'WITHSCORES')
  put(a, 'next_expiry', tonumber(first[2]) or NO_OPEN_HOLDS)
  return reclaimed
end

-- Reclaims up to RECLAIM_LIMIT expired holds (found through the expiry index, never a
-- scan), and forgets up to RECLAIM_LIMIT closed ids whose forget-at time has come (the key's
-- PEXPIRE drops the rest once the last is due). Returns how many holds went back.
--
-- `next_expiry` (no open hold expires before it) spares the expiry index a look on most
-- calls: a reserve or an extend lowers it to its hold's new expiry when earlier, a settle
-- only takes a hold away, so it stays a lower bound; once passed, reclaim_expired looks
-- and refreshes it.
--
-- A packed account prunes at most once every PRUNE_GAP_MS (its `prune_at`, a figure of
-- `v`, so the hint costs no command of its own), or on the next call again while a prune
-- finds RECLAIM_LIMIT ids: a settle runs one or two commands fewer, and `done` keeps at
-- most a gap's closed ids more. Pruning only frees memory: closed_how already reads an id
-- past its forget-at time as forgotten.
local PRUNE_GAP_MS = 1000

local function reclaim(a, now, grace, skip_prune)
  local reclaimed = 0
  if a.next_expiry == nil or a.next_expiry <= now then
    reclaimed = reclaim_expired(a, now, grace)
  elseif skip_prune then
    -- Nothing expired was closed here: the prune can wait for a call that does it.
    return reclaimed
  end
  -- (A prune_at further ahead than the gap was written under a later clock, Redis's
  -- clock having stepped back since: not trusted, or `done` would grow until it catches up.)
  if a.packed and a.prune_at and now < a.prune_at and a.prune_at - now <= PRUNE_GAP_MS then
    return reclaimed
  end
  local old = redis.call('ZRANGEBYSCORE', KEYS[4], '-inf', now * 4 + 3,
    'LIMIT', 0, RECLAIM_LIMIT)
  if #old > 0 then
    redis.call('ZREM', KEYS[4], unpack(old))
  end
  -- Kept in `a` only, not marked as a change: a call that writes the account anyway (a
  -- settle) keeps it, a read (balance, usage) writes nothing for it and prunes again next
  -- time, as in the field form.
  if a.packed then
    if #old < RECLAIM_LIMIT then
      a.prune_at = now + PRUNE_GAP_MS
    else
      a.prune_at = nil
    end
  end
  return reclaimed
end

-- The burn rate (credits/s) decayed from rate_at to now, as ledger::decayed_rate.
local function decayed_rate(rate, rate_at, now)
  local dt = math.max(now - rate_at, 0) / 1000.0
  return rate * math.exp(-dt / BURN_RATE_TAU_SECS)
end

-- Opens an existing account for an operation: its fields and the time, after reclaiming
-- its expired holds (bounded work). Returns nil, writing nothing, for an unknown account;
-- else the account, now (ms) and how many holds were reclaimed. With `skip_prune`, closed
-- ids past their forget-at time are left for the next call that prunes (closed_how reads
-- them as forgotten already), unless this call closed expired holds itself: a reserve
-- skips it, since the holds it opens are settled (a call that prunes) or expire (closed,
-- and pruned, by the call that reclaims them), which keeps `done` as bounded as before.
local function open_account(offset, grace, skip_prune, fields)
  local a = load_account(fields)
  if not a.exists then
    return nil
  end
  local now = now_ms(offset)
  return a, now, reclaim(a, now, grace, skip_prune)
end

-- The idempotency record of a key digest (hex): <prefix>:{<account>}:req:<digest>, in the
-- account's slot (named from KEYS[1], <prefix>:{<account>}:acct).
local function request_key(digest)
  if type(digest) ~= 'string' or not string.find(digest, '^%x+$') or #digest ~= 64 then
    bad('idempotency key')
  end
  return string.sub(KEYS[1], 1, -5) .. 'req:' .. digest
end

-- Whether the record `rk` was made by hold `id` (a record another request made is left
-- alone).
local function request_of(rk, id)
  return redis.call('HGET', rk, 'hold') == id
end
