-- select_target.lua: choose a target for one request and reserve it, atomically, for the
-- whole fleet.
--
-- Every algorithm shares the same first step: of the targets the proxy marked eligible
-- (right model, not tried yet), drop those the circuit breaker holds out of rotation
-- (failures recorded by record_usage.lua, or an upstream 429's Retry-After), and those
-- whose budget (tokenlb's limits extension) this request would overrun: a target with
-- tokens_per_minute / requests_per_minute keeps the reservations of the last 60 s in a
-- sorted set; it is skipped when its requests + 1 would exceed requests_per_minute, or its
-- tokens + this request's tokens would exceed tokens_per_minute (a request larger than the
-- whole budget may still run alone in a window holding no tokens). The chosen target's
-- reservation is added in the same call, so the budget holds for the whole fleet;
-- record_usage.lua swaps it for the tokens really used. The algorithm then chooses among
-- what is left:
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
--                 shared by the fleet; ties go to the earlier target. Exploration: a
--                 target that has had neither a sample nor a probe for one half-life (or
--                 ever) is chosen once, by one replica for the whole fleet, so a target
--                 that recovered (or just joined) is measured again instead of starving.
--                 A target without a sample competes only through exploration: while its
--                 first answer is on its way it gets nothing more (a slow target listed
--                 first would otherwise take every request until then). When no target
--                 has a sample yet, the one explored longest ago is explored again, so a
--                 cold fleet spreads its first requests.
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
-- KEYS[8]  budget hash: target id -> tokens in its window
-- KEYS[8 + i]  (only when budgets = "1") the budget window of the i-th target: sorted set
--          "<lease id>|<tokens>" -> reservation time (ms)
-- ARGV[1]  algorithm      "lowest-usage", "round-robin", "least-connections",
--                         "consistent-hashing", "lowest-latency" or "priority"
-- ARGV[2]  half_life_ms   decay half-life of usage and latency, and the exploration
--                         interval of lowest-latency, in milliseconds (> 0)
-- ARGV[3]  roll_after     rescale when (now - epoch) / half_life exceeds this (half-lives)
-- ARGV[4]  count          number of targets that follow
-- ARGV[5]  ranked         "1" when each target carries a tier, else "0" (all tiers 0)
-- ARGV[6]  budgets        "1" when each target carries its budget and KEYS[8 + i] are
--                         passed (some target has limits), else "0"
-- ARGV[7..] count groups, each: target_id, weight (integer > 0), estimate (counted units,
--          >= 0), eligible ("1" may be chosen, "0" only takes part in the slow-start
--          average); then tier (integer >= 0; lower tiers are preferred) when ranked;
--          lease_ms (how long an in-flight lease lives, ms; > 0) for least-connections;
--          tokens (this request's budget reservation, integer >= 0), tokens_per_minute
--          and requests_per_minute (the target's limits, integers; 0: none) when budgets.
--          Only what the call needs travels, so the common case stays 4 fields a target.
--
-- Returns {index, now_ms, score, blocked, retry_at_ms, lease_id}: index is the 1-based
-- position of the chosen target in the ARGV list (0 when none); now_ms the server time of
-- the reservation (pass it back to record_usage.lua); score, as a string (Lua numbers
-- would be truncated), the chosen target's decayed usage per unit of weight before the
-- reservation (lowest-usage), its in-flight count before this request
-- (least-connections) or its average latency (lowest-latency; 0 before its first
-- sample), else "0"; when nothing was chosen although some target was eligible:
-- blocked = "broken" when every one of them is out of rotation, else "tokens" or
-- "requests" (the limit that holds back the one that frees up first), and retry_at_ms
-- the soonest time one of them can take this request; otherwise "" and 0; lease_id the
-- lease taken for an in-flight count or a budget reservation ("" when none).

local algorithm = ARGV[1]
local half_life_ms = tonumber(ARGV[2])
local roll_after = tonumber(ARGV[3])
local count = tonumber(ARGV[4])
local ranked = ARGV[5] == "1"
local budgets = ARGV[6] == "1"
local leased = algorithm == "least-connections"

local ids, weights, estimates, eligible, lease_ms, tiers = {}, {}, {}, {}, {}, {}
local tokens, tokens_per_minute, requests_per_minute = {}, {}, {}
local at = 7
for i = 1, count do
  ids[i] = ARGV[at]
  weights[i] = tonumber(ARGV[at + 1])
  estimates[i] = tonumber(ARGV[at + 2])
  eligible[i] = ARGV[at + 3] == "1"
  at = at + 4
  tiers[i] = 0
  if ranked then
    tiers[i] = tonumber(ARGV[at])
    at = at + 1
  end
  if leased then
    lease_ms[i] = tonumber(ARGV[at])
    at = at + 1
  end
  tokens[i], tokens_per_minute[i], requests_per_minute[i] = 0, 0, 0
  if budgets then
    tokens[i] = tonumber(ARGV[at])
    tokens_per_minute[i] = tonumber(ARGV[at + 1])
    requests_per_minute[i] = tonumber(ARGV[at + 2])
    at = at + 3
  end
end
-- Budgets are per minute: a reservation counts for 60 s from the time it was made.
local WINDOW_MS = 60000

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

-- A target's budget window with the reservations older than WINDOW_MS swept away:
-- returns its requests and tokens.
local function budget_window(i)
  local key = KEYS[8 + i]
  local cutoff = now_ms - WINDOW_MS
  local expired = redis.call("ZRANGEBYSCORE", key, "-inf", cutoff)
  if #expired > 0 then
    local freed = 0
    for _, member in ipairs(expired) do
      freed = freed + tonumber(string.match(member, "|(%d+)$"))
    end
    redis.call("ZREMRANGEBYSCORE", key, "-inf", cutoff)
    redis.call("HINCRBY", KEYS[8], ids[i], -freed)
  end
  local requests = redis.call("ZCARD", key)
  if requests == 0 then
    redis.call("HDEL", KEYS[8], ids[i])
    return 0, 0
  end
  return requests, tonumber(redis.call("HGET", KEYS[8], ids[i])) or 0
end

-- When an over-budget target can take this request: once enough of its oldest
-- reservations have left the window. Returns that time and the limit that held it back.
local function budget_retry_at(i, requests, used)
  local key = KEYS[8 + i]
  local at_ms, reason = now_ms, "tokens"
  local rpm = requests_per_minute[i]
  if rpm > 0 and requests + 1 > rpm then
    local oldest = redis.call("ZRANGE", key, requests - rpm, requests - rpm, "WITHSCORES")
    at_ms, reason = tonumber(oldest[2]) + WINDOW_MS, "requests"
  end
  local tpm = tokens_per_minute[i]
  if tpm > 0 and used + tokens[i] > tpm then
    local members = redis.call("ZRANGE", key, 0, -1, "WITHSCORES")
    local freed = 0
    for m = 1, #members, 2 do
      freed = freed + tonumber(string.match(members[m], "|(%d+)$"))
      if used - freed + tokens[i] <= tpm or freed >= used then
        local tokens_at_ms = tonumber(members[m + 1]) + WINDOW_MS
        if tokens_at_ms >= at_ms then
          at_ms, reason = tokens_at_ms, "tokens"
        end
        break
      end
    end
  end
  return at_ms, reason
end

-- Circuit breaker: an eligible target whose "until" lies ahead is out of rotation.
local fields = {}
for i = 1, count do
  fields[i] = ids[i] .. ":until"
end
local untils = redis.call("HMGET", KEYS[4], unpack(fields))
local available = {}
local any_available = false
local broken_until = {}
local over_budget = {}
local best_tier = nil
for i = 1, count do
  if eligible[i] then
    local until_ms = tonumber(untils[i])
    local fits = true
    if until_ms ~= nil and until_ms > now_ms then
      broken_until[i] = until_ms
      fits = false
    elseif budgets and (tokens_per_minute[i] > 0 or requests_per_minute[i] > 0) then
      local requests, used = budget_window(i)
      local rpm, tpm = requests_per_minute[i], tokens_per_minute[i]
      if (rpm > 0 and requests + 1 > rpm) or (tpm > 0 and used > 0 and used + tokens[i] > tpm) then
        over_budget[i] = {requests, used}
        fits = false
      end
    end
    if fits then
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
local function take_lease()
  if lease_id == "" then
    lease_id = tostring(redis.call("HINCRBY", KEYS[2], "lease_seq", 1))
  end
  return lease_id
end
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
  redis.call("ZADD", KEYS[5], now_ms + lease_ms[best], ids[best] .. "|" .. take_lease())
  redis.call("HINCRBY", KEYS[6], ids[best], 1)
elseif algorithm == "lowest-latency" and any_available then
  local fields = {}
  for i = 1, count do
    fields[#fields + 1] = ids[i] .. ":avg"
    fields[#fields + 1] = ids[i] .. ":at"
    fields[#fields + 1] = ids[i] .. ":probe"
  end
  local stats = redis.call("HMGET", KEYS[7], unpack(fields))
  local averages, probed_ms, explore = {}, {}, false
  for i = 1, count do
    averages[i] = tonumber(stats[3 * i - 2])
    probed_ms[i] = tonumber(stats[3 * i]) or -1
    if available[i] and not explore then
      local seen_ms = math.max(tonumber(stats[3 * i - 1]) or -1, probed_ms[i])
      if seen_ms < 0 or now_ms - seen_ms >= half_life_ms then
        best, explore = i, true
      end
    end
  end
  if not explore then
    for i = 1, count do
      if available[i] and averages[i] ~= nil and (best == 0 or averages[i] < averages[best]) then
        best = i
      end
    end
  end
  if best == 0 then
    -- Nothing measured yet, every target explored: the one explored longest ago, again.
    for i = 1, count do
      if available[i] and (best == 0 or probed_ms[i] < probed_ms[best]) then
        best = i
      end
    end
    explore = true
  end
  if explore then
    redis.call("HSET", KEYS[7], ids[best] .. ":probe", now_ms)
  end
  best_score = averages[best] or 0
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
  -- Why nothing was chosen, and when the first of the held-back targets can take it.
  local blocked, retry_at_ms = "", 0
  local budget_reason, budget_at_ms = "", 0
  for i = 1, count do
    if broken_until[i] ~= nil and (retry_at_ms == 0 or broken_until[i] < retry_at_ms) then
      retry_at_ms = broken_until[i]
      blocked = "broken"
    elseif over_budget[i] ~= nil then
      local at_ms, reason = budget_retry_at(i, over_budget[i][1], over_budget[i][2])
      if budget_at_ms == 0 or at_ms < budget_at_ms then
        budget_at_ms, budget_reason = at_ms, reason
      end
    end
  end
  if budget_reason ~= "" then
    blocked = budget_reason
    if retry_at_ms == 0 or budget_at_ms < retry_at_ms then
      retry_at_ms = budget_at_ms
    end
  end
  return {0, now_ms, "0", blocked, retry_at_ms, ""}
end

if budgets and (tokens_per_minute[best] > 0 or requests_per_minute[best] > 0) then
  local key = KEYS[8 + best]
  redis.call("ZADD", key, now_ms, take_lease() .. "|" .. tokens[best])
  redis.call("HINCRBY", KEYS[8], ids[best], tokens[best])
  redis.call("PEXPIRE", key, 2 * WINDOW_MS)
  redis.call("PEXPIRE", KEYS[8], 2 * WINDOW_MS)
end
return {best, now_ms, tostring(best_score), "", 0, lease_id}
