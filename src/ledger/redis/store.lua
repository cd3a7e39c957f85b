-- store: keeps a keyed request's response for its replays (Ledger::store_response).
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
-- ARGV[3]: hold id
-- ARGV[4]: idempotency key digest, hex
-- ARGV[5]: 'response' or 'unavailable'
-- ARGV[6]: the response ('' when unavailable)
-- ARGV[7]: audit trail cap, entries (0: no trail; read by common_args)
-- The record keeps its TTL; one made by another hold is left alone.
-- Returns:
--   {'stored', 0|1}

common_args()
local id = hold_id_arg(3)
local rk = request_key(ARGV[4])
local mode = ARGV[5]
if mode ~= 'response' and mode ~= 'unavailable' then
  bad('mode')
end
if not request_of(rk, id) then
  return { 'stored', 0 }
end
if mode == 'response' then
  redis.call('HSET', rk, 'response', ARGV[6])
else
  redis.call('HSET', rk, 'unavailable', 1)
end
return { 'stored', 1 }
