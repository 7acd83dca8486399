-- wrk script of bench/gateway.py: POST the same JSON body, each request with a token drawn at random
-- from a file (one per line), sent as "Authorization: Bearer <token>" or as another header's value.
--
--   wrk -t2 -c32 -d15s -s bench/wrk_tokens.lua http://127.0.0.1:PORT -- TOKENS_FILE HEADER BODY PATH
--
-- The requests are formatted once per thread in init(), so request() only picks one. done() prints
-- one JSON line (after wrk's own report) that bench/gateway.py parses.

local counter = 0

function setup(thread)
  counter = counter + 1
  thread:set("thread_number", counter)
end

local requests = {}

function init(args)
  local path, header, body, target = args[1], args[2], args[3], args[4]
  for line in io.lines(path) do
    if #line > 0 then
      local value = line
      if string.lower(header) == "authorization" then
        value = "Bearer " .. line
      end
      local headers = {}
      headers[header] = value
      headers["Content-Type"] = "application/json"
      requests[#requests + 1] = wrk.format("POST", target, headers, body)
    end
  end
  math.randomseed(os.time() * 1000 + (thread_number or 0))
end

function request()
  return requests[math.random(#requests)]
end

function done(summary, latency, _)
  local e = summary.errors
  io.write(string.format(
    '\nBENCH_JSON {"requests": %d, "duration_us": %d, "bytes": %d, "errors": {"connect": %d, "read": %d, '
      .. '"write": %d, "status": %d, "timeout": %d}, "p50_us": %d, "p90_us": %d, "p95_us": %d, "p99_us": %d, '
      .. '"mean_us": %.1f, "max_us": %d}\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(95), latency:percentile(99), latency.mean,
    latency.max))
end
