//! The Lua scripts the fleet runs in Redis (loaded by SHA, reloaded on `NOSCRIPT`). Each
//! applies the same rules as `pool.rs` to the shared record, so reports from several
//! instances add up, and publishes the result so every mirror follows.

/// `change`: apply one pool change to a token's shared record.
///
/// KEYS: the tokens hash, the meta hash. ARGV: token id (`*` for `reset_all`), kind
/// (`success`, `strike`, `ratelimit`, `reset`, `disable`, `reset_all`), Retry-After in ms
/// (-1: none), `max_failures`, `cooldown` ms, `max_cooldown` ms, origin instance, channel,
/// and `now_ms` (empty: Redis `TIME`, the fleet's one clock; tests pass their own).
///
/// Returns `{record, now_ms}`; the record is empty when nothing changed (a success on a
/// clean token) or for `reset_all`.
pub const CHANGE: &str = r#"
local now = tonumber(ARGV[9])
if not now then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local tid, kind = ARGV[1], ARGV[2]
if kind == 'reset_all' then
  redis.call('DEL', KEYS[1])
  redis.call('HINCRBY', KEYS[2], 'ver', 1)
  redis.call('PUBLISH', ARGV[8], ARGV[7] .. ' * reset')
  return {'', string.format('%d', now)}
end
local s, d, c, k, v = 0, 0, 0, 0, 0
local rec = redis.call('HGET', KEYS[1], tid)
if rec then
  local f = {}
  for x in string.gmatch(rec, '[^,]+') do f[#f + 1] = tonumber(x) end
  s, d, c, k, v = f[1] or 0, f[2] or 0, f[3] or 0, f[4] or 0, f[5] or 0
end
if kind == 'success' then
  if s == 0 and k == 0 then return {'', string.format('%d', now)} end
  s, k = 0, 0
elseif kind == 'strike' then
  s = s + 1
  if s >= tonumber(ARGV[4]) then d = 1 end
elseif kind == 'ratelimit' then
  k = k + 1
  local wait = tonumber(ARGV[3])
  if wait < 0 then
    local e = k - 1
    if e > 20 then e = 20 end
    wait = math.min(tonumber(ARGV[5]) * (2 ^ e), tonumber(ARGV[6]))
  end
  c = math.max(c, now + math.floor(wait))
elseif kind == 'reset' then
  s, d, c, k = 0, 0, 0, 0
elseif kind == 'disable' then
  d = 1
else
  return {'', string.format('%d', now)}
end
v = v + 1
local new = string.format('%d,%d,%d,%d,%d', s, d, c, k, v)
redis.call('HSET', KEYS[1], tid, new)
redis.call('HINCRBY', KEYS[2], 'ver', 1)
redis.call('PUBLISH', ARGV[8], ARGV[7] .. ' ' .. tid .. ' ' .. new)
return {new, string.format('%d', now)}
"#;
