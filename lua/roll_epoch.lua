-- roll_epoch.lua: move a balancer's decay epoch to now and rescale its usage to match.
--
-- Forward decay stores usage as amount * 2^((t - epoch) / half_life); the stored numbers
-- grow as time passes. Rolling multiplies every member by 2^(-(now - epoch) / half_life)
-- and sets epoch = now, which changes no decayed value and no ordering, only the scale.
-- The aggregators call it periodically; select and record roll lazily on their own, so
-- the balancer is correct whether zero, one or many aggregators run. Concurrent calls
-- are safe: each is atomic and computes from the epoch it finds.
--
-- KEYS[1]  usage sorted set
-- KEYS[2]  meta hash: epoch_ms, half_life_ms (written by record_usage.lua)
-- ARGV[1]  min_half_lives  roll only when (now - epoch) / half_life is at least this
--
-- Returns the number of half-lives rolled away, as a string ("0" when nothing was done,
-- including for a balancer that has not settled a request yet).

local min_half_lives = tonumber(ARGV[1])

local meta = redis.call("HMGET", KEYS[2], "epoch_ms", "half_life_ms")
local epoch_ms = tonumber(meta[1])
local half_life_ms = tonumber(meta[2])
if epoch_ms == nil or half_life_ms == nil then
  return "0"
end

local time = redis.call("TIME")
local now_ms = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
local exponent = (now_ms - epoch_ms) / half_life_ms
if exponent < min_half_lives then
  return "0"
end

local shrink = 2 ^ (-exponent)
local members = redis.call("ZRANGE", KEYS[1], 0, -1, "WITHSCORES")
for i = 1, #members, 2 do
  redis.call("ZADD", KEYS[1], tonumber(members[i + 1]) * shrink, members[i])
end
redis.call("HSET", KEYS[2], "epoch_ms", now_ms)
return tostring(exponent)
