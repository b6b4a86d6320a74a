-- select_lowest_usage.lua: pick the eligible target with the lowest weighted decayed usage
-- and reserve the request's estimated usage on it, atomically, for the whole fleet.
--
-- Usage is stored with forward decay: an amount added at time t is stored as
-- amount * 2^((t - epoch) / half_life). Every member shares the epoch, so comparing stored
-- scores compares decayed usage at any instant without touching the other members. When
-- the scale factor grows past 2^roll_after the epoch is moved to now and every member is
-- rescaled, which keeps the numbers bounded even when no aggregator runs.
--
-- KEYS[1]  usage sorted set: member = target id, score = forward-decayed usage (raw, not
--          divided by weight, so a weight change applies at once)
-- KEYS[2]  meta hash: field epoch_ms = decay epoch (Redis server time, milliseconds)
-- ARGV[1]  half_life_ms   decay half-life in milliseconds (> 0)
-- ARGV[2]  roll_after     rescale when (now - epoch) / half_life exceeds this (half-lives)
-- ARGV[3]  count          number of targets that follow
-- ARGV[4..] count groups of 4: target_id, weight (> 0), estimate (counted units, >= 0),
--          eligible ("1" may be chosen, "0" only takes part in the slow-start average)
--
-- Returns {index, now_ms, score}: index is the 1-based position of the chosen target in
-- the ARGV list (0 when no target is eligible), now_ms the server time of the reservation
-- (to be passed back to record_usage.lua), score the chosen target's decayed usage per
-- unit of weight before the reservation, as a string (Lua numbers would be truncated).

local half_life_ms = tonumber(ARGV[1])
local roll_after = tonumber(ARGV[2])
local count = tonumber(ARGV[3])

local ids, weights, estimates, eligible = {}, {}, {}, {}
for i = 1, count do
  local base = 3 + (i - 1) * 4
  ids[i] = ARGV[base + 1]
  weights[i] = tonumber(ARGV[base + 2])
  estimates[i] = tonumber(ARGV[base + 3])
  eligible[i] = ARGV[base + 4] == "1"
end

local time = redis.call("TIME")
local now_ms = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)

local epoch_ms = tonumber(redis.call("HGET", KEYS[2], "epoch_ms"))
if epoch_ms == nil then
  epoch_ms = now_ms
  redis.call("HSET", KEYS[2], "epoch_ms", epoch_ms)
end

local exponent = (now_ms - epoch_ms) / half_life_ms
if exponent > roll_after then
  local shrink = 2 ^ (-exponent)
  local members = redis.call("ZRANGE", KEYS[1], 0, -1, "WITHSCORES")
  for i = 1, #members, 2 do
    redis.call("ZADD", KEYS[1], tonumber(members[i + 1]) * shrink, members[i])
  end
  epoch_ms = now_ms
  exponent = 0
  redis.call("HSET", KEYS[2], "epoch_ms", epoch_ms)
end

if count == 0 then
  return {0, now_ms, "0"}
end

-- Slow start: a target the set has never seen starts at the average weighted usage of the
-- targets it has, so a newly added target is not flooded with every request.
local scores = redis.call("ZMSCORE", KEYS[1], unpack(ids))
local known_sum, known_count = 0, 0
for i = 1, count do
  if scores[i] then
    known_sum = known_sum + tonumber(scores[i]) / weights[i]
    known_count = known_count + 1
  end
end
local average = 0
if known_count > 0 then
  average = known_sum / known_count
end
for i = 1, count do
  if scores[i] then
    scores[i] = tonumber(scores[i])
  else
    scores[i] = average * weights[i]
    redis.call("ZADD", KEYS[1], scores[i], ids[i])
  end
end

-- Lowest usage per unit of weight wins; ties go to the earlier target, as in Kong. The
-- reservation below makes the next caller, on any replica, see this choice at once.
local best, best_score = 0, 0
for i = 1, count do
  if eligible[i] then
    local score = scores[i] / weights[i]
    if best == 0 or score < best_score then
      best, best_score = i, score
    end
  end
end
if best == 0 then
  return {0, now_ms, "0"}
end

if estimates[best] > 0 then
  redis.call("ZINCRBY", KEYS[1], estimates[best] * 2 ^ exponent, ids[best])
end
return {best, now_ms, tostring(best_score * 2 ^ (-exponent))}
