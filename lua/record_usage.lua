-- record_usage.lua: settle one finished request: swap its reservation for the usage the
-- upstream reported (in the decayed usage and in its budget window), add it to the
-- target's running totals, return its in-flight lease, record its latency, and feed the
-- circuit breaker.
--
-- The reservation was added by select_target.lua at reserved_at_ms as
-- reserved * 2^((reserved_at_ms - epoch) / half_life). If the epoch has moved since, the
-- stored reservation was rescaled with everything else, and the same formula with the
-- current epoch gives exactly its present stored value, so it is removed exactly.
--
-- It rolls the epoch like select_target.lua does: round-robin balancers settle here but
-- never roll it there, and 2^((now - epoch) / half_life) overflows past 1024 half-lives.
--
-- Circuit breaker (Kong >= 3.13, nginx's max_fails / fail_timeout): a failure that counts
-- opens a window of fail_timeout_ms at its time if none is open; when max_fails failures
-- fall in the window the target is out of rotation for fail_timeout_ms, for every replica
-- (select_target.lua skips it), and the count starts again. Failures are counted in
-- total, not consecutively: a success in between does not reset them. Independently, an
-- upstream 429 with Retry-After takes the target out until then, whatever max_fails says.
-- A target already out stays out until the later of the two times.
--
-- KEYS[1]  usage sorted set (see select_target.lua)
-- KEYS[2]  meta hash with epoch_ms
-- KEYS[3]  totals hash: "<target_id>:<field>" -> cumulative counters
-- KEYS[4]  usage event stream (read by the aggregators)
-- KEYS[5]  breaker hash: "<target_id>:until" (ms), "<target_id>:fails" (count),
--          "<target_id>:since" (ms, start of the current failure window)
-- KEYS[6]  in-flight leases sorted set (see select_target.lua)
-- KEYS[7]  in-flight hash: target id -> number of unexpired leases
-- KEYS[8]  latency hash (see select_target.lua)
-- KEYS[9]  budget hash: target id -> tokens in its window (see select_target.lua)
-- KEYS[10] this target's budget window: "<lease id>|<tokens>" -> reservation time (ms)
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
-- ARGV[13] breaker_failure    "1" when this failure counts towards max_fails, else "0"
-- ARGV[14] max_fails          failures within fail_timeout_ms that open the breaker (0: off)
-- ARGV[15] fail_timeout_ms    the failure window and the time out of rotation (ms, > 0)
-- ARGV[16] retry_after_ms     an upstream 429's Retry-After, in ms from now (0: none)
-- ARGV[17] lease_id           the in-flight lease select_target.lua took ("": none); it is
--                             returned here, unless it expired and was swept already
-- ARGV[18] latency            this request's latency sample for lowest-latency (ms, or ms
--                             per output token), folded into the target's average decayed
--                             with half_life_ms; negative: no sample
-- ARGV[19] budget_reserved    tokens the selection reserved in the budget window under
--                             lease_id (integer); negative: no budget reservation
-- ARGV[20] budget_used        tokens the request really used (integer; 0 when it failed:
--                             it still counts as a request). The reservation keeps its time;
--                             if it has left the window already, nothing changes.
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
local breaker_failure = ARGV[13] == "1"
local max_fails = tonumber(ARGV[14])
local fail_timeout_ms = tonumber(ARGV[15])
local retry_after_ms = tonumber(ARGV[16])
local lease_id = ARGV[17]
local latency = tonumber(ARGV[18])
local budget_reserved = tonumber(ARGV[19])
local budget_used = tonumber(ARGV[20])

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

if lease_id ~= "" and redis.call("ZREM", KEYS[6], target_id .. "|" .. lease_id) == 1 then
  if redis.call("HINCRBY", KEYS[7], target_id, -1) <= 0 then
    redis.call("HDEL", KEYS[7], target_id)
  end
end

if latency >= 0 then
  -- A time-decayed mean: every sample weighs 2^(-age / half_life). Folding one more in only
  -- needs the mean, the decayed weight of the samples so far, and the time of the last.
  local stats = redis.call(
    "HMGET", KEYS[8], target_id .. ":avg", target_id .. ":n", target_id .. ":at"
  )
  local average = tonumber(stats[1]) or 0
  local last_ms = tonumber(stats[3]) or now_ms
  local weight = (tonumber(stats[2]) or 0) * 2 ^ (-(now_ms - last_ms) / half_life_ms) + 1
  average = average + (latency - average) / weight
  redis.call(
    "HSET", KEYS[8], target_id .. ":avg", tostring(average), target_id .. ":n", tostring(weight),
    target_id .. ":at", now_ms
  )
end

if budget_reserved >= 0 and lease_id ~= "" then
  local reserved_member = lease_id .. "|" .. budget_reserved
  local at_ms = redis.call("ZSCORE", KEYS[10], reserved_member)
  if at_ms then
    redis.call("ZREM", KEYS[10], reserved_member)
    redis.call("ZADD", KEYS[10], at_ms, lease_id .. "|" .. budget_used)
    redis.call("HINCRBY", KEYS[9], target_id, budget_used - budget_reserved)
  end
end

local out_until_ms = 0
if retry_after_ms > 0 then
  out_until_ms = now_ms + retry_after_ms
end
if breaker_failure and max_fails > 0 then
  local state = redis.call("HMGET", KEYS[5], target_id .. ":fails", target_id .. ":since")
  local fails, since_ms = tonumber(state[1]) or 0, tonumber(state[2])
  if since_ms == nil or now_ms - since_ms >= fail_timeout_ms then
    fails, since_ms = 0, now_ms
  end
  fails = fails + 1
  if fails >= max_fails then
    out_until_ms = math.max(out_until_ms, now_ms + fail_timeout_ms)
    redis.call("HDEL", KEYS[5], target_id .. ":fails", target_id .. ":since")
  else
    redis.call("HSET", KEYS[5], target_id .. ":fails", fails, target_id .. ":since", since_ms)
  end
end
if out_until_ms > 0 then
  local current = tonumber(redis.call("HGET", KEYS[5], target_id .. ":until")) or 0
  if out_until_ms > current then
    redis.call("HSET", KEYS[5], target_id .. ":until", out_until_ms)
  end
end
if breaker_failure or out_until_ms > 0 then
  -- The state only matters until its window or its "until" has passed.
  local keep_ms = math.max(fail_timeout_ms, out_until_ms - now_ms)
  if redis.call("PTTL", KEYS[5]) < keep_ms then
    redis.call("PEXPIRE", KEYS[5], keep_ms)
  end
end
return tostring(score * 2 ^ (-(now_ms - epoch_ms) / half_life_ms))
