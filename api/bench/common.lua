-- Shared by the wrk scripts: tokens from a file (one per line), a per-thread summary line.
local M = {}

function M.read_lines(path)
  local t = {}
  for line in io.lines(path) do
    if #line > 0 then t[#t + 1] = line end
  end
  assert(#t > 0, "no lines in " .. path)
  return t
end

-- Prints one machine-readable line: requests/s, latency percentiles (ms), errors.
function M.report(name, summary, latency)
  local secs = summary.duration / 1e6
  local e = summary.errors
  local non2xx = e.status
  io.write(string.format(
    "RESULT %s requests=%d rps=%.0f p50=%.2f p95=%.2f p99=%.2f max=%.2f status_errors=%d socket_errors=%d\n",
    name, summary.requests, summary.requests / secs,
    latency:percentile(50) / 1000, latency:percentile(95) / 1000, latency:percentile(99) / 1000,
    latency.max / 1000, non2xx, e.connect + e.read + e.write + e.timeout))
end

return M
