-- apply_events.lua: add a batch of usage events to the per-minute rollups and
-- acknowledge them, atomically, so each event is counted exactly once.
--
-- An event counts only if this call's XACK acknowledged it (XACK answers 1). An event
-- already acknowledged (by an aggregator that claimed it from a dead one, or by this
-- batch's earlier call) answers 0 and is skipped. Because the rollup writes and the
-- acknowledgement happen in one script, a crash either did both or neither.
--
-- KEYS[1]     the balancer's usage event stream
-- KEYS[2..]   per-minute rollup hashes ("<target_id>:<field>" -> counters)
-- ARGV[1]     group           consumer group name
-- ARGV[2]     retention_s     TTL of the rollup hashes, seconds
-- ARGV[3]     count           number of events that follow
-- ARGV[4..]   count groups of 8: entry_id, rollup key index (2-based into KEYS),
--             target_id, failed ("1"/"0"), prompt_tokens, completion_tokens,
--             cost (decimal string), latency bucket field suffix (e.g. "lat:250")
--
-- Returns the entry ids that were applied by this call.

local group = ARGV[1]
local retention_s = tonumber(ARGV[2])
local count = tonumber(ARGV[3])

local applied = {}
local touched = {}
for i = 1, count do
  local base = 3 + (i - 1) * 8
  local entry_id = ARGV[base + 1]
  local rollup = KEYS[tonumber(ARGV[base + 2])]
  local target_id = ARGV[base + 3]
  local failed = ARGV[base + 4] == "1"
  local prompt_tokens = tonumber(ARGV[base + 5])
  local completion_tokens = tonumber(ARGV[base + 6])
  local cost = ARGV[base + 7]
  local latency_field = ARGV[base + 8]
  if redis.call("XACK", KEYS[1], group, entry_id) == 1 then
    redis.call("HINCRBY", rollup, target_id .. ":requests", 1)
    if failed then
      redis.call("HINCRBY", rollup, target_id .. ":errors", 1)
    end
    redis.call("HINCRBY", rollup, target_id .. ":prompt_tokens", prompt_tokens)
    redis.call("HINCRBY", rollup, target_id .. ":completion_tokens", completion_tokens)
    redis.call("HINCRBYFLOAT", rollup, target_id .. ":cost", cost)
    redis.call("HINCRBY", rollup, target_id .. ":" .. latency_field, 1)
    touched[rollup] = true
    applied[#applied + 1] = entry_id
  end
end
for rollup in pairs(touched) do
  redis.call("EXPIRE", rollup, retention_s)
end
return applied
