//! The Lua scripts the fleet runs in Redis (loaded by SHA, reloaded on `NOSCRIPT`). Each
//! applies the same rules as `pool.rs` to the shared record, so reports from several
//! instances add up, and publishes the result so every mirror follows.

/// The fleet's scripts, hashed once per instance (not per call).
#[derive(Debug)]
pub struct Scripts {
    pub change: redis::Script,
    pub admit: redis::Script,
    pub release: redis::Script,
}

impl Default for Scripts {
    fn default() -> Self {
        Scripts {
            change: redis::Script::new(CHANGE),
            admit: redis::Script::new(ADMIT),
            release: redis::Script::new(RELEASE),
        }
    }
}

/// The fleet's clock: `now_ms` from the caller (tests), else Redis `TIME`. Every script
/// starts with it.
macro_rules! fleet_now {
    ($arg:literal) => {
        concat!(
            "local now = tonumber(ARGV[",
            $arg,
            "])\nif not now then\n  local t = redis.call('TIME')\n  now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)\nend\n"
        )
    };
}

/// Compare-and-delete: release a lock only if its owner (`ARGV[1]`) still holds it.
pub const RELEASE: &str = r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"#;

/// `change`: apply one pool change to a token's shared record.
///
/// KEYS: the tokens hash, the meta hash. ARGV: token id (`*` for `reset_all` and
/// `clear_consec`), kind (`success`, `strike`, `ratelimit`, `reset`, `disable`, `put`,
/// `reset_all`, `clear_consec`), Retry-After in ms (-1: none), `max_failures`, `cooldown`
/// ms, `max_cooldown` ms, origin instance, channel, `now_ms` (empty: Redis `TIME`, the
/// fleet's one clock; tests pass their own), for `put` the instance's record
/// (`strikes,disabled,cool_until_ms,streak`), then the failures-in-a-row threshold and the
/// origin's pool size.
///
/// A strike or a 429 also counts in the fleet's failures in a row (meta `consec`): at the
/// threshold, with more than two tokens in the pool (the rule of `pool.rs`), the count goes
/// back to 0 and `* refresh` asks every instance to refresh its accounts; below it,
/// `* consec:<n>` tells the mirrors the count. `clear_consec` (a success after failures, an
/// operator's reset) sets it to 0.
///
/// Returns `{record, now_ms}`; the record is empty when nothing changed (a success on a
/// clean token) or for `reset_all` and `clear_consec`.
pub const CHANGE: &str = concat!(
    fleet_now!("9"),
    r#"
local tid, kind = ARGV[1], ARGV[2]
if kind == 'reset_all' then
  redis.call('DEL', KEYS[1])
  redis.call('HINCRBY', KEYS[2], 'ver', 1)
  redis.call('PUBLISH', ARGV[8], ARGV[7] .. ' * reset')
  return {'', string.format('%d', now)}
end
if kind == 'clear_consec' then
  if tonumber(redis.call('HGET', KEYS[2], 'consec') or '0') ~= 0 then
    redis.call('HSET', KEYS[2], 'consec', 0)
    redis.call('PUBLISH', ARGV[8], ARGV[7] .. ' * consec:0')
  end
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
elseif kind == 'put' then
  -- An instance's own state after Redis lost it (a restart): merged, never weakening
  -- what the record already says.
  local f = {}
  for x in string.gmatch(ARGV[10] or '', '[^,]+') do f[#f + 1] = tonumber(x) end
  s = math.max(s, f[1] or 0)
  d = math.max(d, f[2] or 0)
  c = math.max(c, f[3] or 0)
  k = math.max(k, f[4] or 0)
else
  return {'', string.format('%d', now)}
end
v = v + 1
local new = string.format('%d,%d,%d,%d,%d', s, d, c, k, v)
redis.call('HSET', KEYS[1], tid, new)
redis.call('HINCRBY', KEYS[2], 'ver', 1)
redis.call('PUBLISH', ARGV[8], ARGV[7] .. ' ' .. tid .. ' ' .. new)
if kind == 'strike' or kind == 'ratelimit' then
  local consec = redis.call('HINCRBY', KEYS[2], 'consec', 1)
  local limit, size = tonumber(ARGV[11] or ''), tonumber(ARGV[12] or '')
  if limit and size and size > 2 and consec >= limit then
    redis.call('HSET', KEYS[2], 'consec', 0)
    redis.call('PUBLISH', ARGV[8], ARGV[7] .. ' * refresh')
  else
    redis.call('PUBLISH', ARGV[8], ARGV[7] .. ' * consec:' .. consec)
  end
end
return {new, string.format('%d', now)}
"#
);

/// `admit`: one client-limit decision for a client key, both halves at once (concurrency
/// first, as `limits.rs` does, then the rate as GCRA). Commits both or neither.
///
/// KEYS: the key's rate state (its theoretical arrival time), the key's in-flight leases
/// (ZSET lease → expiry ms). ARGV: rate per second (0: none), burst (the bucket, ≥ 1),
/// concurrency (0: none), lease TTL ms, lease id, and `now_ms` (empty: Redis `TIME`).
///
/// Returns `{1, '', 0}` when admitted, else `{0, 'concurrency' | 'rate', retry_after_ms}`.
pub const ADMIT: &str = concat!(
    fleet_now!("6"),
    r#"
local rate, burst, conc = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local ttl, lease = tonumber(ARGV[4]), ARGV[5]
if conc > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
  if redis.call('ZCARD', KEYS[2]) >= conc then
    return {0, 'concurrency', 1000}
  end
end
local new_tat = nil
if rate > 0 then
  local step = 1000 / rate
  local tat = tonumber(redis.call('GET', KEYS[1]) or '0') or 0
  if tat < now then tat = now end
  new_tat = tat + step
  local allowed_at = new_tat - burst * step
  if allowed_at > now then
    return {0, 'rate', math.ceil(allowed_at - now)}
  end
  redis.call('SET', KEYS[1], string.format('%.3f', new_tat), 'PX', math.ceil(burst * step + 1000))
end
if conc > 0 then
  redis.call('ZADD', KEYS[2], now + ttl, lease)
  redis.call('PEXPIRE', KEYS[2], ttl * 2)
end
return {1, '', 0}
"#
);
