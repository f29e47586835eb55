-- GET /api/feeds as many users (BENCH_TOKENS: a file of bearer tokens), round robin per thread.
package.path = package.path .. ";" .. (os.getenv("BENCH_DIR") or ".") .. "/?.lua"
local common = require("common")
local tokens = common.read_lines(os.getenv("BENCH_TOKENS"))
local path = os.getenv("BENCH_PATH") or "/api/feeds?limit=50"
local i = 0

function init(args)
  i = math.random(#tokens)
end

function request()
  i = i % #tokens + 1
  return wrk.format("GET", path, { ["Authorization"] = "Bearer " .. tokens[i] })
end

function done(summary, latency, requests)
  common.report(os.getenv("BENCH_NAME") or "feed", summary, latency)
end
