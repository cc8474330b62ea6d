-- wrk script of bench/run_throughput.py: POST JSON run requests, each with its user's bearer token.
-- Usage: wrk -t2 -c32 -d10s -s bench/run_wrk.lua URL -- REQUESTS_FILE
-- REQUESTS_FILE holds one request a line, "<token>\t<JSON body>"; every thread cycles through all of them
-- from its own offset, so the connections' requests spread over every user. done() prints one JSON line.

local threads = {}

function setup(thread)
  thread:set("offset", #threads)
  table.insert(threads, thread)
end

local requests = {}
local next_index = 1

function init(args)
  local path = wrk.path
  for line in io.lines(args[1]) do
    local token, body = line:match("^([^\t]+)\t(.*)$")
    if token then
      local headers = {["Authorization"] = "Bearer " .. token, ["Content-Type"] = "application/json"}
      table.insert(requests, wrk.format("POST", path, headers, body))
    end
  end
  if #requests == 0 then
    error("no requests in " .. args[1])
  end
  next_index = (offset * 7) % #requests + 1
end

function request()
  local r = requests[next_index]
  next_index = next_index % #requests + 1
  return r
end

function done(summary, latency, requests_)
  local e = summary.errors
  io.write(string.format(
    '{"requests": %d, "duration_us": %d, "non_2xx": %d, "connect": %d, "read": %d, "write": %d, "timeout": %d, ' ..
    '"p50_us": %d, "p90_us": %d, "p99_us": %d, "max_us": %d}\n',
    summary.requests, summary.duration, e.status, e.connect, e.read, e.write, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max))
end
