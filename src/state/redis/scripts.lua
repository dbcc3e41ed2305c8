-- riskgate's Redis scripts share this prelude. Every time, count and ttl arrives as a decimal string and is
-- passed on as that string (Lua would print a number above 10^14 in exponent form); `tonumber` is used only
-- to compare. Each script touches the keys of one hash-tag slot: one user's, one IP's, one device's or one
-- value's.
local i = 0
local function nxt()
  i = i + 1
  return ARGV[i]
end

-- An action record is one string of '\n'-separated fields: cr, lease, fp, id while it is claimed, then st, su,
-- th, te, tu and d once decided (d, the decision's JSON, last; no field holds a raw newline). A string costs
-- the server a fraction of a hash whose decision field (over 64 bytes) makes it a full hash table.
local function fields(v)
  local f, s = {}, 1
  for k = 1, 9 do
    local e = string.find(v, '\n', s, true)
    if not e then
      f[k] = string.sub(v, s)
      return f
    end
    f[k] = string.sub(v, s, e - 1)
    s = e + 1
  end
  f[10] = string.sub(v, s)
  return f
end

-- A record's lease owner ('' once decided).
local function lease_of(v)
  return string.match(v, '^[^\n]*\n([^\n]*)')
end

-- A velocity series: one member per action, scored by its time. Drops what is older than the window of the
-- time written (score <= cutoff), then the oldest while the series is full, then adds.
local function zpush(key, member, at, cutoff, cap, ttl)
  redis.call('ZREMRANGEBYSCORE', key, '-inf', cutoff)
  local n = redis.call('ZCARD', key)
  if n >= cap then
    redis.call('ZREMRANGEBYRANK', key, 0, n - cap)
  end
  redis.call('ZADD', key, at, member)
  redis.call('PEXPIRE', key, ttl)
end

-- A distinct set or known list: one member per user, device, IP or country, scored by when it was last seen.
-- A member already there only moves to a later time (`GT`); a new one is added, then the set trimmed: what
-- is older than the window, then the oldest while it holds more than `cap` (never the member just added,
-- which replaces the oldest other even when it is older itself).
local function zsee(key, member, at, cutoff, cap, ttl)
  if redis.call('ZADD', key, 'GT', at, member) == 1 then
    redis.call('ZREMRANGEBYSCORE', key, '-inf', cutoff)
    local over = redis.call('ZCARD', key) - cap
    if over > 0 then
      if redis.call('ZRANK', key, member) < over then
        redis.call('ZREM', key, member)
        redis.call('ZPOPMIN', key, over)
        redis.call('ZADD', key, at, member)
      else
        redis.call('ZPOPMIN', key, over)
      end
    end
  end
  redis.call('PEXPIRE', key, ttl)
end

-- `count:last` pairs.
local function split(v)
  local p = string.find(v, ':', 1, true)
  return tonumber(string.sub(v, 1, p - 1)), string.sub(v, p + 1)
end

-- One more verified action with value `v` in a user's `rba_score()` counts (at most `cap` values).
local function count_value(key, v, at, cutoff, cap)
  local cur = redis.call('HGET', key, v)
  if cur then
    local c, l = split(cur)
    if tonumber(at) > tonumber(l) then l = at end
    redis.call('HSET', key, v, (c + 1) .. ':' .. l)
    return
  end
  local all = redis.call('HGETALL', key)
  local n, oldest, oldest_t = 0, nil, nil
  for j = 1, #all, 2 do
    local f = all[j]
    if f ~= 'n' then
      local _, ls = split(all[j + 1])
      local l = tonumber(ls)
      if l <= tonumber(cutoff) then
        redis.call('HDEL', key, f)
      else
        n = n + 1
        if oldest_t == nil or l < oldest_t then
          oldest, oldest_t = f, l
        end
      end
    end
  end
  if n >= cap and oldest then
    redis.call('HDEL', key, oldest)
  end
  redis.call('HSET', key, v, '1:' .. at)
end

-- What a verified action makes known, on the user's keys KEYS[b] .. KEYS[b + 4]: devices, IPs, countries,
-- last location, rba counts.
local function know(b)
  local at = nxt()
  local cutoff = nxt()
  local kf = nxt()
  local cap = tonumber(nxt())
  local rcap = tonumber(nxt())
  for k = 0, 2 do
    local item = nxt()
    if item ~= '' then
      zsee(KEYS[b + k], item, at, cutoff, cap, kf)
    end
  end
  if nxt() == '1' then
    local lat = nxt()
    local lon = nxt()
    local lip = nxt()
    local lcc = nxt()
    local old = redis.call('HGET', KEYS[b + 3], 'at')
    if (not old) or tonumber(old) <= tonumber(at) then
      redis.call('HSET', KEYS[b + 3], 'lat', lat, 'lon', lon, 'at', at, 'ip', lip, 'cc', lcc)
    end
    redis.call('PEXPIRE', KEYS[b + 3], kf)
  end
  local nr = tonumber(nxt())
  if nr > 0 then
    redis.call('HINCRBY', KEYS[b + 4], 'n', 1)
    for _ = 1, nr do
      count_value(KEYS[b + 4], nxt(), at, cutoff, rcap)
    end
    redis.call('PEXPIRE', KEYS[b + 4], kf)
  end
end

-- The series and set writes of one subject: KEYS[b] its series, KEYS[b + 1] its set.
local function record(b)
  if nxt() == '1' then
    local m = nxt()
    local at = nxt()
    local cutoff = nxt()
    local cap = tonumber(nxt())
    local ttl = nxt()
    zpush(KEYS[b], m, at, cutoff, cap, ttl)
  end
  if nxt() == '1' then
    local m = nxt()
    local at = nxt()
    local cutoff = nxt()
    local cap = tonumber(nxt())
    local ttl = nxt()
    zsee(KEYS[b + 1], m, at, cutoff, cap, ttl)
  end
end

-- One read of a series or set: '0' (none), '1' lo hi (its members within (lo, hi], with their times) or
-- '2' hi n lo1 .. lon (how many members are within each (lo, hi]: the ruleset's windows, counted here).
local function read(key)
  local m = nxt()
  if m == '1' then
    local lo = nxt()
    local hi = nxt()
    return redis.call('ZRANGEBYSCORE', key, '(' .. lo, hi, 'WITHSCORES')
  end
  local c = {}
  if m == '2' then
    local hi = nxt()
    for j = 1, tonumber(nxt()) do
      c[j] = redis.call('ZCOUNT', key, '(' .. nxt(), hi)
    end
  end
  return c
end

-- The reads of one subject's series and set.
local function reads(b, out)
  out[#out + 1] = read(KEYS[b])
  out[#out + 1] = read(KEYS[b + 1])
end
