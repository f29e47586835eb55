-- POST /api/track: many users, random posts (BENCH_POSTS: a file of post ids), a unique eventId
-- per request; counts the 201 answers so the caller can compare them with the stored rows.
package.path = package.path .. ";" .. (os.getenv("BENCH_DIR") or ".") .. "/?.lua"
local common = require("common")
local tokens = common.read_lines(os.getenv("BENCH_TOKENS"))
local posts = common.read_lines(os.getenv("BENCH_POSTS"))
local types = { "view", "view", "view", "click", "like", "share" }
local threads = {}
-- `created` and `id` are globals: wrk reads and writes them per thread (thread:get / thread:set).
local n = 0
created, id = 0, 0
local run = os.getenv("BENCH_RUN") or tostring(os.time())

function setup(thread)
  thread:set("id", #threads + 1)
  threads[#threads + 1] = thread
end

function request()
  n = n + 1
  local body = string.format(
    '{"postId":"%s","interactionType":"%s","eventId":"bench-%s-%d-%d"}',
    posts[math.random(#posts)], types[n % #types + 1], run, id, n)
  return wrk.format("POST", "/api/track", {
    ["Authorization"] = "Bearer " .. tokens[n % #tokens + 1],
    ["Content-Type"] = "application/json",
  }, body)
end

function response(status, headers, body)
  if status == 201 then created = created + 1 end
end

function done(summary, latency, requests)
  local total = 0
  for _, t in ipairs(threads) do total = total + t:get("created") end
  common.report("track", summary, latency)
  io.write(string.format("CREATED %d\n", total))
end
