-- record_usage.lua: settle one finished request: swap its reservation for the usage the
-- upstream reported, and add it to the target's running totals.
--
-- The reservation was added by select_lowest_usage.lua at reserved_at_ms as
-- reserved * 2^((reserved_at_ms - epoch) / half_life). If the epoch has moved since, the
-- stored reservation was rescaled with everything else, and the same formula with the
-- current epoch gives exactly its present stored value, so it is removed exactly.
--
-- It rolls the epoch like select_lowest_usage.lua does: round-robin balancers settle here
-- but never select there, and 2^((now - epoch) / half_life) overflows past 1024 half-lives.
--
-- KEYS[1]  usage sorted set (see select_lowest_usage.lua)
-- KEYS[2]  meta hash with epoch_ms
-- KEYS[3]  totals hash: "<target_id>:<field>" -> cumulative counters
-- KEYS[4]  usage event stream (read by the aggregators)
-- ARGV[1]  target_id
-- ARGV[2]  half_life_ms       decay half-life in milliseconds (> 0)
-- ARGV[3]  reserved           counted units reserved at selection (0 for none)
-- ARGV[4]  reserved_at_ms     server time returned by the selection
-- ARGV[5]  actual             counted units the request really used (0 when it failed)
-- ARGV[6]  prompt_tokens      integer
-- ARGV[7]  completion_tokens  integer
-- ARGV[8]  cost               currency units, decimal string
-- ARGV[9]  failed             "1" when the request failed upstream, else "0"
-- ARGV[10] roll_after         rescale when (now - epoch) / half_life exceeds this (half-lives)
-- ARGV[11] event              JSON usage event to append; "" appends nothing
-- ARGV[12] stream_max_len     approximate cap on the stream's length (entries), a safety
--                             net for when no aggregator runs; aggregators trim what
--                             they have acknowledged long before it is reached
--
-- Returns the target's decayed usage after settling, as a string.

local target_id = ARGV[1]
local half_life_ms = tonumber(ARGV[2])
local reserved = tonumber(ARGV[3])
local reserved_at_ms = tonumber(ARGV[4])
local actual = tonumber(ARGV[5])
local prompt_tokens = tonumber(ARGV[6])
local completion_tokens = tonumber(ARGV[7])
local cost = ARGV[8]
local failed = ARGV[9] == "1"
local roll_after = tonumber(ARGV[10])
local event = ARGV[11]
local stream_max_len = ARGV[12]

local time = redis.call("TIME")
local now_ms = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)

local epoch_ms = tonumber(redis.call("HGET", KEYS[2], "epoch_ms"))
-- The half-life travels with the state so `tokenlb stats` can decay without the config.
redis.call("HSET", KEYS[2], "half_life_ms", half_life_ms)
if epoch_ms == nil then
  -- The balancer state was deleted (flush, plugin removed) after the selection: there is
  -- no reservation left to release, only the actual usage to add.
  epoch_ms = now_ms
  reserved = 0
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
  redis.call("HSET", KEYS[2], "epoch_ms", epoch_ms)
end

local delta = actual * 2 ^ ((now_ms - epoch_ms) / half_life_ms)
  - reserved * 2 ^ ((reserved_at_ms - epoch_ms) / half_life_ms)
local score = tonumber(redis.call("ZINCRBY", KEYS[1], delta, target_id))
if score < 0 then
  -- Only floating-point residue of an exact release can land here.
  score = 0
  redis.call("ZADD", KEYS[1], 0, target_id)
end

redis.call("HINCRBY", KEYS[3], target_id .. ":requests", 1)
if failed then
  redis.call("HINCRBY", KEYS[3], target_id .. ":errors", 1)
end
redis.call("HINCRBY", KEYS[3], target_id .. ":prompt_tokens", prompt_tokens)
redis.call("HINCRBY", KEYS[3], target_id .. ":completion_tokens", completion_tokens)
redis.call("HINCRBYFLOAT", KEYS[3], target_id .. ":cost", cost)
if event ~= "" then
  redis.call("XADD", KEYS[4], "MAXLEN", "~", stream_max_len, "*", "e", event)
end
return tostring(score * 2 ^ (-(now_ms - epoch_ms) / half_life_ms))
