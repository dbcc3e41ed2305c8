//! The server-side scripts: each runs atomically on the keys of one hash-tag slot. The shared prelude
//! (`scripts.lua`) holds the series, set, known and `rba_score()` updates, written once.

/// A script and its SHA-1, for EVALSHA (and EVAL once after a `NOSCRIPT`).
pub(crate) struct Script {
    pub src: &'static str,
    pub sha: String,
}

impl Script {
    fn new(src: &'static str) -> Self {
        Script {
            src,
            sha: redis::Script::new(src).get_hash().to_owned(),
        }
    }
}

macro_rules! script {
    ($body:literal) => {
        concat!(include_str!("scripts.lua"), "\n", $body)
    };
}

/// Claims a new identity, or answers what it holds; with the claim, reads the user's history (whether this
/// action's device and IP are known only for a ruleset that asks whether they are new, whether its country is
/// known and the last location only for one that asks about places or calls `rba_score()`, its `rba_score()`
/// counts only for one that calls it). A known item is looked up by itself (`ZSCORE`), not by reading the
/// user's whole list. The reply is one flat array: the status, then each read as its length and its items
/// (a nested table costs the server several times a flat item to send).
/// KEYS: action, user series, devices of the user, known devices, IPs, countries, location, rba counts, then
/// (off-cluster) the IP's and device's series and sets it reads.
const CLAIM: &str = script!(
    r#"
local a = KEYS[1]
local id = nxt()
local fp = nxt()
local now = nxt()
local ttl = nxt()
local lease = nxt()
local owner = nxt()
local cur = redis.call('GET', a)
if cur then
  local cr = tonumber(string.match(cur, '^[^\n]*'))
  -- What it holds, for the engine to tell a conflict, a decision and a claim apart.
  if cr and cr + tonumber(ttl) > tonumber(now) then return {'held', cur} end
end
redis.call('SET', a, now .. '\n' .. owner .. '\n' .. fp .. '\n' .. id, 'PX', lease)
local out = {'claimed'}
local n = 1
local function put(t)
  out[n + 1] = #t
  for j = 1, #t do out[n + 1 + j] = t[j] end
  n = n + 1 + #t
end
put(read(KEYS[2]))
put(read(KEYS[3]))
local kfrom = tonumber(nxt())
-- Whether this action's device, IP and country are known: the item ('' for none) and its time if it is.
for k = 4, 6 do
  local item = nxt()
  local s = item ~= '' and redis.call('ZSCORE', KEYS[k], item)
  if s and tonumber(s) > kfrom then put({item, s}) else put({}) end
end
if nxt() == '1' then
  put(redis.call('HMGET', KEYS[7], 'lat', 'lon', 'at', 'ip', 'cc'))
else
  put({})
end
if nxt() == '1' then
  put(redis.call('HGETALL', KEYS[8]))
else
  put({})
end
-- Off-cluster, the IP's and device's reads (their keys follow the user's).
for j = 1, tonumber(nxt()) do
  put(read(KEYS[8 + j]))
end
return out
"#
);

/// Commits a claimed first decision (only while the claim's lease holds) with the user's history writes and,
/// off-cluster, the IP's and device's (so one script does every write, and none is made when the lease ran
/// out). KEYS: as [`CLAIM`]'s, then the series and set of each subject written here.
const COMMIT: &str = script!(
    r#"
local a = KEYS[1]
local owner = nxt()
local decision = nxt()
local ttl = nxt()
local cur = redis.call('GET', a)
if not cur then return 0 end
local cr, held, rest = string.match(cur, '^([^\n]*)\n([^\n]*)\n(.*)$')
if held ~= owner then return 0 end
-- The lease is emptied in the same write (no owner matches it again); `decision` is st .. d.
redis.call('SET', a, cr .. '\n\n' .. rest .. '\n' .. decision, 'PX', ttl)
record(2)
if nxt() == '1' then know(4) end
for j = 1, tonumber(nxt()) do record(7 + 2 * j) end
return 1
"#
);

/// Records an action in one IP's or device's series and set. KEYS: series, set.
const SUBJECT: &str = script!(
    r#"
record(1)
return 1
"#
);

/// Makes a verified action's device, IP and country known. KEYS: known devices, IPs, countries, location,
/// rba counts.
const KNOW: &str = script!(
    r#"
know(1)
return 1
"#
);

/// One more verified action with one `rba_score()` value, over all users. KEYS: the value's count.
const POPULATION: &str = script!(
    r#"
local at = nxt()
local ttl = nxt()
local cur = redis.call('GET', KEYS[1])
local c, l = 0, at
if cur then
  c, l = split(cur)
  if tonumber(at) > tonumber(l) then l = at end
end
redis.call('SET', KEYS[1], (c + 1) .. ':' .. l, 'PX', ttl)
return 1
"#
);

/// Moves a decided action's state if it is one of the states it may move from. KEYS: action.
const UPDATE: &str = script!(
    r#"
local a = KEYS[1]
local now = nxt()
local ttl = nxt()
local new = nxt()
local froms = nxt()
local v = redis.call('GET', a)
local f = v and fields(v)
if (not f) or (not f[10]) or tonumber(f[1]) + tonumber(ttl) <= tonumber(now) then
  return {'missing'}
end
if string.find(froms, ',' .. f[5] .. ',', 1, true) then
  f[5] = new
  f[6] = now
  redis.call('SET', a, table.concat(f, '\n', 1, 10), 'KEEPTTL')
  return {'moved', f[4], f[3], f[1], f[10], new, now}
end
return {'refused', f[4], f[3], f[1], f[10], f[5], f[6]}
"#
);

/// Checks a challenge token against its action and uses it up when it is valid. KEYS: action.
const VALIDATE: &str = script!(
    r#"
local v = redis.call('GET', KEYS[1])
local th = nxt()
local now = nxt()
local ttl = nxt()
local ok = nxt()
local f = v and fields(v)
if (not f) or (not f[10]) or f[7] ~= th or tonumber(f[1]) + tonumber(ttl) <= tonumber(now) then
  return {'unknown'}
end
if tonumber(now) >= tonumber(f[8]) then return {'expired', f[4], f[5]} end
if f[5] ~= ok then return {'not_succeeded', f[4], f[5]} end
if f[9] ~= '' then return {'used', f[4], f[5]} end
f[9] = '1'
redis.call('SET', KEYS[1], table.concat(f, '\n', 1, 10), 'KEEPTTL')
return {'valid', f[4], f[5]}
"#
);

/// Gives up a claim that could not be decided (so a retry decides again). KEYS: action.
const RELEASE: &str = script!(
    r#"
local v = redis.call('GET', KEYS[1])
if v and lease_of(v) == nxt() then redis.call('DEL', KEYS[1]) end
return 1
"#
);

/// Every script, loaded once per store.
pub(crate) struct Scripts {
    pub claim: Script,
    pub commit: Script,
    pub subject: Script,
    pub know: Script,
    pub population: Script,
    pub update: Script,
    pub validate: Script,
    pub release: Script,
}

impl Scripts {
    pub fn all(&self) -> [&Script; 8] {
        [
            &self.claim,
            &self.commit,
            &self.subject,
            &self.know,
            &self.population,
            &self.update,
            &self.validate,
            &self.release,
        ]
    }

    pub fn new() -> Self {
        Scripts {
            claim: Script::new(CLAIM),
            commit: Script::new(COMMIT),
            subject: Script::new(SUBJECT),
            know: Script::new(KNOW),
            population: Script::new(POPULATION),
            update: Script::new(UPDATE),
            validate: Script::new(VALIDATE),
            release: Script::new(RELEASE),
        }
    }
}
