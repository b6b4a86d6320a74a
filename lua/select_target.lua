-- select_target.lua: choose a target for one request and reserve it, atomically, for the
-- whole fleet.
--
-- Every algorithm shares the same first step: of the targets the proxy marked eligible
-- (right model, not tried yet), drop those the circuit breaker holds out of rotation
-- (failures recorded by record_usage.lua, or an upstream 429's Retry-After). The
-- algorithm then chooses among what is left:
--   lowest-usage  the lowest forward-decayed usage per unit of weight; the request's
--                 estimate is reserved on the choice. Usage is stored as
--                 amount * 2^((t - epoch) / half_life); every member shares the epoch, so
--                 comparing stored scores compares decayed usage at any instant. When the
--                 factor passes 2^roll_after the epoch moves to now and every member is
--                 rescaled. A target the set has never seen starts at the average usage
--                 per weight of the others (slow start). Ties go to the earlier target.
--   round-robin   nginx's smooth weighted round-robin with the current weights kept here,
--                 so every replica advances one fleet-wide sequence.
--   priority      the round-robin above within the best tier: the proxy puts each group of
--                 equal weight in a tier, the heaviest first (Kong's priority groups).
--   least-connections  the fewest in-flight requests per unit of weight across the fleet,
--                 scored (in_flight + 1) / weight as Kong does (so an idle fleet prefers
--                 the heaviest target); ties rotate by the smooth round-robin above. The
--                 choice takes an in-flight lease that record_usage.lua returns when the
--                 request ends. A lease also expires by itself lease_ms after it was taken:
--                 the requests of a replica that crashed stop counting then, and nothing
--                 leaks. Expired leases are swept here, before counting.
--   consistent-hashing  the proxy ranks the targets in the order the request's hash key
--                 tries them (tier 0, 1, 2, ...; see hashing.py); the first one available
--                 wins. No state: every replica computes the same ranking.
--   lowest-latency  the lowest time-decayed average latency (record_usage.lua keeps it:
--                 time per output token or end-to-end, whichever the proxy measures),
--                 shared by the fleet; a target with no sample yet counts at the average
--                 of those that have one; ties go to the earlier target. Exploration: a
--                 target that has had neither a sample nor a probe for one half-life (or
--                 ever) is chosen once, by one replica for the whole fleet, so a target
--                 that recovered (or just joined) is measured again instead of starving.
--
-- Tiers: only the available targets of the lowest tier present compete (all tiers are 0
-- unless the algorithm ranks targets).
--
-- KEYS[1]  usage sorted set: member = target id, score = forward-decayed usage (raw, not
--          divided by weight, so a weight change applies at once)
-- KEYS[2]  meta hash: field epoch_ms = decay epoch (Redis server time, milliseconds)
-- KEYS[3]  round-robin hash: target id -> current weight (integer)
-- KEYS[4]  breaker hash: "<target id>:until" -> out of rotation until (ms), written by
--          record_usage.lua
-- KEYS[5]  in-flight leases sorted set: member "<target id>|<lease id>", score = the
--          lease's expiry (ms)
-- KEYS[6]  in-flight hash: target id -> number of unexpired leases
-- KEYS[7]  latency hash: "<target id>:avg" (decayed average, ms or ms per token),
--          "<target id>:n" (decayed sample weight), "<target id>:at" (last sample, ms),
--          "<target id>:probe" (last exploration, ms)
-- ARGV[1]  algorithm      "lowest-usage", "round-robin", "least-connections",
--                         "consistent-hashing", "lowest-latency" or "priority"
-- ARGV[2]  half_life_ms   decay half-life of usage and latency, and the exploration
--                         interval of lowest-latency, in milliseconds (> 0)
-- ARGV[3]  roll_after     rescale when (now - epoch) / half_life exceeds this (half-lives)
-- ARGV[4]  count          number of targets that follow
-- ARGV[5..] count groups of 6: target_id, weight (integer > 0), estimate (counted units,
--          >= 0), eligible ("1" may be chosen, "0" only takes part in the slow-start
--          average), lease_ms (how long an in-flight lease on it lives, ms; > 0), tier
--          (integer >= 0; lower tiers are preferred)
--
-- Returns {index, now_ms, score, blocked, retry_at_ms, lease_id}: index is the 1-based
-- position of the chosen target in the ARGV list (0 when none); now_ms the server time of
-- the reservation (pass it back to record_usage.lua); score, as a string (Lua numbers
-- would be truncated), the chosen target's decayed usage per unit of weight before the
-- reservation (lowest-usage), its in-flight count before this request
-- (least-connections) or its average latency (lowest-latency), else "0"; when nothing
-- was chosen although some target was
-- eligible, blocked = "broken" and retry_at_ms the soonest time one of them returns to
-- rotation, else "" and 0; lease_id the in-flight lease taken ("" when none).

local algorithm = ARGV[1]
local half_life_ms = tonumber(ARGV[2])
local roll_after = tonumber(ARGV[3])
local count = tonumber(ARGV[4])

local GROUP = 6
local ids, weights, estimates, eligible, lease_ms, tiers = {}, {}, {}, {}, {}, {}
for i = 1, count do
  local base = 4 + (i - 1) * GROUP
  ids[i] = ARGV[base + 1]
  weights[i] = tonumber(ARGV[base + 2])
  estimates[i] = tonumber(ARGV[base + 3])
  eligible[i] = ARGV[base + 4] == "1"
  lease_ms[i] = tonumber(ARGV[base + 5])
  tiers[i] = tonumber(ARGV[base + 6])
end

local time = redis.call("TIME")
local now_ms = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)

-- The decay epoch (lowest-usage only): created on first use, rolled when it grows old.
local exponent = 0
if algorithm == "lowest-usage" then
  local epoch_ms = tonumber(redis.call("HGET", KEYS[2], "epoch_ms"))
  if epoch_ms == nil then
    epoch_ms = now_ms
    redis.call("HSET", KEYS[2], "epoch_ms", epoch_ms)
  end
  exponent = (now_ms - epoch_ms) / half_life_ms
  if exponent > roll_after then
    local shrink = 2 ^ (-exponent)
    local members = redis.call("ZRANGE", KEYS[1], 0, -1, "WITHSCORES")
    for i = 1, #members, 2 do
      redis.call("ZADD", KEYS[1], tonumber(members[i + 1]) * shrink, members[i])
    end
    exponent = 0
    redis.call("HSET", KEYS[2], "epoch_ms", now_ms)
  end
end

if count == 0 then
  return {0, now_ms, "0", "", 0, ""}
end

-- Circuit breaker: an eligible target whose "until" lies ahead is out of rotation.
local fields = {}
for i = 1, count do
  fields[i] = ids[i] .. ":until"
end
local untils = redis.call("HMGET", KEYS[4], unpack(fields))
local available = {}
local any_available = false
local blocked, retry_at_ms = "", 0
local best_tier = nil
for i = 1, count do
  if eligible[i] then
    local until_ms = tonumber(untils[i])
    if until_ms ~= nil and until_ms > now_ms then
      if retry_at_ms == 0 or until_ms < retry_at_ms then
        blocked, retry_at_ms = "broken", until_ms
      end
    else
      available[i] = true
      any_available = true
      if best_tier == nil or tiers[i] < best_tier then
        best_tier = tiers[i]
      end
    end
  end
end
for i = 1, count do
  if available[i] and tiers[i] ~= best_tier then
    available[i] = nil
  end
end

-- Smooth weighted round-robin over the targets marked in `among`: add each one's weight to
-- its current weight, pick the largest, subtract their total from the pick.
local function round_robin(among)
  local pick, pick_current, total = 0, 0, 0
  for i = 1, count do
    if among[i] then
      total = total + weights[i]
      local current = redis.call("HINCRBY", KEYS[3], ids[i], weights[i])
      if pick == 0 or current > pick_current then
        pick, pick_current = i, current
      end
    end
  end
  if pick > 0 then
    redis.call("HINCRBY", KEYS[3], ids[pick], -total)
  end
  return pick
end

local best, best_score = 0, 0
local lease_id = ""
if algorithm == "lowest-usage" then
  -- Slow start: a target the set has never seen starts at the average weighted usage of
  -- the targets it has, so a newly added target is not flooded with every request.
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
  for i = 1, count do
    if available[i] then
      local score = scores[i] / weights[i]
      if best == 0 or score < best_score then
        best, best_score = i, score
      end
    end
  end
  if best > 0 and estimates[best] > 0 then
    redis.call("ZINCRBY", KEYS[1], estimates[best] * 2 ^ exponent, ids[best])
  end
  best_score = best_score * 2 ^ (-exponent)
elseif algorithm == "least-connections" and any_available then
  -- Sweep the leases that expired (their replica died or never settled).
  local expired = redis.call("ZRANGEBYSCORE", KEYS[5], "-inf", now_ms)
  if #expired > 0 then
    for _, member in ipairs(expired) do
      local target_id = string.match(member, "^(.*)|[^|]*$")
      if redis.call("HINCRBY", KEYS[6], target_id, -1) <= 0 then
        redis.call("HDEL", KEYS[6], target_id)
      end
    end
    redis.call("ZREMRANGEBYSCORE", KEYS[5], "-inf", now_ms)
  end
  local in_flight = redis.call("HMGET", KEYS[6], unpack(ids))
  local lowest = nil
  for i = 1, count do
    in_flight[i] = tonumber(in_flight[i]) or 0
    if available[i] then
      local score = (in_flight[i] + 1) / weights[i]
      if lowest == nil or score < lowest then
        lowest = score
      end
    end
  end
  local tied = {}
  for i = 1, count do
    tied[i] = available[i] and (in_flight[i] + 1) / weights[i] == lowest
  end
  best = round_robin(tied)
  best_score = in_flight[best]
  lease_id = tostring(redis.call("HINCRBY", KEYS[2], "lease_seq", 1))
  redis.call("ZADD", KEYS[5], now_ms + lease_ms[best], ids[best] .. "|" .. lease_id)
  redis.call("HINCRBY", KEYS[6], ids[best], 1)
elseif algorithm == "lowest-latency" and any_available then
  local fields = {}
  for i = 1, count do
    fields[#fields + 1] = ids[i] .. ":avg"
    fields[#fields + 1] = ids[i] .. ":at"
    fields[#fields + 1] = ids[i] .. ":probe"
  end
  local stats = redis.call("HMGET", KEYS[7], unpack(fields))
  local averages, known_sum, known_count = {}, 0, 0
  for i = 1, count do
    averages[i] = tonumber(stats[3 * i - 2])
    if averages[i] ~= nil then
      known_sum = known_sum + averages[i]
      known_count = known_count + 1
    end
  end
  local fleet_average = 0
  if known_count > 0 then
    fleet_average = known_sum / known_count
  end
  for i = 1, count do
    if available[i] then
      local seen_ms = math.max(tonumber(stats[3 * i - 1]) or -1, tonumber(stats[3 * i]) or -1)
      if seen_ms < 0 or now_ms - seen_ms >= half_life_ms then
        best = i
        redis.call("HSET", KEYS[7], ids[i] .. ":probe", now_ms)
        break
      end
    end
  end
  if best == 0 then
    for i = 1, count do
      if available[i] then
        local score = averages[i] or fleet_average
        if best == 0 or score < best_score then
          best, best_score = i, score
        end
      end
    end
  else
    best_score = averages[best] or fleet_average
  end
elseif algorithm == "consistent-hashing" and any_available then
  for i = 1, count do
    if available[i] then
      best = i
      break
    end
  end
elseif any_available then
  best = round_robin(available)
end

if best == 0 then
  return {0, now_ms, "0", blocked, retry_at_ms, ""}
end
return {best, now_ms, tostring(best_score), "", 0, lease_id}
