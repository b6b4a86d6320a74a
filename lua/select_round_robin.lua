-- select_round_robin.lua: one fleet-wide smooth weighted round-robin sequence.
--
-- nginx's smooth weighted round-robin, with its per-target "current weight" kept in Redis
-- so every replica advances the same sequence: each call adds every eligible target's
-- weight to its current weight, picks the largest, and subtracts the eligible total from
-- the pick. Over any run of calls each target gets its weight's share, interleaved.
--
-- KEYS[1]  current-weight hash: target id -> integer
-- ARGV[1]  count          number of targets that follow
-- ARGV[2..] count groups of 3: target_id, weight (integer > 0), eligible ("1" or "0")
--
-- Returns {index, now_ms, "0"}: the 1-based position of the chosen target (0 when none is
-- eligible) and the server time, shaped like select_lowest_usage.lua's reply.

local count = tonumber(ARGV[1])

local time = redis.call("TIME")
local now_ms = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)

local best, best_current, total = 0, 0, 0
for i = 1, count do
  local base = 1 + (i - 1) * 3
  local target_id = ARGV[base + 1]
  local weight = tonumber(ARGV[base + 2])
  if ARGV[base + 3] == "1" then
    total = total + weight
    local current = redis.call("HINCRBY", KEYS[1], target_id, weight)
    if best == 0 or current > best_current then
      best, best_current = i, current
    end
  end
end
if best == 0 then
  return {0, now_ms, "0"}
end
redis.call("HINCRBY", KEYS[1], ARGV[1 + (best - 1) * 3 + 1], -total)
return {best, now_ms, "0"}
