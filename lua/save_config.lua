-- save_config.lua: store the fleet's config document if nobody stored another version
-- since the writer read it (compare-and-set), and announce the new version.
--
-- Writers replace the whole document; the check, the write and the announcement happen in
-- one script, so two writers racing on different replicas cannot both win, and a replica
-- that hears the announcement always finds the document it announces.
--
-- KEYS[1]  config hash: "version" (integer), "document" (JSON)
-- ARGV[1]  expected_version  the version the writer read ("0": none stored)
-- ARGV[2]  new_version       the version to store (expected_version + 1, or, when a
--                            replica restores the document a restarted Redis lost, the
--                            version it had)
-- ARGV[3]  document          the flat config document, JSON
-- ARGV[4]  channel           pub/sub channel to PUBLISH new_version on
--
-- Returns {1, new_version} when stored, {0, current_version} when another version is there.

local expected_version = tonumber(ARGV[1])
local new_version = tonumber(ARGV[2])
local document = ARGV[3]
local channel = ARGV[4]

local current_version = tonumber(redis.call('HGET', KEYS[1], 'version') or '0')
if current_version ~= expected_version then
  return {0, current_version}
end
redis.call('HSET', KEYS[1], 'version', new_version, 'document', document)
redis.call('PUBLISH', channel, new_version)
return {1, new_version}
